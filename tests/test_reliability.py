"""Faults a long run meets: a driver killed outright or interrupted leaves no process behind (checked by pid), a
worker killed mid fan-out costs no row, a killed ensemble continues where it stopped; what the CLI starts listens
on localhost only."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest

# a run long enough to be interrupted: repeated digits ensembles, every unit a Ray task. --ray forces Ray: left to
# itself the ensemble runs a job this small in its own process (13 s on a fast machine) and never starts Ray.
LONG = [sys.executable, "-m", "ltray.ensemble", "--ray", "--width", "64", "--epochs", "30", "--repeats", "20",
        "--members", "2", "--finetune-epochs", "0,5", "--num-cpus", "2", "--no-progress", "--no-plot"]


def _interruptible() -> None:
    """Ctrl-C's default in the driver, however the suite was started: a shell without job control starts its
    background commands (`cmd &`) with SIGINT ignored, their children inherit that, and Python keeps an ignored
    SIGINT ignored, so the driver would never see the interrupt this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ray_started(driver: subprocess.Popen, timeout: float = 90.0) -> list[psutil.Process]:
    """The driver's descendants once its embedded Ray runs tasks (a raylet and a worker running a task, not one
    Ray started idle while it was still starting)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        tree = psutil.Process(driver.pid).children(recursive=True)
        names = [p.name() for p in tree if p.is_running()]
        if "raylet" in names and any(n.startswith("ray::") and "Agent" not in n and n != "ray::IDLE" for n in names):
            return tree
        time.sleep(0.5)
    pytest.fail("the embedded Ray did not start")


def _left_behind(tree: list[psutil.Process], timeout: float = 20.0) -> list[str]:
    gone, alive = psutil.wait_procs(tree, timeout=timeout)
    return [f"{p.pid} {p.name()}" for p in alive]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT", "SIGTERM"])
def test_a_stopped_driver_leaves_no_process_behind(tmp_path, how):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    before = set(psutil.pids())
    driver = subprocess.Popen([*LONG, "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, preexec_fn=_interruptible)
    try:
        tree = _ray_started(driver)
        driver.send_signal(getattr(signal, how))
        _, err = driver.communicate(timeout=60)
        if how != "SIGKILL":        # unwound: the one line, and the exit status of an interrupted command
            assert driver.returncode == 130 and "ltray ensemble: interrupted" in err, err[-2000:]
        else:
            assert driver.returncode == -signal.SIGKILL
        assert not (tmp_path / "run" / "ensemble.parquet").exists()      # stopped mid-run, not after it
        assert not _left_behind(tree)
        assert not _ray_left_since(before)         # nor any Ray process started after the tree was taken
    finally:
        if driver.poll() is None:
            driver.kill()


def _is_ray(name: str, cmdline: list[str]) -> bool:
    """Ray's binaries, its workers (titled ray::...) and the Python scripts of its package (agents, monitors);
    not any command that merely mentions "ray" (ltray, /tmp/ltray-heavy.lock)."""
    return name in ("raylet", "gcs_server") or name.startswith("ray::") \
        or any(f"{os.sep}ray{os.sep}" in c for c in cmdline[:3])


def _new_ray_processes(before: set[int]) -> list[str]:
    """Ray's processes started since `before` that are not this process's own."""
    own = {p.pid for p in psutil.Process().children(recursive=True)}
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        if p.pid not in before and p.pid not in own and p.info["status"] != psutil.STATUS_ZOMBIE \
                and _is_ray(p.info["name"] or "", p.info["cmdline"] or []):
            found.append(f"{p.pid} {p.info['name']}")
    return found


def _ray_left_since(before: set[int], timeout: float = 20.0) -> list[str]:
    """Ray processes started since `before` still there after `timeout` seconds (polled: gone is gone)."""
    deadline = time.time() + timeout
    while (found := _new_ray_processes(before)) and time.time() < deadline:
        time.sleep(0.5)
    return found


def test_a_driver_stopped_while_its_ray_starts_leaves_no_process_behind(tmp_path):
    """SIGTERM as soon as the raylet exists, while ray.init may still run (Ray's native handler may abort the
    process then): the watchdog, started before ray.init, still stops everything Ray started."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    before = set(psutil.pids())
    driver = subprocess.Popen([*LONG, "--out", str(tmp_path / "run")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 90
        while "raylet" not in [p.name() for p in psutil.Process(driver.pid).children(recursive=True)]:
            assert time.time() < deadline and driver.poll() is None, "Ray did not start"
            time.sleep(0.05)
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=60)
        assert not _ray_left_since(before)
    finally:
        if driver.poll() is None:
            driver.kill()


ORPHANING_DRIVER = """
import os, subprocess, sys, time
logs = os.path.join(sys.argv[1], f"session_2026-12-08_00-00-00_000000_{os.getpid()}", "logs")
os.makedirs(logs)
# as a dying raylet leaves its agents: a process holding a session file whose parent is already gone
print(subprocess.run(["sh", "-c", f"sleep 600 >> {logs}/raylet.out 2>&1 & echo $!"], capture_output=True,
                     text=True).stdout.strip(), flush=True)
time.sleep(600)
"""


def test_the_watchdog_stops_an_orphan_of_the_drivers_ray_session(tmp_path):
    """A process the watchdog never saw as the driver's descendant (orphaned between two polls, as Ray's agents
    are when the raylet dies while starting them) is still stopped once the driver dies: it holds a file of the
    driver's Ray session open."""
    driver = subprocess.Popen([sys.executable, "-c", ORPHANING_DRIVER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        orphan = psutil.Process(int(driver.stdout.readline()))
        assert orphan.ppid() != driver.pid
        reaper = subprocess.Popen([sys.executable, "-m", "ltray.distributed.reaper", str(driver.pid)])
        time.sleep(1.0)                      # the watchdog is polling a live driver
        assert orphan.is_running() and reaper.poll() is None
        driver.kill()
        driver.wait()
        assert reaper.wait(timeout=30) == 0
        assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    finally:
        if driver.poll() is None:
            driver.kill()
        for p in psutil.process_iter(["cmdline"]):
            if p.info["cmdline"] == ["sleep", "600"] and str(tmp_path) in " ".join(f.path for f in p.open_files()):
                p.kill()

LISTENING = """
import json, psutil, ray
from ltray.distributed import engine
engine.start(1)
ray.get(ray.remote(lambda: 1).remote())              # a worker is up too
tree = psutil.Process().children(recursive=True)
pids = {p.pid for p in tree} | {psutil.Process().pid}
listening = sorted({(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                    if c.status == "LISTEN" and c.pid in pids})
print(json.dumps(listening))
ray.shutdown()
"""


def test_the_embedded_ray_listens_on_localhost_only_and_runs_no_dashboard():
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run([sys.executable, "-c", LISTENING], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    listening = json.loads(done.stdout.strip().splitlines()[-1])
    assert listening and {ip for ip, _ in listening} <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, listening
    assert 8265 not in {port for _, port in listening}        # no dashboard unless asked for


def pair_rows_or_die(data, *, device, marker, **job):
    """ltray.runs.pair_rows, but the first attempt at target 1001 is killed by pid, as by the OOM killer."""
    from ltray.runs import pair_rows

    if job["seed_target"] == 1001 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return pair_rows(data, device=device, **job)


def test_a_worker_killed_mid_fan_out_costs_no_row_and_doubles_none(ray_session, tmp_path):
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests/
    from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
    from ltray.distributed import engine
    from ltray.runs import pair_rows, train_source

    data = DataConfig("digits").load()
    job = dict(data_cfg=DataConfig("digits"), model_cfg=ModelConfig("mlp", 16), train_cfg=TrainConfig(epochs=2, lr=0.1),
               transfer_cfg=TransferConfig(T=2), methods=("naive", "fgmt"), run_id="x")
    source = train_source(data, job["data_cfg"], job["model_cfg"], job["train_cfg"], seed=0, progress=False)
    data_ref, ref = engine.put_data(data), engine.TrajectoryStore().put("s0", source)
    targets = [1000, 1001, 1002, 1003]
    got = engine.fan_out(lambda t: engine.submit(pair_rows_or_die, data_ref, engine.Resources(1, max_retries=2),
                                                 source=ref, seed_target=t, marker=str(tmp_path / "m"), **job),
                         targets, 2, progress=False)
    rows = pd.DataFrame([r for _, out in got for r in out.value])
    assert (tmp_path / "m").exists()                                  # the kill happened
    assert len(rows) == len(targets) * 2 * 3 and not rows.duplicated(["seed_target", "method", "t"]).any()
    clean = pd.DataFrame([r for t in targets for r in pair_rows(data, source=source, seed_target=t, **job)])
    key = ["seed_target", "method", "t"]
    pd.testing.assert_series_equal(rows.sort_values(key).val_acc.reset_index(drop=True),
                                   clean.sort_values(key).val_acc.reset_index(drop=True), atol=1e-4)


# `python -m ltray.ensemble`, held still once it has saved HOLD_AFTER units (the held process is what the test
# kills): the kill lands between units on every machine, however fast, with Ray tasks in flight on the Ray path.
HELD = """
import os, sys, time
from pathlib import Path
from ltray.cli import main
from ltray.ensemble import units

finished, saved = units.Units.finished, []

def finished_then_held(self, u, members, seconds):
    finished(self, u, members, seconds)
    saved.append(u)
    if len(saved) == int(os.environ["HOLD_AFTER"]):
        Path(os.environ["HOLD_MARKER"]).write_text(str(len(self.todo)))
        time.sleep(600)

units.Units.finished = finished_then_held
sys.exit(main(prog="python -m ltray.ensemble", command="ensemble"))
"""


def test_an_ensemble_killed_outright_and_rerun_matches_an_uninterrupted_run(tmp_path):
    """Killed after 3 units, once with every unit in the driver and once with every unit a Ray task: the rerun
    runs only the units not saved, and both end with the numbers of one uninterrupted run."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HOLD_AFTER="3")
    small = ["--width", "32", "--epochs", "4", "--T", "3", "--members", "2", "--repeats", "2",
             "--finetune-epochs", "0,1", "--num-cpus", "2", "--no-progress", "--no-plot"]
    ensemble = [sys.executable, "-m", "ltray.ensemble", *small]
    numbers = ["repeat", "kind", "method", "size", "epochs", "seeds", "test_acc", "test_nll", "test_ece",
               "disagreement"]
    done = subprocess.run([*ensemble, "--out", str(tmp_path / "clean")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    clean = pd.read_parquet(tmp_path / "clean" / "ensemble.parquet")[numbers]
    units = int(done.stdout.split("ran ")[1].split(" units")[0])
    for where in ("--no-ray", "--ray"):
        out, marker = tmp_path / where.strip("-"), tmp_path / f"{where.strip('-')}.held"
        before = set(psutil.pids())
        driver = subprocess.Popen([sys.executable, "-c", HELD, *small, where, "--out", str(out)],
                                  env=dict(env, HOLD_MARKER=str(marker)), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 240
            while not marker.exists():
                assert driver.poll() is None, driver.communicate()[1][-2000:]
                assert time.time() < deadline, "no 3 units saved"
                time.sleep(0.2)
        finally:
            driver.kill()
            driver.communicate(timeout=60)
        assert int(marker.read_text()) == units - 3 and not (out / "ensemble.parquet").exists()
        assert len(list((out / "members").glob("*.safetensors"))) == 3
        assert not _ray_left_since(before)             # the Ray path's raylet and workers went with the driver
        done = subprocess.run([*ensemble, where, "--out", str(out)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"3 of {units} units already in {out / 'members'}; running {units - 3}" in done.stdout
        pd.testing.assert_frame_equal(pd.read_parquet(out / "ensemble.parquet")[numbers], clean)
        assert not list((out / "members").glob(".*.tmp"))      # no half-written unit left
