"""Memory of a transfer fan-out whose source is the size of a ResNet's trajectory (issue: scale past MNIST).

Writes a synthetic trajectory with the tensor layout of torchvision's resnet18 / resnet50 (random checkpoints,
nothing trained; streamed to disk a row at a time), then, on a local Ray with 2 CPUs, puts into the object store
what N tasks of a linear transfer need (the first and the last checkpoint, read lazily from the file) and runs N
tasks that read them. Records per case: the file's size, the driver's peak RSS, the bytes put in the object store,
each task's private memory (USS) after reading its source, and the time from the start of the fan-out to the
first task's result. `--whole` ships every checkpoint instead (what ltray did before), for comparison.

    python benchmarks/bench_memory.py --model resnet18 --epochs 60 --tasks 1 4 16
    python benchmarks/bench_memory.py --model resnet50 --epochs 90 --tasks 1 4 16
    python benchmarks/bench_memory.py --smoke                  # a 3-layer MLP, seconds (also a test)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

MIB = 2 ** 20


def synthetic_trajectory(model: str, epochs: int, path: Path, seed: int = 0) -> Path:
    """A trajectory file with `model`'s layout and epochs + 1 random checkpoints, written row by row."""
    import torch
    import torchvision

    from ltray.core.trajectory import Layout, Trajectory, save_trajectory

    net = torchvision.models.get_model(model, weights=None, num_classes=10) if model != "mlp" else \
        torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    layout = Layout.of(net.state_dict())

    class Rows:                                   # checkpoint e: random, made when written
        def __len__(self):
            return epochs + 1

        def __getitem__(self, e):
            return np.random.default_rng([seed, e]).standard_normal(layout.size, dtype=np.float32)

    save_trajectory(Trajectory(layout, Rows(), {"seed": seed, "model": model, "epochs": epochs}), path)
    return path


def read_source(data, *, device, source) -> dict:
    """A task's work on its source: touch every checkpoint it was given (as a transfer would), report memory."""
    import psutil

    total = float(sum(np.asarray(source.checkpoints[i], dtype=np.float64).sum() for i in range(len(source))))
    return {"uss_mib": psutil.Process().memory_full_info().uss / MIB, "rows": len(source), "sum": total}


def stored_mib(ref) -> tuple[float, int]:
    """The object's size in the object store, as Ray reports it, and on how many nodes it is held."""
    from ray.experimental import get_object_locations

    where = get_object_locations([ref])[ref]
    return where["object_size"] / MIB, len(where["node_ids"])


def measure(path: Path, tasks: int, whole: bool = False) -> dict:
    from ltray.core.trajectory import load_trajectory
    from ltray.data import load_dataset
    from ltray.distributed import engine

    source = load_trajectory(path, lazy=True)
    shipped = source.select(source.epochs if whole else [0, source.epochs[-1]])
    data_ref = engine.put_data(load_dataset("digits"))
    ref = engine.TrajectoryStore().put("source", shipped)
    t0 = time.perf_counter()                   # the fan-out starts: time to its first result
    first, outputs = None, []
    for _, out in engine.fan_out(lambda _: engine.submit(read_source, data_ref, engine.Resources(1), source=ref),
                                 range(tasks), 2, progress=False):
        first = first or time.perf_counter() - t0
        outputs.append(out.value)
    stored, copies = stored_mib(ref)
    return {"file_mib": path.stat().st_size / MIB, "tasks": tasks, "whole": whole,
            "object_store_mib": stored, "object_store_copies": copies,
            "shipped_mib": shipped.checkpoints.nbytes / MIB, "rows_shipped": len(shipped),
            "rows_read_by_driver": source.checkpoints.reads,
            "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "task_uss_mib_max": max(o["uss_mib"] for o in outputs), "first_result_s": first,
            "epochs": source.epochs[-1]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--whole", action="store_true", help="also ship every checkpoint (the old behaviour)")
    p.add_argument("--dir", default="runs/bench-memory", help="where the synthetic trajectory is written")
    p.add_argument("--out", default="benchmarks/results/bench_memory.jsonl")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.epochs, args.tasks = "mlp", 8, [1, 2]
    import ray

    path = Path(args.dir) / f"{args.model}_e{args.epochs}.safetensors"
    if not path.exists():
        synthetic_trajectory(args.model, args.epochs, path)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    records = []
    try:
        for whole in ([False, True] if args.whole else [False]):
            for n in args.tasks:
                records.append(dict(measure(path, n, whole), model=args.model, load=os.getloadavg()[0]))
                print(json.dumps(records[-1]), flush=True)
    finally:
        if started:
            ray.shutdown()
    if not args.smoke:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return records


if __name__ == "__main__":
    main()
