"""Leave no process behind: a watchdog for the embedded local Ray of one command.

`ray.init()` starts Ray's processes (GCS, raylet, dashboard and runtime-env agents, log monitor) as children of
the driver. `ray.shutdown()` stops them when the command ends normally or on Ctrl-C, but a driver killed by
SIGKILL (or the OOM killer) never runs it, and the agents then outlive it. `watch()` starts this module as a
separate process in its own session, before `ray.init()` (a driver can die while Ray starts): it records the
driver's children that are Ray's and whatever they start (workers, agents), waits for the driver to die, then
terminates them, SIGKILLing any that linger. Parentage alone misses a process orphaned between two polls (the
raylet can die and leave its just-started agents to init), so when the driver is gone the watchdog also stops
every process that holds a file of the driver's Ray session open: Ray names the session's folder after the
driver's pid (session_<date>_<time>_<pid>), and everything the raylet starts inherits its raylet.out/.err.
It exits by itself once they are all gone (after a normal shutdown), and `engine.stop()` ends it at once.

    python -m ltray.distributed.reaper DRIVER_PID [PID:CREATE_TIME ...]
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time


def watch(processes=()) -> subprocess.Popen:
    """Start the watchdog of this process's Ray children and of `processes` (PID:CREATE_TIME strings)."""
    return subprocess.Popen([sys.executable, "-m", "ltray.distributed.reaper", str(os.getpid()), *sorted(processes)],
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


def _rays(driver) -> dict:
    """The driver's children that belong to Ray (its binaries and scripts live in the ray package)."""
    import psutil

    out = {}
    try:
        for c in driver.children():
            try:
                if any("ray" in part for part in c.cmdline()[:2]) and c.pid != os.getpid():
                    out[c.pid] = c
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return out


def _of_session(driver_pid: int, started: float) -> dict:
    """Processes started since `started` that hold open a file under the Ray session folder of `driver_pid`, the
    driver itself aside (it holds its session's logs while it lives)."""
    import psutil

    folder = re.compile(rf"{re.escape(os.sep)}session_[^{re.escape(os.sep)}]*_{driver_pid}{re.escape(os.sep)}")
    out = {}
    for p in psutil.process_iter(["create_time"]):
        if p.pid in (os.getpid(), driver_pid) or (p.info["create_time"] or 0) < started:
            continue
        try:
            if any(folder.search(f.path) for f in p.open_files()):
                out[p.pid] = p
        except psutil.Error:
            pass
    return out


def _stop(processes: list, grace: float) -> None:
    """SIGTERM, then SIGKILL whatever is still there after `grace` seconds."""
    import psutil

    for p in processes:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, lingering = psutil.wait_procs(processes, timeout=grace)
    for p in lingering:
        try:
            p.kill()
        except psutil.Error:
            pass


def reap(driver_pid: int, specs: list[str], poll: float = 0.5, grace: float = 3.0) -> int:
    """Watch the driver's Ray children, the given processes and whatever they start (Ray's agents and workers
    appear after ray.init returns; Ray's own clean-up may kill their parent first, so they are recorded while it
    lives) until the driver exits or every watched process is gone, then stop whatever is left of them and of
    the driver's Ray session. Returns how many processes were stopped."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
        started = driver.create_time()
    except psutil.Error:
        return 0
    watched, seen = {p.pid: p for p in _processes(specs)}, bool(specs)
    while _running(driver_pid):
        watched.update(_rays(driver))
        for p in list(watched.values()):
            if not p.is_running():
                del watched[p.pid]
                continue
            try:
                watched.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:   # a child came or went while we looked: look again at the next poll
                pass
        seen = seen or bool(watched)
        if seen and not watched:   # Ray shut down; an agent it orphaned on the way is still stopped below
            break
        time.sleep(poll)
    stopped = set()
    for _ in range(5):   # a process being started as the first ones are stopped is found by the next look
        alive = {**{pid: p for pid, p in watched.items() if p.is_running()}, **_of_session(driver_pid, started)}
        if not alive:
            break
        _stop(list(alive.values()), grace)
        stopped |= set(alive)
    return len(stopped)


if __name__ == "__main__":
    reap(int(sys.argv[1]), sys.argv[2:])
