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
