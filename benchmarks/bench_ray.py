"""Ray engine benchmark (issue 3, section 8): N transfers sequential in-process vs Ray with W workers, Ray's
per-task overhead, and peak memory with and without object-store sharing (the MNIST ensemble study is
experiments/ensemble_study.py).

    python benchmarks/bench_ray.py --part digits                       # ~1 min on 2 cores
    python benchmarks/bench_ray.py --part mnist --solver auto --T 10   # MNIST 2-MLP, width 4096
    python benchmarks/bench_ray.py --part memory --dataset mnist       # peak RSS / USS, shared vs copied

Each part prints a JSON record (also appended to --out/results.jsonl). Numbers depend on what else runs on
the machine: the record carries the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster

import torch  # noqa: E402

from ltray.config import PRESETS, DataConfig, TransferConfig  # noqa: E402
from ltray.core.trajectory import Trajectory, load_trajectory, save_trajectory  # noqa: E402
from ltray.results import config_hash  # noqa: E402
from ltray.runs import pair_rows, train_source  # noqa: E402

MNIST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def setup(dataset: str, root: str | None, T: int, solver: str, source_epochs: int | None, out: Path, method: str):
    """Data, the source (trained once and cached in --out), and the keyword arguments of one transfer job."""
    data_cfg = DataConfig(dataset, root)
    preset = PRESETS[dataset]
    train_cfg = preset["train"] if source_epochs is None else type(preset["train"])(
        **{**preset["train"].__dict__, "epochs": source_epochs})
    data = data_cfg.load()
    path = out / f"source-{config_hash(data_cfg, preset['model'], train_cfg)}.safetensors"
    if path.exists():
        source = load_trajectory(path)
    else:  # one thread: on a shared machine, torch's multi-threading can be several times slower
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        source = train_source(data, data_cfg, preset["model"], train_cfg, seed=0, progress=True)
        torch.set_num_threads(threads)
        save_trajectory(source, path)
    transfer_cfg = TransferConfig(T=T, solver=solver, batch_size=preset.get("batch_size", 128))
    job = dict(data_cfg=data_cfg, model_cfg=preset["model"], train_cfg=train_cfg, transfer_cfg=transfer_cfg,
               methods=(method,), run_id=config_hash(data_cfg, transfer_cfg))
    return data, source, job, path


def measured(fn):
    """Wrap a job so that its task also reports the worker's peak RSS and private memory (USS)."""
    def job(data, **kwargs):
        import psutil  # shipped with Ray

        value = fn(data, **kwargs)
        return dict(value=value, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                    uss=psutil.Process().memory_full_info().uss, pid=os.getpid())
    return job


def copied_pair_rows(data, *, checkpoints: torch.Tensor, layout, meta, **kwargs):
    """The no-sharing path: the trajectory arrives as a torch tensor, pickled and copied into each task."""
    return pair_rows(data, source=Trajectory(layout, checkpoints.numpy(), meta), **kwargs)


def noop(data, *, device):
    return None


def part_transfers(args) -> dict:
    import ray

    from ltray.distributed import engine

    data, source, job, _ = setup(args.dataset, args.data_root, args.T, args.solver, args.source_epochs, args.out,
                                 args.method)
    seeds = [1000 + k for k in range(args.n)]
    record = dict(part="transfers", dataset=args.dataset, width=int(source.meta["width"]), n=args.n,
                  workers=args.workers, method=args.method, T=args.T, solver=args.solver, load_before=os.getloadavg())

    # The in-process baseline, with torch using 1 thread and using every core the Ray run gets: small models
    # can be slower multi-threaded (more so on a busy machine), so the speed-up is taken against the faster.
    baseline = sorted({int(t) for t in args.baseline_threads.split(",")}) if args.baseline_threads else \
        sorted({1, args.workers})
    local = {}
    for threads in baseline:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        local[threads] = [engine.run_local(pair_rows, data, source=source, seed_target=s, **job) for s in seeds]
        record[f"sequential_{threads}thread_s"] = time.perf_counter() - t0
    record["sequential_s"] = min(record[f"sequential_{t}thread_s"] for t in baseline)

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="warning")
    record["ray_init_s"] = time.perf_counter() - t0
    data_ref = engine.put_data(data)
    t0 = time.perf_counter()  # cold start: worker processes import torch and ltray
    ray.get([engine.submit(noop, data_ref, engine.Resources(1)) for _ in range(args.workers)])
    record["worker_start_s"] = time.perf_counter() - t0
    ref = engine.TrajectoryStore().put("source", source)
    t0 = time.perf_counter()
    done = dict(engine.fan_out(lambda s: engine.submit(pair_rows, data_ref, engine.Resources(1), source=ref,
                                                       seed_target=s, **job), seeds, 2 * args.workers, progress=True))
    record["ray_s"] = time.perf_counter() - t0
    task_seconds = [done[s].seconds for s in seeds]
    record["task_s_mean"] = statistics.mean(task_seconds)
    # tasks kept busy at once (sum of task wall times / fan-out wall time): the speed-up over running these same
    # tasks one after another under the same conditions; equals W when the workers never wait
    record["tasks_running_at_once"] = sum(task_seconds) / record["ray_s"]
    record["speedup_warm"] = record["sequential_s"] / record["ray_s"]
    for threads in baseline:
        record[f"speedup_warm_vs_{threads}thread"] = record[f"sequential_{threads}thread_s"] / record["ray_s"]
    record["speedup_cold"] = record["sequential_s"] / (record["ray_s"] + record["ray_init_s"] + record["worker_start_s"])
    # overhead per task: worker-seconds the fan-out took beyond the tasks' own wall time (scheduling, argument
    # resolution, result transfer, idle tail), divided by N
    record["overhead_per_task_s"] = (record["ray_s"] * args.workers - sum(task_seconds)) / args.n
    t0 = time.perf_counter()
    for _ in range(20):  # round trip of an empty task on a warm worker (sequential on purpose: it is latency)
        ray.get(engine.submit(noop, data_ref, engine.Resources(1)))
    record["empty_task_roundtrip_ms"] = (time.perf_counter() - t0) / 20 * 1e3
    ray.shutdown()
    acc = lambda rows: [r["val_acc"] for r in rows]  # noqa: E731
    # Ray tasks run torch with 1 thread; GMT/FGMT can differ at another thread count (float summation order
    # changes a permutation, and the trajectory follows it), so equality is checked against each baseline
    for threads, runs in local.items():
        record[f"max_val_acc_diff_vs_{threads}thread"] = max(
            max(abs(a - b) for a, b in zip(acc(done[s].value), acc(rows))) for s, rows in zip(seeds, runs))
    record["final_val_acc_mean"] = statistics.mean(done[s].value[-1]["val_acc"] for s in seeds)
    record["load_after"] = os.getloadavg()
    return record


def part_memory(args) -> dict:
    """Each mode in a fresh driver process (clean peaks): `--memory-mode shared|copied`."""
    out = {"part": "memory", "dataset": args.dataset, "n": args.n, "workers": args.workers, "T": args.T}
    for mode in ("shared", "copied"):
        cmd = [sys.executable, __file__, "--memory-mode", mode, *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def memory_mode(args) -> dict:
    import ray

    from ltray.distributed import engine

    data, source, job, _ = setup(args.dataset, args.data_root, args.T, args.solver, args.source_epochs, args.out,
                                 args.method)
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="warning")
    data_ref = engine.put_data(data)
    seeds = [1000 + k for k in range(args.n)]
    if args.memory_mode == "shared":
        ref = engine.TrajectoryStore().put("source", source)
        submit = lambda s: engine.submit(measured(pair_rows), data_ref, engine.Resources(1), source=ref,  # noqa: E731
                                         seed_target=s, **job)
    else:
        tensor = torch.from_numpy(source.checkpoints.copy())
        submit = lambda s: engine.submit(measured(copied_pair_rows), data_ref, engine.Resources(1),  # noqa: E731
                                         checkpoints=tensor, layout=source.layout, meta=source.meta,
                                         seed_target=s, **job)
    t0 = time.perf_counter()
    results = [r for _, r in engine.fan_out(submit, seeds, 2 * args.workers, progress=False)]
    seconds = time.perf_counter() - t0
    workers = {}
    for r in results:
        w = workers.setdefault(r.value["pid"], {"peak_rss": 0, "uss": 0})
        w["peak_rss"] = max(w["peak_rss"], r.value["peak_rss"])
        w["uss"] = max(w["uss"], r.value["uss"])
    mib = 2 ** 20
    record = dict(mode=args.memory_mode, trajectory_mib=source.checkpoints.nbytes / mib, seconds=seconds,
                  driver_peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / mib,
                  worker_peak_rss_mib=max(w["peak_rss"] for w in workers.values()) / mib,
                  worker_uss_mib=max(w["uss"] for w in workers.values()) / mib,
                  workers_uss_total_mib=sum(w["uss"] for w in workers.values()) / mib, worker_processes=len(workers))
    ray.shutdown()
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="digits", choices=["digits", "mnist", "memory"])
    p.add_argument("--dataset", default=None, help="digits or mnist (default: the part's)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", type=int, default=8, help="transfers (default 8)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers = CPUs of the local cluster (default 2)")
    p.add_argument("--method", default="fgmt")
    p.add_argument("--T", type=int, default=10)
    p.add_argument("--solver", default="scipy", help="assignment solver (ltray.lap.SOLVERS)")
    p.add_argument("--source-epochs", type=int, default=None, help="source training epochs (default: preset)")
    p.add_argument("--baseline-threads", default=None, help="torch threads of the in-process runs (default 1,W)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-ray"))
    p.add_argument("--memory-mode", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.dataset = args.dataset or ("mnist" if args.part == "mnist" else "digits")
    if args.dataset == "mnist" and args.data_root is None:
        args.data_root = str(MNIST_ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.memory_mode:
        print(json.dumps(memory_mode(args)))
        return
    record = {"digits": part_transfers, "mnist": part_transfers, "memory": part_memory}[args.part](args)
    record.update(torch=torch.__version__, cpus=os.cpu_count(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
    line = json.dumps(record, default=lambda v: round(v, 4) if isinstance(v, float) else str(v))
    with open(args.out / "results.jsonl", "a") as f:
        f.write(line + "\n")
    print(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
