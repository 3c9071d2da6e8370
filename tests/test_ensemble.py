"""The ensemble assembler: `python -m ltray.ensemble` / `ltray ensemble` on digits, through the session Ray."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ltray.ensemble import ensemble_accuracy, main

SMALL = ["--width", "32", "--epochs", "3", "--T", "3", "--finetune-epochs", "1", "--no-progress"]


def test_ensemble_accuracy_is_the_accuracy_of_the_mean_softmax():
    labels = np.array([0, 1, 2, 1])
    one_hot = np.eye(3, dtype=np.float32)[labels]
    assert ensemble_accuracy([one_hot] * 3, labels) == 100.0  # identical members: the member's accuracy
    wrong = np.eye(3, dtype=np.float32)[[1, 2, 0, 0]]
    assert ensemble_accuracy([one_hot, wrong], labels) in (0.0, 25.0, 50.0, 75.0, 100.0)
    confident = [one_hot * 0.9 + 0.1 / 3, wrong * 0.6 + 0.4 / 3]  # the more confident member wins every vote
    assert ensemble_accuracy(confident, labels) == 100.0


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble")
    assert main([*SMALL, "--members", "2", "--full-ensemble", "--out", str(out)]) == 0
    return out


def test_members_and_ensembles_are_written_with_seeds_and_provenance(run):
    members, ensembles = pd.read_parquet(run / "members.parquet"), pd.read_parquet(run / "ensemble.parquet")
    assert sorted(members.kind) == ["full", "full", "source", "transferred", "transferred"]
    transferred = members[members.kind == "transferred"]
    assert sorted(transferred.seed) == [1000, 1001] and set(transferred.seed_source) == {0}
    assert set(transferred.method) == {"fgmt"} and transferred.best_step.between(1, 3).all()
    assert (transferred.test_acc == transferred.test_acc_finetuned).all()
    assert (transferred.seconds >= transferred.transfer_seconds).all()
    assert sorted(members[members.kind == "full"].seed) == [1000, 1001]  # the same initialisations
    assert members[members.kind == "full"].test_acc_transfer.isna().all()
    assert set(ensembles.kind) == {"transferred", "full"} and set(ensembles["size"]) == {2}
    assert ensembles.test_acc.between(0, 100).all() and ensembles.seeds.eq("1000,1001").all()
    source_seconds = members[members.kind == "source"].seconds.iloc[0]
    row = ensembles.set_index("kind").loc["transferred"]
    assert row.seconds == pytest.approx(transferred.seconds.sum() + source_seconds)
    for df in (members, ensembles):
        assert df[["config_hash", "ltray_version", "torch_version"]].notna().all().all()


def test_a_rerun_skips_finished_members_and_adds_new_ones(run, capsys):
    before = pd.read_parquet(run / "members.parquet")
    capsys.readouterr()
    assert main([*SMALL, "--members", "3", "--out", str(run)]) == 0
    assert "3 of 4 members already" in capsys.readouterr().out
    after = pd.read_parquet(run / "members.parquet")
    assert sorted(after[after.kind == "transferred"].seed) == [1000, 1001, 1002]
    cols = ["kind", "seed", "test_acc", "seconds"]
    kept = after[after.seed.isin([0, 1000, 1001]) & (after.kind != "full")][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before[before.kind != "full"][cols].reset_index(drop=True))
    assert (run / "sources").is_dir() and len(list((run / "sources").iterdir())) == 1


def test_bad_input_is_one_line_before_any_work(ray_session, tmp_path, capsys, run):
    assert main(["--members", "0", "--out", str(tmp_path / "zero")]) == 2
    assert main([*SMALL, "--trajectory", str(next((run / "sources").iterdir())), "--width", "48",
                 "--out", str(tmp_path / "wide")]) == 2
    assert main([*SMALL, "--gpus-per-task", "1", "--out", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ltray ensemble: error: --members must be >= 1, got 0"
    assert "another architecture" in err[1] and "no node can run a task needing 1 CPU and 1 GPU" in err[2]
    assert len(err) == 3 and not any((tmp_path / d).exists() for d in ("zero", "wide", "gpu"))


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "ltray.ensemble", "--members", "-1"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "ltray ensemble: error: --members must be >= 1, got -1"


@pytest.mark.slow
def test_default_runs_on_digits_and_prints_a_summary(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, "-m", "ltray.ensemble", "--num-cpus", "2"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "transferred" in done.stdout and (tmp_path / "runs" / "ensemble" / "ensemble.parquet").exists()
