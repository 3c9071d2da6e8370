"""`ltray sweep`: the search space, a small Tune sweep on the session Ray, and resuming an interrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from ltray.cli import main
from ltray.sweep import SearchSpace, run_id
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
    assert df.finetune_lr.between(1e-5, 1e-3).all() and set(df.seed_target) == {1000}
    # every row holds what its configuration gives when evaluated here, in this process, on the saved source
    from ltray.core.trajectory import load_trajectory
    from ltray.sweep import configs_of, evaluate_config

    setup = json.loads((out / "sweep.json").read_text())
    data_cfg, model_cfg, train_cfg, transfer_cfg = configs_of(setup)
    data, source = data_cfg.load(), load_trajectory(out / "source.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                                   # what each trial had (1 CPU)
    try:
        for row in df.itertuples():
            config = dict(T=row.T, batch_size=row.batch_size, schedule=row.schedule, method=row.method,
                          finetune_lr=row.finetune_lr)
            here = evaluate_config(data, source, config, model_cfg=model_cfg, train_cfg=train_cfg,
                                   transfer_cfg=transfer_cfg, finetune_epochs=1, seed_target=1000)
            assert 1 <= row.best_step <= row.T and row.best_val_acc >= row.final_val_acc, row
            for key in ("best_val_acc", "final_val_acc", "best_step", "finetuned_val_acc"):
                assert getattr(row, key) == pytest.approx(here[key], abs=1e-6), (key, row)
    finally:
        torch.set_num_threads(threads)
    assert set(df.config_hash) == {run_id(setup)}              # what --resume reads back names the same run
    moved = dict(setup, data_cfg=dict(setup["data_cfg"], root="/elsewhere"), storage="s3://bucket/x")
    assert run_id(moved) == run_id(setup)                      # where data and state live is not part of it
    assert run_id(dict(setup, space=dict(setup["space"], T=[2]))) != run_id(setup)
    assert (out / "tune" / "sweep").is_dir() and "wrote" in capsys.readouterr().out
    assert main(["sweep", *SMALL, "--out", str(out)]) == 2  # a second sweep into the same directory


# `ltray sweep` whose first trial runs and whose later ones wait, in their Ray workers, until the test has stopped
# the driver: the stop lands after exactly one finished trial and before the sweep ends, on any machine. The marker
# is a literal in the code (workers of the session cluster do not see this driver's environment); the wrapper is
# named "trial", the name Tune records and --resume looks for.
HELD = """
import sys
from ltray.cli import main
from ltray.distributed import search

def first_trial_runs(config, **parameters):
    import os, time
    from ltray.distributed import search
    try:
        os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(600)
    search.trial(config, **parameters)

first_trial_runs.__name__ = first_trial_runs.__qualname__ = "trial"
search.trial = first_trial_runs
sys.exit(main())
"""


def _held_sweep(ray_session, out, samples: int, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """A separate driver on the session cluster, running a sweep of `samples` GMT trials held after the first."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    code = HELD.replace("MARKER", repr(str(out.parent / f"{out.name}.first-trial")))
    return subprocess.Popen([sys.executable, "-c", code, "sweep", *SMALL, "--num-samples", str(samples), "--T", "2,3",
                             "--method", "gmt", "--address", ray_session.get_runtime_context().gcs_address,
                             "--out", str(out)], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # SIGINT not ignored,
    # as it is for everything a shell without job control starts in the background (the test sends one)


def _finished_trials(out) -> dict[str, dict]:
    """The trials Tune's experiment state (what --resume reads) records as finished: trial id -> last result."""
    finished = {}
    for path in (out / "tune" / "sweep").glob("experiment_state-*.json"):
        try:
            trials = json.loads(path.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):       # being written: read it again next time
            continue
        for trial, runtime in trials:
            trial = json.loads(trial)
            if trial["status"] == "TERMINATED":
                finished[trial["trial_id"]] = json.loads(runtime)["last_result"]
    return finished


def _one_finished_trial(driver: subprocess.Popen, out) -> dict[str, dict]:
    deadline = time.time() + 240
    while not (finished := _finished_trials(out)):
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        assert time.time() < deadline, "the sweep finished no trial"
        time.sleep(0.5)
    assert len(finished) == 1, finished             # the others are held
    return finished


@pytest.mark.slow
def test_an_interrupted_sweep_resumes(ray_session, tmp_path):
    """Ctrl-C a sweep (a separate driver on the session cluster) after its first trial; --resume finishes it."""
    out = tmp_path / "sweep"
    driver = _held_sweep(ray_session, out, 6, stdout=subprocess.PIPE)
    finished = _one_finished_trial(driver, out)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-2000:]
    assert "--resume" in stdout
    first = pd.read_parquet(out / "sweep.parquet")
    assert len(first) == 6 and set(first[first.status == "ok"].trial_id) == set(finished)
    assert main(["sweep", "--resume", "--no-progress", "--out", str(out)]) == 0
    done = pd.read_parquet(out / "sweep.parquet")
    assert len(done) == 6 and set(done.status) == {"ok"}
    kept = done.set_index("trial_id").best_val_acc
    assert all(kept[t] == last["best_val_acc"] for t, last in finished.items())   # kept, not rerun


def test_a_sweep_killed_outright_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    """SIGKILL the driver (no cleanup runs) once a trial has finished; --resume completes sweep.parquet."""
    out = tmp_path / "sweep"
    driver = _held_sweep(ray_session, out, 4)
    try:
        finished = _one_finished_trial(driver, out)
        reported = {t: next((out / "tune" / "sweep").glob(f"trial_{t}_*")).joinpath("result.json").read_text()
                    for t in finished}
    finally:
        driver.kill()
        driver.communicate(timeout=60)
    assert main(["sweep", "--resume", "--no-progress", "--out", str(out)]) == 0
    done = pd.read_parquet(out / "sweep.parquet")
    assert len(done) == 4 and set(done.status) == {"ok"} and done.trial_id.is_unique
    kept = done.set_index("trial_id").best_val_acc
    for trial, text in reported.items():           # a finished trial was not run again: its results are as they were
        assert next((out / "tune" / "sweep").glob(f"trial_{trial}_*")).joinpath("result.json").read_text() == text
        assert kept[trial] == finished[trial]["best_val_acc"]
