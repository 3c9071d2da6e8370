"""Faults a long run meets: a driver killed outright or interrupted leaves no process behind (checked by pid)."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

# a run long enough to be interrupted: repeated digits ensembles, every unit a Ray task
LONG = [sys.executable, "-m", "ltray.ensemble", "--width", "64", "--epochs", "30", "--repeats", "20", "--members", "2",
        "--finetune-epochs", "0,5", "--num-cpus", "2", "--no-progress", "--no-plot"]


def _ray_started(driver: subprocess.Popen, timeout: float = 90.0) -> list[psutil.Process]:
    """The driver's descendants once its embedded Ray runs tasks (a raylet and at least one worker)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        tree = psutil.Process(driver.pid).children(recursive=True)
        names = [p.name() for p in tree if p.is_running()]
        if "raylet" in names and any(n.startswith("ray::") and "Agent" not in n for n in names):
            return tree
        time.sleep(0.5)
    pytest.fail("the embedded Ray did not start")


def _left_behind(tree: list[psutil.Process], timeout: float = 20.0) -> list[str]:
    gone, alive = psutil.wait_procs(tree, timeout=timeout)
    return [f"{p.pid} {p.name()}" for p in alive]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT", "SIGTERM"])
def test_a_stopped_driver_leaves_no_process_behind(tmp_path, how):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    driver = subprocess.Popen([*LONG, "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    try:
        tree = _ray_started(driver)
        driver.send_signal(getattr(signal, how))
        _, err = driver.communicate(timeout=60)
        if how != "SIGKILL":        # unwound: the one line, and the exit status of an interrupted command
            assert driver.returncode == 130 and "ltray ensemble: interrupted" in err, err[-2000:]
        assert not _left_behind(tree)
    finally:
        if driver.poll() is None:
            driver.kill()


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
    assert listening and {ip for ip, _ in listening} <= {"127.0.0.1", "::1"}, listening
    assert 8265 not in {port for _, port in listening}        # no dashboard unless asked for
