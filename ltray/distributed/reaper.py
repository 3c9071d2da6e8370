"""Leave no process behind: a watchdog for the embedded local Ray of one command.

`ray.init()` starts Ray's processes (GCS, raylet, dashboard and runtime-env agents, log monitor) as children of
the driver. `ray.shutdown()` stops them when the command ends normally or on Ctrl-C, but a driver killed by
SIGKILL (or the OOM killer) never runs it, and the agents then outlive it. `watch()` starts this module as a
separate process in its own session: it waits for the driver to die, then terminates the processes Ray started
for it (and whatever those started since, such as workers), SIGKILLing any that linger.

    python -m ltray.distributed.reaper DRIVER_PID PID:CREATE_TIME ...
"""
from __future__ import annotations

import os
import subprocess
import sys
import time


def watch(driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for the processes now running under `driver_pid` (default: this process)."""
    import psutil

    driver = psutil.Process(driver_pid or os.getpid())
    children = [f"{p.pid}:{p.create_time()!r}" for p in driver.children(recursive=True)]
    return subprocess.Popen([sys.executable, "-m", "ltray.distributed.reaper", str(driver.pid), *children],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _processes(specs: list[str]):
    """The processes named PID:CREATE_TIME that still exist and are the same processes (pids get reused)."""
    import psutil

    out = []
    for spec in specs:
        pid, created = spec.split(":", 1)
        try:
            p = psutil.Process(int(pid))
            if abs(p.create_time() - float(created)) < 1e-3:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(driver_pid: int, specs: list[str], poll: float = 0.5, grace: float = 3.0) -> int:
    """Wait for the driver to exit, then stop its Ray processes and their descendants. Returns how many were
    still alive when the driver died."""
    import psutil

    while _running(driver_pid):
        time.sleep(poll)
    alive = _processes(specs)
    for p in list(alive):
        try:
            alive += p.children(recursive=True)      # workers the raylet started after the watch began
        except psutil.Error:
            pass
    alive = list({p.pid: p for p in alive}.values())
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, lingering = psutil.wait_procs(alive, timeout=grace)
    for p in lingering:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(alive)


if __name__ == "__main__":
    reap(int(sys.argv[1]), sys.argv[2:])
