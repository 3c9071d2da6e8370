"""The ensemble builder: `python -m ltray.ensemble` / `ltray ensemble` on digits (a job this small runs in this
process; test_reliability runs its units as Ray tasks and compares)."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ltray.cli import main as ltray_main
from ltray.config import DataConfig
from ltray.ensemble.recipe import KINDS, Recipe, assemble, check, ci95, plan, source_epochs
from ltray.errors import LtrayError
from ltray.ensemble.members import Member

def main(argv: list[str]) -> int:
    return ltray_main(["ensemble", *argv])


SMALL = ["--width", "32", "--epochs", "4", "--T", "3", "--no-progress", "--no-plot"]


# ---- the plan and the assembly, on synthetic members ------------------------------------------------------------

def test_plan_seeds_sources_round_robin_and_repeats():
    recipe = check(Recipe(members=4, sources=2, repeats=2, methods=("fgmt", "naive")), 10, False, False)
    assert recipe.snapshot_epochs == (12,) and recipe.trained_epochs == (10,)
    units = plan(recipe, 10)
    moved = [u for u in units if u.kind == "transferred" and u.repeat == 1 and u.method == "fgmt"]
    assert [(u.seed, u.source) for u in moved] == [(11000, 10000), (11001, 10001), (11002, 10000), (11003, 10001)]
    assert sorted(u.seed for u in units if u.kind == "full" and u.repeat == 0) == [1000, 1001, 1002, 1003]
    assert [u.seed for u in units if u.kind == "source"] == [0, 1, 10000, 10001]
    assert len({u.name() for u in units}) == len(units)
    with_sources = check(Recipe(members=4, sources=2, repeats=1, with_sources=True), 10, False, False)
    assert [u.source for u in plan(with_sources, 10) if u.kind == "transferred"] == [0, 1]


@pytest.mark.parametrize("recipe, message", [
    (Recipe(members=0), "must be >= 1"),
    (Recipe(members=2, sources=3), "every source is transferred"),
    (Recipe(members=3, sources=2, with_sources=True), "2 x --sources"),
    (Recipe(trained_epochs=(0, 5)), "--trained-epochs must lie in 1..10"),
    (Recipe(snapshot_epochs=(10,)), "multiples of --members"),
    (Recipe(stages=()), "--finetune-epochs"),
])
def test_recipes_that_cannot_run_are_refused(recipe, message):
    with pytest.raises(LtrayError, match=message):
        check(recipe, 10, False, False)


def test_the_recipes_epochs_are_always_evaluated():
    """--trained-epochs adds epochs: the full ensemble at the recipe's epochs is what x_full divides by."""
    assert check(Recipe(trained_epochs=(5, 2)), 10, False, False).trained_epochs == (2, 5, 10)
    assert check(Recipe(trained_epochs=(10,)), 10, True, False).trained_epochs == (10,)


def test_an_annealed_recipes_budgets_are_runs_of_their_own_and_a_given_trajectory_is_one_source():
    """Under cosine annealing the checkpoint after e < E epochs was never annealed: a full member at budget e is
    its own e-epoch run, and the single source is evaluated at its end only (plus the checkpoint ensemble's)."""
    annealed = check(Recipe(members=2, repeats=1, trained_epochs=(2, 5)), 10, True, False)
    full = [(u.seed, u.epochs) for u in plan(annealed, 10) if u.kind == "full"]
    assert full == [(1000, 2), (1000, 5), (1000, 10), (1001, 2), (1001, 5), (1001, 10)]
    assert source_epochs(annealed, 10) == (9, 10)
    constant = check(Recipe(members=2, repeats=1, trained_epochs=(2, 5)), 10, False, False)
    assert [u.epochs for u in plan(constant, 10) if u.kind == "full"] == [None, None]    # one run, checkpoints
    assert source_epochs(constant, 10) == (2, 5, 9, 10)
    with pytest.raises(LtrayError, match="one source"):
        check(Recipe(sources=2), 10, False, True)


def test_snapshot_learning_rates_and_copies_are_units_of_their_own():
    recipe = check(Recipe(members=2, repeats=1, snapshot_lrs=(0.1, 0.01), copies=True), 4, False, False)
    units = plan(recipe, 4)
    assert [u.lr for u in units if u.kind == "snapshot"] == [0.01, 0.1]
    assert [(u.seed, u.source) for u in units if u.kind == "copy"] == [(1000, 0), (1001, 0)]
    assert len({u.name() for u in units}) == len(units)
    with pytest.raises(LtrayError, match="--snapshot-lrs must be > 0"):
        check(Recipe(snapshot_lrs=(0.0,)), 10, False, False)


def test_the_95_percent_interval_is_students():
    from scipy import stats

    values = [97.9, 98.2, 98.0, 98.4, 97.7]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert ci95(values) == pytest.approx((high - low) / 2)
    assert ci95([98.0]) != ci95([98.0])          # one repeat: no interval (NaN)


def _member(kind, seed, epochs, seconds, pred, labels, n_classes=3, work=None):
    probs = np.full((len(labels), n_classes), 0.1 / (n_classes - 1))
    probs[np.arange(len(labels)), pred] = 0.9
    return Member(dict(kind=kind, seed=seed, epochs=epochs, seconds=seconds,
                       epochs_eq=float(epochs) if work is None else work, lr=0.1), probs, probs)


def test_assemble_counts_each_run_once_and_compares_every_ensemble_with_the_full_one():
    labels = np.array([0, 1, 2, 0, 1, 2])
    recipe = check(Recipe(members=2, sources=1, repeats=1, stages=(0, 1), snapshot_epochs=(4,), with_sources=True), 4,
                   False, False)
    units = {}
    for u in plan(recipe, 4):
        if u.kind == "source":    # epochs 3 and 4: 1 s per epoch; epoch 4 wrong on the last point
            units[u] = [_member("source", u.seed, e, float(e), labels if e == 3 else [0, 1, 2, 0, 1, 0], labels)
                        for e in (3, 4)]
        elif u.kind == "full":
            units[u] = [_member("full", u.seed, 4, 5.0, labels, labels)]
        elif u.kind == "snapshot":
            units[u] = [_member("snapshot", u.seed, e, e * 2.0, labels, labels) for e in (2, 4)]
        else:                     # transferred: 0.5 s (0.25 epochs-eq) of transfer, 1 s per fine-tuning epoch
            units[u] = [_member("transferred", u.seed, s, 0.5 + s, [1, 1, 2, 0, 1, 2], labels, work=0.25 + s)
                        for s in (0, 1)]
    rows = pd.DataFrame(assemble(recipe, 4, units, labels, labels, {"finetune_lr": 1e-3, "finetune_optimizer": "adam",
                                                                       "T": 3}))
    assert list(rows.kind.drop_duplicates()) == ["source", "checkpoint", "snapshot", "full", "transferred"]
    assert list(rows[rows.kind == "full"]["size"]) == [1, 2]     # every size, for the deep-ensemble equivalent
    rows = rows[(rows.kind != "full") | (rows["size"] == 2)]
    by = rows.set_index(["kind", "epochs"])
    assert by.loc[("source", 4), "seconds"] == 4.0 and by.loc[("source", 4), "test_acc"] == pytest.approx(500 / 6)
    assert by.loc[("checkpoint", 4), "seconds"] == 4.0 and by.loc[("checkpoint", 4), "seeds"] == "0,0"
    assert by.loc[("snapshot", 4), "seconds"] == 8.0            # one run: its length, not the sum of snapshots
    assert by.loc[("full", 4), "seconds"] == 10.0 and by.loc[("full", 4), "x_full"] == 1.0
    ft = by.loc[("transferred", 1)]                            # the source (4 s, once) + one member (1.5 s)
    assert ft.seconds == 5.5 and ft.source_seconds == 4.0 and ft.x_full == 0.55
    assert ft.epochs_eq == 4 + 1.25 and ft.x_full_eq == 5.25 / 8       # in passes: the source's 4 + the member's
    assert by.loc[("snapshot", 4), "epochs_eq"] == 4.0 and by.loc[("checkpoint", 4), "epochs_eq"] == 4.0
    assert ft["size"] == 2 and ft.sources == 1 and ft.with_sources and ft.finetune_epochs == 1
    assert ft.finetune_optimizer == "adam" and ft["T"] == 3
    assert by.loc[("source", 4), "finetune_lr"] != by.loc[("source", 4), "finetune_lr"]  # null beyond transferred
    assert by.loc[("source", 4), "x_full"] == 0.4      # one model too: against the M = 2 full members (4 s / 10 s)
    assert ft.disagreement == pytest.approx(100 * 2 / 6)       # source@4 vs member: points 0 and 5 differ


# ---- the command, end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble")
    assert main([*SMALL, "--members", "2", "--repeats", "2", "--finetune-epochs", "0,1", "--trained-epochs", "2",
                 "--method", "fgmt,naive", "--copies", "--out", str(out)]) == 0
    return out


def _unit_members(run) -> dict[tuple, np.ndarray]:
    """Every saved member's test-set probabilities, read here from the unit files with safetensors:
    (repeat, kind, method, seed, epochs) -> probs."""
    import json

    from safetensors import safe_open

    found = {}
    for path in (run / "members").glob("*.safetensors"):
        with safe_open(str(path), framework="numpy") as f:
            rows, probs = json.loads(f.metadata()["rows"]), f.get_tensor("probs")
        for row, p in zip(rows, probs):
            found[(row["repeat"], row["kind"], row["method"], row["seed"], row["epochs"])] = p
    return found


def test_every_kind_is_in_one_table_and_its_numbers_are_its_members(run):
    ensembles, members = pd.read_parquet(run / "ensemble.parquet"), pd.read_parquet(run / "members.parquet")
    assert set(ensembles.kind) == set(KINDS) and set(ensembles.repeat) == {0, 1}
    moved = ensembles[ensembles.kind == "transferred"]
    assert set(zip(moved.method, moved.finetune_epochs)) == {(m, e) for m in ("fgmt", "naive") for e in (0, 1)}
    assert (moved.seconds > moved.source_seconds).all()
    full = ensembles[(ensembles.kind == "full") & (ensembles.epochs == 4)]
    # --trained-epochs 2 "also": the recipe's 4 epochs are evaluated too, and x_full divides by the full ensemble there
    assert (full[full["size"] == 2][["x_full", "x_full_eq"]] == 1.0).all().all()
    assert set(ensembles[ensembles.kind == "full"].epochs) == {2, 4}
    assert (full.dee == full["size"]).all()      # a full ensemble of m members is worth m of its own kind
    every_full = ensembles[ensembles.kind == "full"]
    assert (every_full.epochs_eq == every_full.epochs * every_full["size"]).all()
    # the control without transfer: before fine-tuning, every copy is the source itself
    copies = ensembles[(ensembles.kind == "copy") & (ensembles.epochs == 0)].set_index("repeat")
    source = ensembles[(ensembles.kind == "source") & (ensembles.epochs == 4)].set_index("repeat")
    assert (copies.disagreement == 0).all() and copies.test_acc.sort_index().equals(source.test_acc.sort_index())
    # a transferred ensemble's passes: its source's 4 epochs once, plus its members' (transfer and fine-tuning)
    for row in moved.itertuples():
        mine = members[(members.repeat == row.repeat) & (members.kind == "transferred") & (members.method == row.method)
                       & (members.epochs == row.epochs)]
        assert row.epochs_eq == pytest.approx(4 + mine.epochs_eq.sum()) and (mine.epochs_eq >= row.epochs).all()
    assert ((ensembles.temperature > 0) & ensembles.test_nll_ts.notna() & ensembles.val_acc.between(0, 100)).all()
    assert set(ensembles[ensembles.kind == "snapshot"].epochs) == {4}   # 4 epochs: 2 cycles of 2
    for _, row in ensembles[ensembles["size"] == 2].iterrows():
        assert row.gain == pytest.approx(row.test_acc - row.member_acc_mean)
    # the numbers, recomputed here from the saved probabilities and the digits test labels
    labels = DataConfig("digits").load().test.y.numpy()
    probs = _unit_members(run)
    assert len(probs) == len(members) and (ensembles.n_test == len(labels)).all()
    for m in members.itertuples():
        p = probs[(m.repeat, m.kind, m.method, m.seed, m.epochs)]
        assert m.test_acc == pytest.approx(100 * np.mean(p.argmax(1) == labels))
    chance = 100 / 10
    transferred = members[members.kind == "transferred"]
    assert (transferred[transferred.epochs == 0].test_acc > chance + 50).all()     # no fine-tuning: ~80-90 %
    for row in ensembles[ensembles.kind.isin(["source", "full", "transferred", "copy"])].itertuples():
        seeds = [int(s) for s in row.seeds.split(",")]
        mine = [probs[(row.repeat, row.kind, row.method, s, row.epochs)] for s in seeds]
        mean = np.mean(mine, axis=0)
        assert row.test_acc == pytest.approx(100 * np.mean(mean.argmax(1) == labels)), row
        assert row.test_nll == pytest.approx(-np.mean(np.log(np.maximum(mean[np.arange(len(labels)), labels],
                                                                          1e-12))), rel=1e-6), row
        assert row.member_acc_mean == pytest.approx(np.mean([100 * np.mean(p.argmax(1) == labels) for p in mine]))
        # averaging probabilities never raises the NLL above the members' mean (Jensen)
        member_nll = members[(members.repeat == row.repeat) & (members.kind == row.kind) & (members.method == row.method)
                             & members.seed.isin(seeds) & (members.epochs == row.epochs)].test_nll
        assert len(member_nll) == row.size and row.test_nll <= member_nll.mean() + 1e-12, row


def test_a_rerun_skips_finished_units_and_rebuilds_the_same_tables(run, capsys):
    before = pd.read_parquet(run / "ensemble.parquet")
    capsys.readouterr()
    assert main([*SMALL, "--members", "2", "--repeats", "2", "--finetune-epochs", "0,1", "--trained-epochs", "2",
                 "--method", "fgmt,naive", "--copies", "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "20 of 20 units already" in printed and "wall" not in printed
    pd.testing.assert_frame_equal(pd.read_parquet(run / "ensemble.parquet"), before)
    assert "test split: 359 images (one image = 0.28 pt); mean over 2 repeats" in printed
    assert len(list((run / "sources").iterdir())) == 2          # one source per repeat, kept for reruns


def test_bad_input_is_one_line_before_any_work(ray_session, tmp_path, capsys, run):
    source = next((run / "sources").iterdir())
    assert main(["--members", "0", "--out", str(tmp_path / "zero")]) == 2
    assert main([*SMALL, "--trajectory", str(source), "--width", "48", "--repeats", "1",
                 "--out", str(tmp_path / "wide")]) == 2
    assert main([*SMALL, "--gpus-per-task", "1", "--out", str(tmp_path / "gpu")]) == 2
    assert main([*SMALL, "--finetune-optimizer", "lbfgs", "--out", str(tmp_path / "opt")]) == 2
    assert main([*SMALL, "--method", "fgmt,best", "--out", str(tmp_path / "method")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ltray ensemble: error: --members, --sources and --repeats must be >= 1, got 0, 1 and 3"
    assert "another architecture" in err[1] and "no node can run a task needing 1 CPU and 1 GPU" in err[2]
    assert "unknown fine-tuning optimizer 'lbfgs'" in err[3] and "unknown transfer method 'best'" in err[4]
    assert len(err) == 5 and not any((tmp_path / d).exists() for d in ("zero", "wide", "gpu", "opt", "method"))


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "ltray.ensemble", "--members", "-1"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == ("ltray ensemble: error: --members, --sources and --repeats must be >= 1, "
                                   "got -1, 1 and 3")


@pytest.mark.slow
def test_default_runs_on_digits_and_prints_one_row_per_kind(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, "-m", "ltray.ensemble", "--num-cpus", "2"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for kind in KINDS:
        assert kind in done.stdout
    out = tmp_path / "runs" / "ensemble"
    assert (out / "ensemble.png").stat().st_size > 10_000
    ensembles = pd.read_parquet(out / "ensemble.parquet")
    moved = ensembles[ensembles.kind == "transferred"]
    assert (moved.gain >= 0).all()                            # members that differ: the ensemble gains


def test_ray_pays_only_when_the_remaining_work_outlasts_its_start():
    """R seconds of work take ~start + R / W on W slots: Ray pays above R = start * W / (W - 1), never on one."""
    from argparse import Namespace

    from ltray.cli.ensemble import RAY_START_SECONDS, _worth_ray

    for cpus, per_task, slots in ((2, 1, 2), (4, 1, 4), (8, 2, 4)):
        r = _worth_ray(Namespace(num_cpus=cpus, cpus_per_task=per_task))
        assert r == pytest.approx(RAY_START_SECONDS * slots / (slots - 1))
        assert RAY_START_SECONDS + r / slots == pytest.approx(r)   # break-even: both paths take r seconds
    assert _worth_ray(Namespace(num_cpus=1, cpus_per_task=1)) == float("inf")
    assert _worth_ray(Namespace(num_cpus=2, cpus_per_task=2)) == float("inf")
