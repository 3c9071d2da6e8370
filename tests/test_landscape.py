"""Mode connectivity: path and plane invariants, and `ltray landscape` on the bundled digits."""
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import ltray
from ltray.cli import main
from ltray.errors import LtrayError
from ltray.analysis.landscape import (Evaluator, interpolate, linear_path, loss_barrier, plane, plane_grid, plane_surface,
                             save_state)
from ltray.models import state_of
from ltray.config import DataConfig, ModelConfig
from ltray.core.functional import evaluate, reset_bn_stats
from ltray.core.trajectory import save_trajectory
from ltray.results import PATH_SCHEMA, PLANE_SCHEMA
from ltray.runs import train_source


@pytest.fixture(scope="module")
def digits():
    return ltray.load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    """Two 2-MLPs (width 32) trained from different seeds."""
    return [train_source(digits, DataConfig("digits"), ModelConfig("mlp", 32), ltray.TrainConfig(epochs=3, lr=0.1),
                         seed=s, progress=False) for s in (0, 1)]


def _mlp(digits, width=32):
    return ModelConfig("mlp", width).build(digits, 0)


def test_interpolate_hits_the_end_points_and_keeps_integer_buffers():
    a = {"w": torch.randn(3, 4), "n": torch.tensor(3)}
    b = {"w": torch.randn(3, 4), "n": torch.tensor(7)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(interpolate(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert interpolate(a, b, 0.5)["n"] is a["n"]


def test_loss_barrier_against_hand_computed_values():
    alphas = np.linspace(0, 1, 5)
    assert loss_barrier(alphas, 1 + 2 * alphas) == pytest.approx(0.0)          # linear: no barrier
    assert loss_barrier(alphas, [1, 1, 3, 1, 1]) == pytest.approx(2.0)         # a bump of 2 above the chord
    assert loss_barrier(alphas, [2, 1.5, 1, 0.5, 0]) == pytest.approx(0.0)     # monotone straight line
    assert loss_barrier(alphas, [1, 0, 0, 0, 1]) == pytest.approx(0.0)         # a valley: max is at the ends
    with pytest.raises(LtrayError):
        loss_barrier([0.2, 1.0], [1, 1])


def test_path_between_a_network_and_its_permutation_has_equal_end_losses(digits, trained):
    model = _mlp(digits)
    spec = ltray.spec_for(model)
    a = trained[0].state(-1)
    b = ltray.apply_permutation(spec, ltray.random_permutation(spec, 3), a)
    rows = linear_path(Evaluator(model, digits.val), a, b, 5)
    assert [r["alpha"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rows[0]["loss"] == pytest.approx(rows[-1]["loss"], rel=1e-5)
    assert rows[0]["acc"] == rows[-1]["acc"]
    assert rows[0]["barrier"] > 0.05            # the midpoint of two unaligned copies is worse
    same = linear_path(Evaluator(model, digits.val), a, a, 3)
    assert {r["loss"] for r in same} == {same[0]["loss"]} and same[0]["barrier"] == pytest.approx(0.0, abs=1e-6)


def test_plane_basis_is_orthonormal_and_reproduces_the_three_points(digits, trained):
    w0, w1, w2 = trained[0].state(-1), trained[1].state(-1), trained[0].state(1)
    p = plane(w0, w1, w2)
    assert float(p.u @ p.u) == pytest.approx(1.0) and float(p.v @ p.v) == pytest.approx(1.0)
    assert abs(float(p.u @ p.v)) < 1e-9
    assert p.coords[0] == (0.0, 0.0) and p.coords[1][1] == 0.0 and p.coords[2][1] > 0
    for w, (cu, cv) in zip((w0, w1, w2), p.coords):
        back = p.point(cu, cv)
        assert all(torch.allclose(back[k], w[k], atol=1e-5) for k in w)
    us, vs = plane_grid(p, grid=5, margin=0.2)
    span_u = max(c[0] for c in p.coords) - min(c[0] for c in p.coords)
    assert len(us) == len(vs) == 5 and us[0] == pytest.approx(min(c[0] for c in p.coords) - 0.2 * span_u)
    with pytest.raises(LtrayError, match="collinear"):
        plane(w0, w1, interpolate(w0, w1, 2.0))
    with pytest.raises(LtrayError, match="at least 2"):
        plane_grid(p, grid=1)


def test_plane_surface_evaluates_the_anchors_exactly(digits, trained):
    model = _mlp(digits)
    points = {"a": trained[0].state(-1), "b": trained[1].state(-1), "c": trained[0].state(1)}
    grid, anchors = plane_surface(Evaluator(model, digits.val), points, grid=3, margin=0.1)
    assert len(grid) == 9 and [a["point"] for a in anchors] == ["a", "b", "c"]
    for a in anchors:
        assert a["loss"] == pytest.approx(evaluate(model, points[a["point"]], digits.val)[0])


def test_batchnorm_statistics_are_recomputed_at_every_point(digits):
    """The evaluation of a BN model must not depend on the running statistics the point carries."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    state = state_of(model)
    garbage = dict(state, **{"2.running_mean": torch.full((16,), 5.0), "2.running_var": torch.full((16,), 9.0)})
    ev = Evaluator(model, digits.val, digits.train, bn_samples=128, seed=4)
    assert ev(state) == ev(garbage)
    fresh = reset_bn_stats(model, state, digits.train, 128, torch.Generator().manual_seed(4))
    assert ev(garbage) == evaluate(model, fresh, digits.val)
    with pytest.raises(LtrayError, match="BatchNorm"):
        Evaluator(model, digits.val)(state)


# ---- the command ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory, digits, trained):
    d = tmp_path_factory.mktemp("points")
    a, b = save_trajectory(trained[0], d / "a.safetensors"), save_trajectory(trained[1], d / "b.safetensors")
    wide = train_source(digits, DataConfig("digits"), ModelConfig("mlp", 48), ltray.TrainConfig(epochs=1),
                        seed=2, progress=False)
    other = save_trajectory(wide, d / "wide.safetensors")
    state = save_state(trained[1].state(1), d / "state.safetensors", {"model": "mlp", "width": 32})
    return {"a": str(a), "b": str(b), "wide": str(other), "state": str(state)}


def test_landscape_command_writes_a_path_and_a_plane(tmp_path, files, capsys, digits, trained):
    out = tmp_path / "path"
    assert main(["landscape", files["a"], files["b"], "--grid", "5", "--labels", "s0,s1", "--out", str(out)]) == 0
    table = pq.read_table(out / "path.parquet")
    assert table.schema.equals(PATH_SCHEMA, check_metadata=False)
    df = table.to_pandas()
    assert len(df) == 5 and list(df.point_a.unique()) == ["s0"] and df.barrier.nunique() == 1
    df = df.sort_values("alpha")          # the barrier: the path's largest rise above the chord of its end losses
    line = (1 - df.alpha) * df.loss.iloc[0] + df.alpha * df.loss.iloc[-1]
    assert df.barrier.iloc[0] == pytest.approx(max(0.0, float((df.loss - line).max())), abs=1e-9)
    ends = [evaluate(_mlp(digits), trained[i].state(-1), digits.val)[0] for i in (0, 1)]
    assert [df.loss.iloc[0], df.loss.iloc[-1]] == pytest.approx(ends, rel=1e-5)
    assert (out / "path.png").stat().st_size > 10_000
    assert "barrier" in capsys.readouterr().out

    out = tmp_path / "plane"
    assert main(["landscape", files["a"], files["b"], files["state"], f"{files['a']}@0", "--out", str(out)]) == 2
    assert main(["landscape", files["a"], files["b"], files["state"], "--grid", "4", "--out", str(out)]) == 0
    df = pd.read_parquet(out / "plane.parquet")
    assert pq.read_schema(out / "plane.parquet").equals(PLANE_SCHEMA, check_metadata=False)
    assert df.point.isna().sum() == 16 and sorted(df.point.dropna()) == ["A", "B", "C"]
    assert (out / "plane.png").exists()


@pytest.mark.parametrize("case, match", [
    ("arch", "different architectures"),
    ("model", "tensor 'fc1.weight' has shape [64, 64] in the model but [32, 64] in the points"),
    ("grid", "--grid must be at least 2"),
    ("missing", "does not exist"),
    ("index", "checkpoints 0..3"),
    ("count", "give 2 points"),
])
def test_landscape_bad_input_is_one_line_and_leaves_no_output(tmp_path, files, capsys, case, match):
    out = tmp_path / "out"
    args = {"arch": [files["a"], files["wide"]],
            "grid": [files["a"], files["b"], "--grid", "1"],
            "missing": [files["a"], str(tmp_path / "nope.safetensors")],
            "model": [files["a"], files["b"], "--width", "64"],       # the header's 32, overridden
            "index": [files["a"], f"{files['b']}@9"],
            "count": [files["a"]]}[case]
    assert main(["landscape", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
