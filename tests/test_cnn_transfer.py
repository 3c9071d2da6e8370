"""Gradient matching on CNNs (issue 21): a target initialised as a permuted copy of the source's initialisation is
recovered by GMT and FGMT at every step, and so the transferred network IS the permuted source. Where a unit's
gradient is zero on the batch (a dead ReLU: Conv8 without BatchNorm has many), every assignment of it scores the
same: the solver's objective still equals the planted one, and every unit with a gradient is recovered."""
import pytest
import torch

import ltray
from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
from ltray.core.functional import gradient
from ltray.core.matching import Matcher
from ltray.core.transfer import transfer
from ltray.data import batches
from ltray.runs import train_source

CNNS = [("conv8bn", 4, "default"), ("conv8", 4, "kaiming"), ("resnet18", None, "default"),
        ("torchvision:resnet18", None, "default")]


@pytest.fixture(scope="module")
def digits():
    return ltray.load_dataset("digits")


def _source(digits, name, width, init):
    cfg = ModelConfig(name, width, init=init)
    traj = train_source(digits, DataConfig("digits"), cfg, TrainConfig(epochs=2, lr=0.05, weight_decay=1e-4,
                                                                        cosine=True), seed=0, progress=False)
    model = cfg.build(digits, 0)
    return model, ltray.spec_for(model, digits.train.x[:2]), traj


def _live(spec, grad, group):
    """Units of `group` (indexed as in `grad`) whose gradient is nonzero in some tensor the group acts on (whole axes only)."""
    live = None
    for key, axis in spec.groups[group]:
        entry = spec.axes[key][axis]
        if isinstance(entry, str) and key in grad:
            g = grad[key].dense() if hasattr(grad[key], "dense") else grad[key]
            rows = g.movedim(axis, 0).reshape(g.shape[axis], -1).abs().sum(1) > 0
            live = rows if live is None else live | rows
    return live


@pytest.mark.parametrize("name,width,init", CNNS, ids=[c[0] for c in CNNS])
def test_a_planted_permutation_scores_the_optimum_and_every_live_unit_is_recovered(digits, name, width, init):
    model, spec, traj = _source(digits, name, width, init)
    planted = ltray.random_permutation(spec, seed=9)
    theta1 = traj.state(0)
    theta2 = ltray.apply_permutation(spec, planted, theta1)
    x, y = next(batches(digits.train, 128, torch.Generator().manual_seed(0)))
    g1, g2 = gradient(model, theta1, x, y), gradient(model, theta2, x, y)
    matcher = Matcher(spec)
    matcher.add_pair(g2, g1)
    found = matcher.solve(seed=1)
    assert matcher.objective(found) == pytest.approx(matcher.objective(planted), rel=1e-6)
    for g in spec.groups:
        live = _live(spec, g2, g)        # by target unit: position i holds source unit perm[i]
        assert live is not None and torch.equal(found[g][live], planted[g][live]), g


@pytest.mark.parametrize("method", ["gmt", "fgmt"])
def test_conv8_with_batchnorm_follows_a_planted_permutation_at_every_step(digits, method):
    """With BatchNorm no unit is dead on the batch: the whole permutation is recovered at every step, and the
    transferred trajectory is the permuted source's, point by point (after the BatchNorm statistics reset)."""
    model, spec, traj = _source(digits, "conv8bn", 4, "default")
    planted = ltray.random_permutation(spec, seed=9)
    seq = traj.linear(3, "cosine")
    result = transfer(method, model, spec, seq, ltray.apply_permutation(spec, planted, traj.state(0)), digits,
                      TransferConfig(T=3, batch_size=128, bn_samples=128), seed=1)
    for perm in result.perms:
        assert all(torch.equal(perm[g], planted[g]) for g in spec.groups)
    itself = transfer("naive", model, spec, seq, traj.state(0), digits,
                      TransferConfig(T=3, batch_size=128, bn_samples=128), seed=1)
    assert result.val_acc == pytest.approx(itself.val_acc, abs=1e-9)   # pi(theta1^t) computes what theta1^t does


def test_the_cnn_experiment_smoke_run_writes_its_files_and_they_merge(tmp_path):
    """experiments/cnn.py --smoke, split over two processes' folders and merged, as the GPU script does."""
    import importlib.util
    from pathlib import Path

    import pandas as pd

    path = Path(__file__).resolve().parents[1] / "experiments" / "cnn.py"
    spec = importlib.util.spec_from_file_location("cnn_experiment", path)
    cnn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cnn)
    common = ["--smoke", "--no-progress", "--cache", str(tmp_path / "cache")]
    assert cnn.main([*common, "--out", str(tmp_path / "a")]) == 0
    assert cnn.main([*common, "--first-pair", "1", "--out", str(tmp_path / "b")]) == 0
    assert cnn.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    df = pd.read_parquet(tmp_path / "m" / "conv8bn_w4_default_transfer.parquet")
    assert sorted(df.seed_source.unique()) == [0, 1] and set(df.method) == {"naive", "oracle", "gmt", "fgmt"}
    assert set(zip(df.trajectory, df["T"])) == {("linear", 2), ("actual", 2), ("linear", 4)}   # actual:4 > 3 epochs
    start = df[df.t == 0].groupby(["seed_source", "trajectory", "T"]).val_acc.nunique()
    assert (start == 1).all()                                    # every method starts from the same theta2^0
    training = pd.read_parquet(tmp_path / "m" / "conv8bn_w4_default_training.parquet")
    assert len(training) == 2 * 2 * 4 and set(training.role) == {"source", "target"}   # 2 pairs x 2 nets x 4 epochs
    assert (tmp_path / "m" / "conv8bn_w4_default_transfer.png").stat().st_size > 0
    assert "## conv8bn_w4_default" in (tmp_path / "m" / "summary.md").read_text()
