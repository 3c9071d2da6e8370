"""Ray at the edge of ltray: an embedded or joined cluster, a trajectory store, and a bounded fan-out.

The core modules never import ray; this module runs their pure functions as Ray tasks:

    driver --ray.put once--> data (numpy splits, read zero-copy by every worker on the node)
    driver --TrajectoryStore: ray.put / submits the training tasks--> source trajectories (driver-owned)
    tasks: fn(data, device=..., source=<Trajectory, zero-copy>, **kwargs) with num_cpus / num_gpus each,
           at most `max_in_flight` submitted and unfinished; results stream back through ray.wait.

Trajectories and data travel as float32/int64 numpy arrays: Ray hands numpy to workers as read-only views
of the node's shared object store (no copy, no unpickling), where torch tensors would be pickled and copied
into every worker.  Tasks only read these arrays (the core builds new tensors from them).
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import ray
import torch
from ray.exceptions import RayTaskError
from tqdm.auto import tqdm

from ..core.trajectory import Trajectory
from ..data import DataBundle, Split
from ..errors import LtrayError

Item = TypeVar("Item")
DEFAULT_GPU_SHARE = 0.25  # on a GPU cluster, four small-model transfers share one GPU unless told otherwise


# ---- cluster ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resources:
    """What one task asks of the cluster. num_gpus may be a fraction (< 1) so several tasks share a GPU."""
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3          # re-runs after the worker or its node dies (never after an exception in ltray)

    def __post_init__(self):
        if not self.num_cpus > 0:
            raise LtrayError(f"CPUs per task must be > 0, got {self.num_cpus}")
        if self.num_gpus < 0 or (self.num_gpus > 1 and self.num_gpus != int(self.num_gpus)):
            raise LtrayError(f"GPUs per task must be a fraction in [0, 1] or a whole number, got {self.num_gpus}")
        if self.max_retries < 0:
            raise LtrayError(f"--max-retries must be >= 0, got {self.max_retries}")

    def options(self) -> dict:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_retries": self.max_retries}


_reaper = None   # the watchdog of the embedded Ray this process started (ltray.distributed.reaper)


def start(num_cpus: int | None = None, address: str | None = None) -> bool:
    """Join the cluster at `address` (or at RAY_ADDRESS, as Ray does), or start an embedded local Ray using
    `num_cpus` cores (default: all). Returns True when this call connected (the caller then shuts down);
    False if Ray was already running."""
    import signal
    import threading

    global _reaper
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and num_cpus:
        raise LtrayError("--num-cpus caps the embedded local Ray; a cluster joined with --address keeps its own")
    main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None   # ray.init installs its own
    try:
        if address:
            ray.init(address=address, logging_level="warning")
        else:
            # The embedded Ray serves this process alone: its servers listen on the loopback interface only. Ray
            # binds them to the node's address, which it takes to be 127.0.0.1 where clusters are off (its rule
            # on macOS and Windows): off for this process's own Ray while it starts, never for a joined cluster.
            from ray._private import ray_constants

            from .reaper import watch

            _reaper = watch()   # the embedded Ray is ours: it goes when this process goes, however it ends
            clusters = ray_constants.ENABLE_RAY_CLUSTER
            ray_constants.ENABLE_RAY_CLUSTER = False
            try:
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="warning")
            finally:
                ray_constants.ENABLE_RAY_CLUSTER = clusters
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"join the Ray cluster at {address}" if address else "start a local Ray"
        raise LtrayError(f"cannot {where}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    finally:
        if main_thread and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


def stop() -> None:
    """Shut down the Ray this process started, and its watchdog."""
    global _reaper
    ray.shutdown()
    if _reaper is not None:
        _reaper.terminate()
        _reaper = None


@contextmanager
def session(num_cpus: int | None = None, address: str | None = None):
    """Ray for the duration of a command; shut down afterwards only if this command started it."""
    started = start(num_cpus, address)
    try:
        yield
    finally:
        if started:
            stop()


def _alive_nodes() -> list[dict[str, float]]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def resolve(res: Resources, device: str | None = None, gpus_given: bool = True) -> Resources:
    """Fill in the automatic GPU share (`device` cpu forces 0) and check that some node can run the task.

    Raises a one-line LtrayError, before anything is submitted, when no node has the CPUs and GPUs a task
    asks for (Ray would otherwise leave it pending forever)."""
    nodes = _alive_nodes()
    has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    if device == "cpu":
        res = replace(res, num_gpus=0.0)
    elif not gpus_given:
        res = replace(res, num_gpus=DEFAULT_GPU_SHARE if has_gpu else 0.0)
    if device is not None and device.startswith("cuda") and res.num_gpus == 0:
        raise LtrayError("--device cuda needs --gpus-per-task > 0 in a Ray task"
                         + ("" if has_gpu else " and a cluster with GPUs (this one has none)"))
    if not any(n.get("CPU", 0) >= res.num_cpus and n.get("GPU", 0) >= res.num_gpus for n in nodes):
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        raise LtrayError(f"no node can run a task needing {res.num_cpus:g} CPU and {res.num_gpus:g} GPU "
                         f"(nodes: {have}); lower --cpus-per-task/--gpus-per-task or add nodes")
    return res


def task_slots(res: Resources) -> int:
    """How many such tasks the cluster runs at once (summed over nodes)."""
    total = 0
    for n in _alive_nodes():
        k = int(n.get("CPU", 0) // res.num_cpus)
        if res.num_gpus:
            k = min(k, int(round(n.get("GPU", 0) / res.num_gpus, 6)))
        total += k
    return max(total, 1)


# ---- data and trajectories in the object store -------------------------------------------------------------

def _split_to_numpy(s: Split) -> Split:
    return Split(s.x.cpu().numpy(), s.y.cpu().numpy())  # numpy inside on purpose: the zero-copy wire form


def as_numpy(data: DataBundle) -> DataBundle:
    """The wire form of a dataset: the same bundle with numpy splits (`as_tensors` undoes it, zero-copy)."""
    return replace(data, train=_split_to_numpy(data.train), val=_split_to_numpy(data.val),
                   test=_split_to_numpy(data.test))


def put_data(data: DataBundle) -> ray.ObjectRef:
    """Put the dataset in the object store once; tasks get it back as tensors viewing shared memory."""
    return ray.put(as_numpy(data))


def as_tensors(data: DataBundle) -> DataBundle:
    """Splits as torch tensors viewing the (read-only) numpy arrays; a bundle of tensors passes unchanged."""
    def split(s: Split) -> Split:
        return s if isinstance(s.x, torch.Tensor) else Split(torch.from_numpy(s.x), torch.from_numpy(s.y))
    return replace(data, train=split(data.train), val=split(data.val), test=split(data.test))


class TrajectoryStore:
    """Source trajectories in the object store, by name, owned by the driver that put them (ray.put, or the
    training task it submitted). An object shares the fate of its owner (Ray's "anti-pattern: returning ray.put
    refs from a task or actor"): owned by the command's own process, a trajectory lives exactly as long as the
    run, and no actor or node can take it down on its own. Tasks are given the refs and read the arrays
    zero-copy."""

    def __init__(self):
        self._refs: dict[str, ray.ObjectRef] = {}

    def put(self, name: str, trajectory: Trajectory) -> ray.ObjectRef:
        self._refs[name] = ray.put(trajectory)
        return self._refs[name]

    def train(self, name: str, data: ray.ObjectRef, resources: Resources, **job) -> ray.ObjectRef:
        """Train a source in a task (`ltray.runs.train_source(**job)`); tasks given the ref wait for it."""
        from ..runs import train_source

        self._refs[name] = submit(train_source, data, resources, timed=False, progress=False, **job)
        return self._refs[name]


# ---- tasks -----------------------------------------------------------------------------------------------

@dataclass
class TaskOutput:
    value: Any
    seconds: float      # wall time inside the task (excluding Ray's scheduling and transfers)
    node_id: str
    pid: int


def _limit_thread_pools(threads: int) -> None:
    """Every native thread pool in the worker (OpenBLAS/MKL under numpy and scipy, OpenMP) sized to the task's
    CPUs, not to the machine: two one-CPU tasks must not run four threads on two cores."""
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS now, so that the limit reaches it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)


def prepare_worker() -> str:
    """Threads = the CPUs Ray gave this task (workers are reused, so set it every time); the device follows
    the GPUs Ray assigned. Returns the device."""
    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)))
    torch.set_num_threads(cpus)
    _limit_thread_pools(cpus)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


@ray.remote
def _run(fn: Callable, data: DataBundle, **kwargs):
    device = prepare_worker()
    return fn(as_tensors(data), device=device, **kwargs)


@ray.remote
def _run_timed(fn: Callable, data: DataBundle, **kwargs) -> TaskOutput:
    device = prepare_worker()
    t0 = time.perf_counter()
    value = fn(as_tensors(data), device=device, **kwargs)
    return TaskOutput(value, time.perf_counter() - t0, ray.get_runtime_context().get_node_id(), os.getpid())


def submit(fn: Callable, data: ray.ObjectRef, resources: Resources, timed: bool = True, **kwargs) -> ray.ObjectRef:
    """Run fn(data, device=..., **kwargs) as a task. ObjectRefs among kwargs (a source trajectory) are
    resolved by Ray before the task starts, zero-copy for numpy. `fn` must be importable on the workers."""
    remote = _run_timed if timed else _run
    return remote.options(**resources.options()).remote(fn, data, **kwargs)


def get(ref: ray.ObjectRef) -> Any:
    """ray.get, with an LtrayError raised inside a task (or a task it depended on) re-raised as itself."""
    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = e
        while isinstance(cause, RayTaskError) and getattr(cause, "cause", None) is not None:
            cause = cause.cause
        if isinstance(cause, LtrayError):
            raise LtrayError(str(cause).strip().splitlines()[-1]) from None
        raise


def fan_out(submit_one: Callable[[Item], ray.ObjectRef], items: Sequence[Item], max_in_flight: int,
            desc: str = "tasks", progress: bool = True) -> Iterator[tuple[Item, Any]]:
    """Submit one task per item, never more than `max_in_flight` unfinished, and yield (item, result) in the
    order tasks finish, behind a progress bar. On an error (or when the caller stops early) the tasks still
    pending are cancelled."""
    if max_in_flight < 1:
        raise LtrayError(f"max_in_flight must be >= 1, got {max_in_flight}")
    pending: dict[ray.ObjectRef, Item] = {}
    queue = iter(items)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="task")
    try:
        while True:
            for item in queue:
                pending[submit_one(item)] = item
                if len(pending) >= max_in_flight:
                    break
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                result = get(ref)
                bar.update()
                yield item, result
    finally:
        bar.close()
        for ref in pending:
            ray.cancel(ref)
