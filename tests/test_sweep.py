"""`ltray sweep`: the search space, a small Tune sweep on the session Ray, and resuming an interrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from ltray.cli import main
from ltray.distributed.sweep import SearchSpace, run_id
from ltray.errors import LtrayError

SMALL = ["--width", "32", "--epochs", "3", "--no-progress"]


def test_the_default_space_and_its_samples():
    space = SearchSpace()
    samples = space.sample(50, seed=3, finetune=True)
    assert samples == space.sample(50, seed=3, finetune=True) != space.sample(50, seed=4, finetune=True)
    for s in samples:
        assert s["T"] in space.T and s["batch_size"] in space.batch_size and s["schedule"] in space.schedule
        assert s["method"] in space.method and 1e-5 <= s["finetune_lr"] <= 1e-3
    assert len({(s["T"], s["batch_size"], s["schedule"], s["method"]) for s in samples}) > 12  # independent draws
    assert "finetune_lr" not in space.sample(1, 0, finetune=False)[0]


def test_a_space_from_a_file_and_flags(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"T": [2, 4], "method": ["fgmt"], "finetune_lr": [1e-4, 1e-3]}))
    space = SearchSpace.parse(str(path), T="3", schedule="cosine")
    assert (space.T, space.method, space.schedule, space.finetune_lr) == ((3,), ("fgmt",), ("cosine",), (1e-4, 1e-3))
    assert space.batch_size == SearchSpace().batch_size


@pytest.mark.parametrize("file,flags,message", [
    ({"T": [0, 5]}, {}, "T takes integers >= 1, got 0"),
    ({"method": ["magic"]}, {}, "unknown method 'magic'"),
    ({"lr": [1]}, {}, "unknown parameter 'lr'"),
    ({"T": []}, {}, "T needs at least one value"),
    ({}, {"batch_size": "64,big"}, "batch_size values must be int"),
    ({}, {"finetune_lr": "1e-3,1e-5"}, "0 < low <= high"),
    ("T: [5, 10", {}, "not valid JSON/YAML"),
])
def test_a_bad_space_is_one_line(tmp_path, file, flags, message):
    path = tmp_path / "space.yaml"
    path.write_text(file if isinstance(file, str) else json.dumps(file))
    with pytest.raises(LtrayError, match=message.replace("(", r"\(")) as err:
        SearchSpace.parse(str(path), **flags)
    assert "\n" not in str(err.value)


def test_bad_sweep_input_fails_before_any_work(ray_session, tmp_path, capsys):
    assert main(["sweep", "--T", "2,x", "--out", str(tmp_path / "a")]) == 2
    assert main(["sweep", "--objective", "speed", "--out", str(tmp_path / "b")]) == 2
    assert main(["sweep", "--resume", "--out", str(tmp_path / "c")]) == 2
    assert main(["sweep", "--gpus-per-task", "0.5", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["ltray sweep: error: search space: T values must be int, got ['2', 'x']",
                   "ltray sweep: error: unknown objective 'speed'; known: best_val_acc, final_val_acc, finetuned_val_acc",
                   f"ltray sweep: error: nothing to resume in {tmp_path / 'c'}: no sweep was started there",
                   "ltray sweep: error: no node can run a task needing 1 CPU and 0.5 GPU (nodes: 2 CPU/0 GPU); "
                   "lower --cpus-per-task/--gpus-per-task or add nodes"]
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_a_small_sweep_writes_one_row_per_trial(ray_session, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *SMALL, "--num-samples", "3", "--T", "2,3", "--batch-size", "32,64", "--method", "fgmt",
                 "--objective", "finetuned_val_acc", "--finetune-epochs", "1", "--out", str(out)]) == 0
    df = pd.read_parquet(out / "sweep.parquet")
    assert len(df) == 3 and set(df.status) == {"ok"}
    assert {"T", "batch_size", "schedule", "method", "finetune_lr", "finetuned_val_acc"} <= set(df.columns)
    assert set(df["T"]) <= {2, 3} and set(df.batch_size) <= {32, 64} and set(df.method) == {"fgmt"}
    assert (df.objective == "finetuned_val_acc").all() and (df.objective_value == df.finetuned_val_acc).all()
    assert df.finetune_lr.between(1e-5, 1e-3).all() and df.best_step.between(1, 3).all()
    assert set(df.seed_target) == {1000}
    setup = json.loads((out / "sweep.json").read_text())      # what --resume reads back names the same run
    assert set(df.config_hash) == {run_id(setup)}
    moved = dict(setup, data_cfg=dict(setup["data_cfg"], root="/elsewhere"), storage="s3://bucket/x")
    assert run_id(moved) == run_id(setup)                      # where data and state live is not part of it
    assert run_id(dict(setup, space=dict(setup["space"], T=[2]))) != run_id(setup)
    assert (out / "tune" / "sweep").is_dir() and "wrote" in capsys.readouterr().out
    assert main(["sweep", *SMALL, "--out", str(out)]) == 2  # a second sweep into the same directory


@pytest.mark.slow
def test_an_interrupted_sweep_resumes(ray_session, tmp_path):
    """Ctrl-C a sweep (a separate driver on the session cluster) after its first trial; --resume finishes it."""
    out = tmp_path / "sweep"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    address = ray_session.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "ltray", "sweep", *SMALL, "--num-samples", "6", "--T", "2,3",
                               "--method", "gmt", "--address", address, "--out", str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not any(p.stat().st_size for p in (out / "tune").rglob("result.json")) if (out / "tune").exists() else True:
        assert time.time() < deadline and driver.poll() is None, "the sweep did not start a trial"
        time.sleep(0.5)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-2000:]
    assert "--resume" in stdout
    first = pd.read_parquet(out / "sweep.parquet")
    assert len(first) == 6 and (first.status == "unfinished").any()
    assert main(["sweep", "--resume", "--no-progress", "--out", str(out)]) == 0
    done = pd.read_parquet(out / "sweep.parquet")
    assert len(done) == 6 and set(done.status) == {"ok"}
    finished = first[first.status == "ok"].set_index("trial_id").best_val_acc
    assert (done.set_index("trial_id").best_val_acc.loc[finished.index] == finished).all()  # kept, not rerun


def test_a_sweep_killed_outright_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    """SIGKILL the driver (no cleanup runs) once a trial has finished; --resume completes sweep.parquet."""
    out = tmp_path / "sweep"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    address = ray_session.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-m", "ltray", "sweep", *SMALL, "--num-samples", "4", "--T", "2,3",
                               "--method", "gmt", "--address", address, "--out", str(out)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, finished = time.time() + 240, []
    while not finished:
        assert time.time() < deadline and driver.poll() is None, "the sweep did not finish a trial"
        finished = [p for p in (out / "tune").rglob("result.json") if p.stat().st_size] if (out / "tune").exists() \
            else []
        time.sleep(0.5)
    time.sleep(2)                                  # Tune records the trial as done at its next step
    driver.kill()
    driver.communicate(timeout=60)
    reported = {p.parent.name: p.read_text() for p in finished}
    assert main(["sweep", "--resume", "--no-progress", "--out", str(out)]) == 0
    done = pd.read_parquet(out / "sweep.parquet")
    assert len(done) == 4 and set(done.status) == {"ok"} and done.trial_id.is_unique
    for trial, text in reported.items():           # a finished trial was not run again: its results are as they were
        assert (next((out / "tune").rglob(trial)) / "result.json").read_text() == text
