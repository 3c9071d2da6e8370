"""Lambda schedules and trajectory files (safetensors + JSON header), including damaged files."""
import json

import numpy as np
import pytest
import torch

import ltray
from ltray.errors import LtrayError
from ltray.core.trajectory import Layout, Trajectory, lambda_schedule, load_trajectory, save_trajectory


def test_uniform_schedule():
    assert lambda_schedule(4, "uniform").tolist() == [0, 0.25, 0.5, 0.75, 1]


@pytest.mark.parametrize("T", [1, 2, 5, 30])
def test_cosine_schedule_steps_follow_one_plus_cosine(T):
    lam = lambda_schedule(T, "cosine")
    assert lam[0] == 0 and lam[-1] == 1.0 and np.all(np.diff(lam) > 0)
    steps = np.diff(lam)
    alpha = 1 + np.cos(np.pi * np.arange(T) / T)
    assert np.allclose(steps / steps[0], alpha / alpha[0])


def test_schedule_errors():
    with pytest.raises(LtrayError, match="T must be >= 1"):
        lambda_schedule(0)
    with pytest.raises(LtrayError, match="unknown lambda schedule"):
        lambda_schedule(3, "linear")


def _trajectory(epochs=3):
    model = ltray.build_model("mlp", image_size=4, width=8, num_classes=3)
    state = model.state_dict()
    layout = Layout.of(state)
    gen = torch.Generator().manual_seed(0)
    flat = np.stack([layout.flatten(state) + i * torch.randn(layout.size, generator=gen).numpy()
                     for i in range(epochs + 1)])
    return Trajectory(layout, flat.astype(np.float32), {"model": "mlp", "width": 8, "seed": 4})


def test_linear_and_actual_sequences():
    traj = _trajectory(4)
    seq = traj.linear(2, "uniform")
    mid = seq[1]
    first, last = traj.state(0), traj.state(-1)
    assert all(torch.allclose(mid[k], (first[k] + last[k]) / 2, atol=1e-6) for k in mid)
    assert all(torch.equal(seq[2][k], last[k]) for k in mid)
    actual = traj.actual(2)
    assert all(torch.equal(actual[1][k], traj.state(2)[k]) for k in mid)
    with pytest.raises(LtrayError, match="supports 1 <= T <= 4"):
        traj.actual(5)


def test_save_load_roundtrip_with_header(tmp_path):
    traj = _trajectory()
    path = save_trajectory(traj, tmp_path / "t.safetensors")
    back = load_trajectory(path)
    assert np.array_equal(back.checkpoints, traj.checkpoints) and back.layout == traj.layout
    assert back.meta == traj.meta
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["ltray"])
    assert header["model"] == "mlp" and header["layout"]["names"][0] == "fc1.weight"
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_truncated_corrupted_and_nan_files_are_one_line_errors(tmp_path):
    path = save_trajectory(_trajectory(), tmp_path / "t.safetensors")
    data = path.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "corrupted": b"\x00garbage" + data[8:], "empty": b""}
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(LtrayError) as err:
            load_trajectory(bad)
        assert "corrupted" in str(err.value) and "\n" not in str(err.value)
    nan = _trajectory()
    nan.checkpoints[2, 5] = np.nan
    with pytest.raises(LtrayError, match="NaN or Inf values \\(checkpoint 2\\)"):
        load_trajectory(save_trajectory(nan, tmp_path / "nan.safetensors"))
    with pytest.raises(LtrayError, match="does not exist"):
        load_trajectory(tmp_path / "missing.safetensors")


def test_a_lazy_trajectory_reads_only_the_checkpoints_a_transfer_uses(tmp_path):
    from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
    from ltray.runs import needed_epochs, train_source, transfer_pair

    data = DataConfig("digits").load()
    model_cfg, train_cfg = ModelConfig("mlp", 16), TrainConfig(epochs=6, lr=0.1)
    save_trajectory(train_source(data, DataConfig("digits"), model_cfg, train_cfg, 0, progress=False),
                    tmp_path / "t.safetensors")
    for kind, reads in (("linear", 2), ("actual", 4)):
        lazy = load_trajectory(tmp_path / "t.safetensors", lazy=True)
        cfg = TransferConfig(T=3, trajectory=kind, batch_size=32)
        out = transfer_pair(data, model_cfg, train_cfg, cfg, ("fgmt",), lazy, seed_target=1000, seed=1)
        assert lazy.checkpoints.reads == reads == len(needed_epochs(cfg, 6))   # linear: 0 and 6; actual: 0, 2, 4, 6
        assert len(out.results["fgmt"].val_acc) == 4
    whole = load_trajectory(tmp_path / "t.safetensors")
    shipped = whole.select([0, 6])                                        # what a task is given
    assert shipped.epochs == [0, 6] and shipped.checkpoints.shape == (2, whole.checkpoints.shape[1])
    assert torch.equal(shipped.at_epoch(6)["fc1.weight"], whole.state(6)["fc1.weight"])
    with pytest.raises(LtrayError, match="holds the checkpoints of epochs \\[0, 6\\], not of epoch 3"):
        shipped.at_epoch(3)


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 2 ** -8), ("float16", 2 ** -11)])
def test_half_precision_storage_round_trips_within_its_precision(tmp_path, dtype, tolerance):
    rng = np.random.default_rng(0)
    traj = Trajectory(Layout(("w",), ((1000,),), ("float32",)), rng.standard_normal((3, 1000), np.float32),
                      {"seed": 0})
    path = save_trajectory(traj, tmp_path / "h.safetensors", dtype)
    back = load_trajectory(path)
    assert back.checkpoints.dtype == np.float32 and path.stat().st_size < 0.6 * traj.checkpoints.nbytes
    rel = np.abs(back.checkpoints - traj.checkpoints) / np.abs(traj.checkpoints)
    assert rel.max() <= tolerance and not np.array_equal(back.checkpoints, traj.checkpoints)
    streamed = save_trajectory(load_trajectory(path, lazy=True), tmp_path / "s.safetensors", dtype)   # row by row
    assert np.array_equal(load_trajectory(streamed).checkpoints, back.checkpoints)


def test_the_memory_benchmark_smallest_case(ray_session, tmp_path):
    """benchmarks/bench_memory.py --smoke: a task is shipped two checkpoints whatever the trajectory's length."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_memory", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    records = bench.main(["--smoke", "--dir", str(tmp_path)])
    assert [r["tasks"] for r in records] == [1, 2]
    for r in records:
        assert r["rows_shipped"] == 2 and r["rows_read_by_driver"] == 2 and r["epochs"] == 8
