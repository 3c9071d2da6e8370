"""Ray engine benchmark (issue 3, section 8): N transfers sequential in-process vs Ray with W workers, Ray's
per-task overhead, and peak memory with and without object-store sharing (the MNIST ensemble study is
experiments/ensemble_study.py).

    python benchmarks/bench_ray.py --part digits                       # ~1 min on 2 cores
    python benchmarks/bench_ray.py --part mnist --solver auto --T 10   # MNIST 2-MLP, width 4096
    python benchmarks/bench_ray.py --part memory --dataset mnist       # peak RSS / USS, shared vs copied

Each of these parts prints a JSON record (also appended to --out/results.jsonl). Numbers depend on what else
runs on the machine: the record carries the load average before and after.

Issue 13 (Ray that scales): ratios measured side by side in one run, --repeats times interleaved; every
measurement is one JSON line in --out/results.jsonl with the load average at that moment, and one readable line
on the terminal, then a summary line (kind "summary") with the ratio and its goal.

    --part concurrency   one transfer's task seconds alone vs two at once on a 2-CPU local Ray  (goal <= 1.15x)
    --part scaling       `ltray transfer --seeds 8` wall clock, --num-cpus 1 vs 2                (goal >= 1.7x)
    --part finetune      one epoch of Adam fine-tuning vs of SGD source training, in-process and
                         in a 1-CPU Ray task (2-MLP, --width 1024)                     (goal <= 1.25x in Ray)
    --part latency       fresh local Ray: ray.init, then submit -> first result, cold and warm  (goal <= 2 s)
    --part targets       `ltray transfer --seeds 8 --num-cpus 2 --targets-per-task K`, K = 1, 2, 4: transfers/min
    --part conv8         one FGMT transfer of Conv8 on CIFAR-shaped synthetic data on --device (no Ray)
    --part ensemble      the README's main job (`python -m ltray.ensemble`, digits): wall / units' seconds
                                                                                       (goal <= 1.5x)

Each takes --dataset digits (seconds, for smoke runs) or mnist (../shared/datasets); the solver defaults to auto
(the existing parts keep scipy).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster

import torch  # noqa: E402

from ltray.config import PRESETS, DataConfig, FinetuneConfig, TrainConfig, TransferConfig  # noqa: E402
from ltray.core.trajectory import Trajectory, load_trajectory, save_trajectory  # noqa: E402
from ltray.models import state_of  # noqa: E402
from ltray.results import config_hash  # noqa: E402
from ltray.runs import pair_rows, train_source  # noqa: E402
from ltray.training import finetune_epochs, train  # noqa: E402

MNIST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def setup(dataset: str, root: str | None, T: int, solver: str, source_epochs: int | None, out: Path, method: str,
          width: int | None = None):
    """Data, the source (trained once and cached in --out), and the keyword arguments of one transfer job."""
    data_cfg = DataConfig(dataset, root)
    preset = dict(PRESETS[dataset])
    if width is not None:
        preset["model"] = replace(preset["model"], width=width)
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
        local[threads] = [pair_rows(data, device="cpu", source=source, seed_target=s, **job) for s in seeds]
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


# ---- issue 13: ratios measured side by side, one JSON line per measurement ----------------------------------

def emit(args, record: dict, text: str) -> dict:
    """Append one measurement (with the machine's load average now) to --out/results.jsonl; print `text`."""
    record = dict(record, load=os.getloadavg(), time=time.strftime("%Y-%m-%d %H:%M:%S"), torch=torch.__version__,
                  cpus=os.cpu_count())
    with open(args.out / "results.jsonl", "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    print(f"{text}   [load {record['load'][0]:.2f}]", flush=True)
    return record


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summary(args, base: dict, ratio_name: str, num: list[float], den: list[float], goal: str) -> dict:
    """The summary line of a part: mean +- std of both sides over the repeats and the ratio of the means."""
    (m1, s1), (m2, s2) = mean_std(num), mean_std(den)
    record = dict(base, kind="summary", repeats=len(num), ratio_name=ratio_name, ratio=m1 / m2, num_mean=m1,
                  num_std=s1, den_mean=m2, den_std=s2, goal=goal)
    return emit(args, record, f"{base['part']}: {ratio_name} = {m1:.3f} +- {s1:.3f} / {m2:.3f} +- {s2:.3f} = "
                              f"{m1 / m2:.2f}x (goal {goal}; n = {len(num)})")


def part_concurrency(args) -> dict:
    """One FGMT transfer alone in a Ray task, then two at once, interleaved; the seconds measured inside the
    tasks. Every task transfers the same pair, so alone and paired tasks do identical work."""
    import ray

    from ltray.distributed import engine

    data, source, job, _ = setup(args.dataset, args.data_root, args.T, args.solver, args.source_epochs, args.out,
                                 args.method, args.width)
    base = dict(part="concurrency", dataset=args.dataset, width=int(source.meta["width"]), T=args.T,
                solver=args.solver, workers=args.workers)
    with engine.session(args.workers):
        data_ref, ref = engine.put_data(data), engine.TrajectoryStore().put("source", source)

        def at_once(k: int) -> list:
            return ray.get([engine.submit(pair_rows, data_ref, engine.Resources(1), source=ref, seed_target=1000,
                                          **job) for _ in range(k)])

        at_once(args.workers)  # warm-up: every worker imports ltray and loads the compiled solver kernels
        alone, pair = [], []
        for rep in range(args.repeats):
            (one,) = at_once(1)
            alone.append(one.seconds)
            emit(args, dict(base, kind="alone", repeat=rep, seconds=one.seconds, pids=[one.pid]),
                 f"concurrency rep {rep}: alone {one.seconds:.2f} s")
            two = at_once(2)
            pair.append(statistics.mean(o.seconds for o in two))
            emit(args, dict(base, kind="pair", repeat=rep, seconds=[o.seconds for o in two],
                            pids=[o.pid for o in two]),
                 f"concurrency rep {rep}: two at once {', '.join(f'{o.seconds:.2f}' for o in two)} s")
    return summary(args, base, "pair/alone task s", pair, alone, "<= 1.15x")


def ltray_transfer(args, source_path: Path, source, **flags) -> dict:
    """`ltray transfer` on the saved source as a subprocess: its wall clock and the seconds it prints."""
    cmd = [sys.executable, "-m", "ltray", "transfer", "--dataset", args.dataset, "--trajectory", str(source_path),
           "--width", str(source.meta["width"]), "--epochs", str(int(source.epochs[-1])), "--seeds", str(args.n),
           "--methods", args.method, "--T", str(args.T), "--solver", args.solver, "--no-progress"]
    cmd += ["--data-root", args.data_root] if args.data_root else []
    for name, value in flags.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        done = subprocess.run(cmd + ["--out", tmp], capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    # "wrote ... (N rows; wall W s, on Ray; the tasks' own seconds sum to S s)"
    printed = re.search(r"wall ([\d.]+) s, on Ray; the tasks' own seconds sum to ([\d.]+) s", done.stdout)
    return dict(wall_s=wall, command_wall_s=float(printed[1]), task_seconds_sum=float(printed[2]), **flags)


def saved_source(args):
    """The source trajectory `ltray transfer --trajectory` is given: setup's, cached in --out."""
    _, source, _, path = setup(args.dataset, args.data_root, args.T, args.solver, args.source_epochs, args.out,
                               args.method, args.width)
    return source, path


def part_scaling(args) -> dict:
    """`ltray transfer --seeds N` with 1 and with 2 CPUs, alternating: the whole command's wall clock."""
    source, path = saved_source(args)
    base = dict(part="scaling", dataset=args.dataset, width=int(source.meta["width"]), T=args.T, n=args.n,
                solver=args.solver)
    walls = {1: [], 2: []}
    for rep in range(args.repeats):
        for w in walls:
            run = ltray_transfer(args, path, source, num_cpus=w)
            walls[w].append(run["wall_s"])
            emit(args, dict(base, kind=f"W{w}", repeat=rep, **run),
                 f"scaling rep {rep}: W={w} wall {run['wall_s']:.1f} s (command's own {run['command_wall_s']:.1f} s,"
                 f" tasks' seconds {run['task_seconds_sum']:.1f} s)")
    return summary(args, base, "W1/W2 wall s", walls[1], walls[2], ">= 1.7x")


def part_targets(args) -> dict:
    """`ltray transfer --seeds N --num-cpus W --targets-per-task K` for K = 1, 2, 4: transfers per minute."""
    source, path = saved_source(args)
    base = dict(part="targets", dataset=args.dataset, width=int(source.meta["width"]), T=args.T, n=args.n,
                solver=args.solver, workers=args.workers)
    rates = {k: [] for k in (1, 2, 4)}
    for rep in range(args.repeats):
        for k in rates:
            run = ltray_transfer(args, path, source, num_cpus=args.workers, targets_per_task=k)
            rates[k].append(args.n / run["wall_s"] * 60)
            emit(args, dict(base, kind=f"K{k}", repeat=rep, per_minute=rates[k][-1], **run),
                 f"targets rep {rep}: K={k} {rates[k][-1]:.1f} transfers/min (wall {run['wall_s']:.1f} s)")
    line = ", ".join(f"K={k} {mean_std(r)[0]:.1f} +- {mean_std(r)[1]:.1f}" for k, r in rates.items())
    return emit(args, dict(base, kind="summary", per_minute={k: mean_std(r) for k, r in rates.items()}),
                f"targets: transfers/min {line} (n = {args.repeats})")


def one_epoch(data, *, device: str, kind: str, model_cfg, train_cfg: TrainConfig, seed: int = 0) -> float:
    """Seconds of one epoch from a fresh model: 'train' (SGD source training) or 'finetune' (Adam at a fixed lr),
    as the training loops count them (model building excluded)."""
    model = model_cfg.build(data, seed).to(device)
    if kind == "train":
        source = train(model, state_of(model), data.train, replace(train_cfg, epochs=1), seed, progress=False)
        return source.meta["train_seconds"]
    _, _, seconds = next(finetune_epochs(model, state_of(model), data.train, FinetuneConfig(epochs=1), seed))
    return seconds


def part_finetune(args) -> dict:
    """One epoch of fine-tuning vs one of source training, each in-process at 1 torch thread and in a 1-CPU Ray
    task, alternating."""
    import ray

    from ltray.distributed import engine

    data_cfg, preset = DataConfig(args.dataset, args.data_root), PRESETS[args.dataset]
    data, model_cfg = data_cfg.load(), replace(preset["model"], width=args.width)
    job = dict(model_cfg=model_cfg, train_cfg=preset["train"])
    base = dict(part="finetune", dataset=args.dataset, width=args.width)
    seconds = {(where, kind): [] for where in ("process", "ray") for kind in ("train", "finetune")}
    torch.set_num_threads(1)
    with engine.session(args.workers):
        data_ref = engine.put_data(data)
        run = {"process": lambda kind: one_epoch(data, device="cpu", kind=kind, **job),
               "ray": lambda kind: ray.get(engine.submit(one_epoch, data_ref, engine.Resources(1), kind=kind,
                                                         **job)).value}
        for where, kind in seconds:  # warm-up: first calls allocate and load what later ones reuse
            run[where](kind)
        for rep in range(args.repeats):
            for where, kind in seconds:
                seconds[where, kind].append(run[where](kind))
                emit(args, dict(base, kind=kind, where=where, repeat=rep, seconds=seconds[where, kind][-1]),
                     f"finetune rep {rep}: {kind} epoch {where} {seconds[where, kind][-1]:.3f} s")
    summary(args, dict(base, where="process"), "finetune/train epoch s, in-process", seconds["process", "finetune"],
            seconds["process", "train"], "-")
    return summary(args, dict(base, where="ray"), "finetune/train epoch s, in Ray", seconds["ray", "finetune"],
                   seconds["ray", "train"], "<= 1.25x")


def part_latency(args) -> dict:
    """A fresh local Ray each repeat: ray.init, then a fan-out of W tiny transfers twice (cold: workers start and
    import ltray; warm: they are up), timed from the first submit to the first and to the last result; then
    Ray's shutdown. Together: the fixed cost a Ray-backed command pays around its tasks."""
    from ltray.distributed import engine

    data, source, job, _ = setup(args.dataset, args.data_root, args.T, args.solver, args.source_epochs, args.out,
                                 args.method, args.width)
    base = dict(part="latency", dataset=args.dataset, width=int(source.meta["width"]), T=args.T,
                workers=args.workers)
    firsts = []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        with engine.session(args.workers):
            init = time.perf_counter() - t0
            t0 = time.perf_counter()
            data_ref, ref = engine.put_data(data), engine.TrajectoryStore().put("source", source)
            put = time.perf_counter() - t0
            submit = lambda s: engine.submit(pair_rows, data_ref, engine.Resources(1), source=ref,  # noqa: E731
                                             seed_target=s, **job)
            for fan in ("cold", "warm"):
                t0, first = time.perf_counter(), None
                for _ in engine.fan_out(submit, [1000 + k for k in range(args.workers)], args.workers, progress=False):
                    first = first or time.perf_counter() - t0
                last = time.perf_counter() - t0
                if fan == "cold":
                    firsts.append(put + first)
                emit(args, dict(base, kind=fan, repeat=rep, ray_init_s=init, put_s=put, first_result_s=first,
                                all_results_s=last),
                     f"latency rep {rep}: ray.init {init:.2f} s, put {put:.2f} s, {fan} fan-out: first result "
                     f"{first:.2f} s, all {args.workers} {last:.2f} s after the first submit")
            t0 = time.perf_counter()
        emit(args, dict(base, kind="shutdown", repeat=rep, shutdown_s=time.perf_counter() - t0),
             f"latency rep {rep}: ray.shutdown {time.perf_counter() - t0:.2f} s")
    m, s = mean_std(firsts)
    return emit(args, dict(base, kind="summary", first_result_after_init_s=(m, s), goal="<= 2 s"),
                f"latency: first result {m:.2f} +- {s:.2f} s after Ray is up (put + cold fan-out; goal <= 2 s;"
                f" n = {len(firsts)})")


def _bench_step():
    """bench_step.py beside this file, loaded by its path (the benchmarks are scripts, not a package), so that
    importing this one needs nothing on sys.path but the installed ltray."""
    import importlib.util

    if "bench_step" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_step", Path(__file__).with_name("bench_step.py"))
        sys.modules["bench_step"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["bench_step"])
    return sys.modules["bench_step"]


def part_conv8(args) -> dict:
    """One FGMT transfer of Conv8 on CIFAR-shaped synthetic data (bench_step's), on --device, --repeats times
    (the first includes loading kernels); the source is theta^0 -> theta^0 + noise, nothing is trained."""
    from ltray import spec_for, transfer

    bench_step = _bench_step()
    batch = PRESETS["cifar10"].get("batch_size", 256)
    data = bench_step.synthetic_cifar(max(batch * args.T, 2560), args.val)
    model, layout, source, target = bench_step.synthetic_source("conv8", args.width, args.device)
    cfg = TransferConfig(T=args.T, batch_size=batch, solver=args.solver)
    base = dict(part="conv8", device=args.device, width=args.width, T=args.T, B=batch, val=args.val,
                params=layout.size, solver=args.solver)
    walls = []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        result = transfer("fgmt", model, spec_for(model), source.linear(args.T), target, data, cfg, seed=1)
        walls.append(time.perf_counter() - t0)
        emit(args, dict(base, kind="transfer", repeat=rep, seconds=walls[-1], profile=dict(result.profile)),
             f"conv8 rep {rep}: FGMT T={args.T} on {args.device} {walls[-1]:.2f} s ("
             + ", ".join(f"{k} {v:.2f}" for k, v in result.profile.items()) + ")")
    warm = walls[1:] or walls
    m, s = mean_std(warm)
    return emit(args, dict(base, kind="summary", seconds=(m, s), repeats=len(warm)),
                f"conv8: {m:.2f} +- {s:.2f} s per transfer on {args.device} (after the first; n = {len(warm)})")


def part_ensemble(args) -> dict:
    """The README's main job, `python -m ltray.ensemble` with its defaults (digits), as a subprocess in a fresh
    folder: its wall clock, the wall it prints beside the sum of its units' own seconds, and where they ran."""
    ratios = []
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "ltray.ensemble", "--out", tmp, "--no-progress", "--no-plot"],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(f"python -m ltray.ensemble failed:\n{done.stderr[-3000:]}")
        printed = re.search(r"wall ([\d.]+) s for (\d+) units; their own seconds sum to ([\d.]+) s", done.stdout)
        where = re.search(r"ran \d+ units: (.*)", done.stdout)
        ratios.append(float(printed[1]) / float(printed[3]))
        emit(args, dict(part="ensemble", kind="default", repeat=rep, wall_s=wall, command_wall_s=float(printed[1]),
                        units=int(printed[2]), unit_seconds_sum=float(printed[3]), ran=where[1] if where else ""),
             f"ensemble rep {rep}: wall {wall:.1f} s (printed {printed[1]} s) for {printed[2]} units whose own "
             f"seconds sum to {printed[3]} s; ran {where[1] if where else '?'}")
    m, sd = mean_std(ratios)
    return emit(args, dict(part="ensemble", kind="summary", ratio=(m, sd), goal="<= 1.5x"),
                f"ensemble: printed wall / units' seconds = {m:.2f} +- {sd:.2f} (goal <= 1.5x; n = {len(ratios)})")


NEW_PARTS = {"concurrency": part_concurrency, "scaling": part_scaling, "finetune": part_finetune,
             "latency": part_latency, "targets": part_targets, "conv8": part_conv8,
             "ensemble": part_ensemble}
# --T and --width when not given (width None: the dataset's preset)
DEFAULTS = {"latency": (2, 64), "finetune": (10, 1024), "conv8": (10, 64)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="digits", choices=["digits", "mnist", "memory", *NEW_PARTS])
    p.add_argument("--dataset", default=None, help="digits or mnist (default: the part's)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", type=int, default=8, help="transfers (default 8)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers = CPUs of the local cluster (default 2)")
    p.add_argument("--method", default="fgmt")
    p.add_argument("--T", type=int, default=None, help="transfer steps (default 10; latency: 2)")
    p.add_argument("--width", type=int, default=None,
                   help="model width (default: the preset's; finetune 1024, latency 64, conv8 64)")
    p.add_argument("--solver", default=None, help="assignment solver (ltray.lap.SOLVERS; default scipy for the "
                                                  "parts digits, mnist, memory, else auto)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the issue-13 parts (default 3)")
    p.add_argument("--device", default="cpu", help="conv8: cpu or cuda")
    p.add_argument("--val", type=int, default=1000, help="conv8: validation images evaluated at each step")
    p.add_argument("--source-epochs", type=int, default=None, help="source training epochs (default: preset)")
    p.add_argument("--baseline-threads", default=None, help="torch threads of the in-process runs (default 1,W)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-ray"))
    p.add_argument("--memory-mode", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    T, width = DEFAULTS.get(args.part, (10, None))
    args.T = args.T or T
    args.width = args.width or width
    args.solver = args.solver or ("auto" if args.part in NEW_PARTS else "scipy")
    args.dataset = args.dataset or ("mnist" if args.part == "mnist" else "digits")
    if args.dataset == "mnist" and args.data_root is None:
        args.data_root = str(MNIST_ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.memory_mode:
        print(json.dumps(memory_mode(args)))
        return {}
    if args.part in NEW_PARTS:
        return NEW_PARTS[args.part](args)
    record = {"digits": part_transfers, "mnist": part_transfers, "memory": part_memory}[args.part](args)
    record.update(torch=torch.__version__, cpus=os.cpu_count(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
    line = json.dumps(record, default=lambda v: round(v, 4) if isinstance(v, float) else str(v))
    with open(args.out / "results.jsonl", "a") as f:
        f.write(line + "\n")
    print(json.dumps(record, indent=1, default=str))
    return record


if __name__ == "__main__":
    main()
