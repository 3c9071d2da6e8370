"""Ray Tune sweeps over a transfer's hyper-parameters: `ltray sweep`.

Tune searches T, the gradient batch size B, the lambda schedule and the method (plus the fine-tuning lr
when the objective fine-tunes) for one source trajectory and one target initialisation, so trials differ
only in their configuration. The source is trained once in a Ray task (or loaded with --trajectory) and
handed to every trial through the object store (tune.with_parameters), zero-copy. Results: one row per
trial in DIR/sweep.parquet; Tune's own state lives in DIR/tune (an absolute storage_path, since Tune moves
trials into their own working directories) or under --storage (s3://, gs:// or a shared mount: multi-node
sweeps need storage every node reaches), so `--resume` continues an interrupted sweep (Tuner.restore).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from ..config import SWEEP_OBJECTIVES
from ..errors import LtrayError

EXPERIMENT = "sweep"  # Tune's experiment name under the storage path

# objective -> what it measures (all on the validation split, in %; higher is better)

@dataclass(frozen=True)
class SearchSpace:
    """Choices per parameter (sampled uniformly); finetune_lr is a log-uniform (low, high) range."""
    T: tuple[int, ...] = (5, 10, 20)
    batch_size: tuple[int, ...] = (64, 128, 256)
    schedule: tuple[str, ...] = ("uniform", "cosine")
    method: tuple[str, ...] = ("gmt", "fgmt")
    finetune_lr: tuple[float, float] = (1e-5, 1e-3)

    def __post_init__(self):
        from ..config import METHODS, SCHEDULES

        for f in fields(self):
            values = getattr(self, f.name)
            if not isinstance(values, tuple) or not values:
                raise LtrayError(f"search space: {f.name} needs at least one value, got {values!r}")
        for name in ("T", "batch_size"):
            bad = [v for v in getattr(self, name) if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad:
                raise LtrayError(f"search space: {name} takes integers >= 1, got {bad[0]!r}")
        for name, known in (("schedule", SCHEDULES), ("method", METHODS)):
            bad = [v for v in getattr(self, name) if v not in known]
            if bad:
                raise LtrayError(f"search space: unknown {name} {bad[0]!r}; known: {', '.join(known)}")
        lr = self.finetune_lr
        if len(lr) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lr) \
                or not 0 < lr[0] <= lr[1]:
            raise LtrayError(f"search space: finetune_lr is a range [low, high] with 0 < low <= high, got {list(lr)}")

    @classmethod
    def parse(cls, file: str | None = None, **flags: str | None) -> "SearchSpace":
        """From a small JSON/YAML file ({"T": [5, 10], "method": ["fgmt"], "finetune_lr": [1e-5, 1e-3]}) and/or
        comma-separated flags (which override the file); everything else keeps its default."""
        values: dict = {}
        if file:
            values = _read_space_file(file)
        for name, text in flags.items():
            if text is not None:
                values[name] = [v.strip() for v in text.split(",") if v.strip()]
        typed = {"T": int, "batch_size": int, "finetune_lr": float, "schedule": str, "method": str}
        out = {}
        for name, raw in values.items():
            if name not in typed:
                raise LtrayError(f"search space: unknown parameter {name!r}; known: {', '.join(typed)}")
            raw = raw if isinstance(raw, list) else [raw]
            try:
                out[name] = tuple(typed[name](v) if isinstance(v, str) else v for v in raw)
            except ValueError:
                raise LtrayError(f"search space: {name} values must be {typed[name].__name__}, got {raw}") from None
        return cls(**out)

    def sample(self, n: int, seed: int, finetune: bool) -> list[dict]:
        """n configurations drawn independently per parameter (uniform choices, log-uniform finetune_lr) from
        numpy's generator seeded with `seed`: the sweep's trials, reproducible and listed before it starts."""
        rng = np.random.default_rng(seed)
        configs = []
        for _ in range(n):
            config = {name: getattr(self, name)[rng.integers(len(getattr(self, name)))]
                      for name in ("T", "batch_size", "schedule", "method")}
            config = {k: v.item() if isinstance(v, np.generic) else v for k, v in config.items()}
            if finetune:
                low, high = np.log(self.finetune_lr)
                config["finetune_lr"] = float(np.exp(rng.uniform(low, high)))
            configs.append(config)
        return configs

    def param_space(self, finetune: bool) -> dict:
        from ray import tune

        space = {name: tune.choice(list(getattr(self, name))) for name in ("T", "batch_size", "schedule", "method")}
        if finetune:
            low, high = self.finetune_lr
            space["finetune_lr"] = tune.loguniform(low, high) if low < high else low
        return space


def _read_space_file(path: str) -> dict:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LtrayError(f"search space file {path}: {e.strerror}") from None
    try:  # JSON is YAML; safe_load builds plain data only, never code
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LtrayError(f"search space file {path} is not valid JSON/YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise LtrayError(f"search space file {path} must hold a mapping of parameter -> values")
    return values


# ---- one trial (pure: runs in-process in tests, or inside a Tune trial) -----------------------------------------

def evaluate_config(data, source, config: dict, *, model_cfg, train_cfg, transfer_cfg, finetune_epochs: int,
                    seed_target: int, device: str = "cpu") -> dict:
    """Transfer `source` onto build_model(seed_target) with one sampled configuration; all the metrics."""
    import time

    import torch

    from ..results import derive_seed
    from ..runs import transfer_pair
    from ..training import finetune

    t0 = time.perf_counter()
    cfg = replace(transfer_cfg, T=int(config["T"]), batch_size=int(config["batch_size"]), schedule=config["schedule"])
    method = config["method"]
    seed_source = int(source.meta.get("seed", 0))
    result = transfer_pair(data, model_cfg, train_cfg, cfg, (method,), source, seed_target, device,
                           seed=derive_seed("transfer", seed_source, seed_target)).results[method]
    metrics = dict(best_val_acc=result.val_acc[result.best_step], final_val_acc=result.val_acc[-1],
                   best_step=result.best_step, transfer_seconds=result.seconds[-1], finetuned_val_acc=None)
    if "finetune_lr" in config:
        model = model_cfg.build(data, seed_target).to(device)
        _, history = finetune(model, result.best, data.train, data.val, finetune_epochs, float(config["finetune_lr"]),
                              seed=derive_seed("finetune", seed_source, seed_target))
        metrics["finetuned_val_acc"] = history[-1]["val_acc"]
    metrics.update(seconds=time.perf_counter() - t0, device=torch.device(device).type, threads=torch.get_num_threads())
    return metrics


def trial(config: dict, data, source, setup: dict) -> None:
    """The Tune trainable (wrapped by tune.with_parameters: `data` and `source` come from the object store)."""
    from ray import tune

    from .engine import as_tensors, prepare_worker

    device = prepare_worker()
    try:
        metrics = evaluate_config(as_tensors(data), source, config, device=device, **setup)
    except LtrayError as e:   # deterministic: a retry would fail the same way, so report it instead of raising
        metrics = dict.fromkeys(SWEEP_OBJECTIVES, float("nan")) | {"ltray_error": str(e).strip().splitlines()[-1]}
    tune.report(metrics)


# ---- the command ---------------------------------------------------------------------------------------------

def _setup_from_args(args: argparse.Namespace) -> dict:
    """Everything a sweep is, validated, as plain JSON-able data (saved in DIR/sweep.json for --resume)."""
    from ..cli.args import configs_from_args
    from ..config import PRESETS, TransferConfig

    if args.objective not in SWEEP_OBJECTIVES:
        raise LtrayError(f"unknown objective {args.objective!r}; known: {', '.join(SWEEP_OBJECTIVES)}")
    space = SearchSpace.parse(args.space, T=args.T, batch_size=args.batch_size, schedule=args.schedule,
                              method=args.method, finetune_lr=args.finetune_lr)
    # without "T", configs_from_args leaves the transfer config to us (the flags here are lists of choices); it
    # checks the names, and TransferConfig the solver
    data_cfg, model_cfg, train_cfg, _ = configs_from_args(argparse.Namespace(**{
        k: v for k, v in vars(args).items() if k != "T"}))
    bn = args.bn_samples or PRESETS[args.dataset].get("bn_samples", 256)
    transfer_cfg = TransferConfig(T=max(space.T), trajectory=args.trajectory_kind, loader_batch_size=args.loader_batch_size,
                                  bn_samples=bn, solver=args.solver)  # validates the fixed part
    if transfer_cfg.trajectory == "actual" and max(space.T) > train_cfg.epochs and not args.trajectory:
        raise LtrayError(f"search space: T up to {max(space.T)} exceeds the source's {train_cfg.epochs} epochs, "
                         "which an actual trajectory needs")
    return dict(data_cfg=asdict(data_cfg), model_cfg=asdict(model_cfg), train_cfg=asdict(train_cfg),
                transfer_cfg=asdict(transfer_cfg), space=asdict(space), objective=args.objective,
                num_samples=args.num_samples, finetune_epochs=args.finetune_epochs, seed=args.seed,
                trajectory=str(Path(args.trajectory).resolve()) if args.trajectory else None,
                trajectory_digest=_digest(args.trajectory))


def _configs(setup: dict):
    from ..config import DataConfig, ModelConfig, TrainConfig, TransferConfig

    d = dict(setup["data_cfg"], classes=tuple(setup["data_cfg"]["classes"]) if setup["data_cfg"]["classes"] else None)
    return (DataConfig(**d), ModelConfig(**setup["model_cfg"]), TrainConfig(**setup["train_cfg"]),
            TransferConfig(**setup["transfer_cfg"]))


def cmd_sweep(args: argparse.Namespace) -> None:
    from ..cli.args import check_out_dir, resources_from_args
    from . import engine

    from ..results import SWEEP_SCHEMA

    out = check_out_dir(args.out, (("sweep.parquet", SWEEP_SCHEMA),))
    saved = out / "sweep.json"
    resources = resources_from_args(args)
    if args.resume:
        if not saved.exists():
            raise LtrayError(f"nothing to resume in {out}: no sweep was started there")
        setup = json.loads(saved.read_text())
    else:
        if saved.exists():
            raise LtrayError(f"{out} already holds a sweep; pass --resume to continue it, or choose another --out")
        setup = _setup_from_args(args)
        setup["storage"] = _storage(args.storage, out)
    data_cfg, model_cfg, train_cfg, transfer_cfg = _configs(setup)
    space = SearchSpace(**{k: tuple(v) for k, v in setup["space"].items()})
    source = _given_source(setup["trajectory"], out / "source.safetensors")
    data = data_cfg.load()
    from ..runs import check_transfer
    check_transfer(data, model_cfg, replace(transfer_cfg, T=max(space.T), batch_size=max(space.batch_size)),
                   train_cfg, source, f"--trajectory {setup['trajectory']}")   # the largest trial must fit
    t0 = time.perf_counter()
    with engine.session(args.num_cpus, args.address):
        resources = engine.resolve(resources, args.device, args.gpus_per_task is not None)
        if not args.resume:  # the sweep exists from here on: --resume finds it
            out.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(setup, indent=1))
        if source is None:
            source = _train_source(data, data_cfg, model_cfg, train_cfg, setup["seed"], resources,
                                   out / "source.safetensors")
        grid = _fit(setup["storage"], args.resume, space, setup, data, source, model_cfg, train_cfg, transfer_cfg,
                    resources, progress=not args.no_progress)
    _publish(grid, setup, source, data_cfg, model_cfg, out, time.perf_counter() - t0)


def _digest(trajectory: str | None) -> str | None:
    from ..core.trajectory import load_trajectory, trajectory_digest

    return trajectory_digest(load_trajectory(trajectory, lazy=True)) if trajectory else None


def _given_source(trajectory: str | None, saved: Path):
    """The --trajectory file, or the source a previous run of this sweep trained and saved, or None."""
    from ..core.trajectory import load_trajectory

    if trajectory:
        return load_trajectory(trajectory, lazy=True)
    return load_trajectory(saved, lazy=True) if saved.exists() else None


def _train_source(data, data_cfg, model_cfg, train_cfg, seed: int, resources, path: Path):
    import warnings

    from ..core.trajectory import save_trajectory
    from ..runs import train_source
    from . import engine

    ref = engine.submit(train_source, engine.put_data(data), resources, timed=False, data_cfg=data_cfg,
                        model_cfg=model_cfg, train_cfg=train_cfg, seed=seed, progress=False)
    source = engine.get(ref)
    with warnings.catch_warnings():  # the array is a read-only view of the object store; saving only reads it
        warnings.simplefilter("ignore", UserWarning)
        save_trajectory(source, path)
    return source


def _storage(storage: str | None, out: Path) -> str:
    """An absolute storage_path: a URI as given, a path made absolute (Tune runs trials in other directories)."""
    if storage is None:
        return str(out / "tune")
    return storage if "://" in storage else str(Path(storage).resolve())


def _fit(storage: str, resume: bool, space: SearchSpace, setup: dict, data, source, model_cfg, train_cfg,
         transfer_cfg, resources, progress: bool):
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from .engine import as_numpy

    # save the experiment's state at every step of Tune's loop (not every few seconds): after a driver killed
    # outright, --resume then reruns no finished trial
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    finetune = setup["objective"] == "finetuned_val_acc"
    trial_setup = dict(model_cfg=model_cfg, train_cfg=train_cfg, transfer_cfg=transfer_cfg,
                       finetune_epochs=setup["finetune_epochs"], seed_target=setup["seed"] + 1000)
    from ..runs import needed_epochs

    # what travels to the trials: the checkpoints some trial reads (first and last; every actual trajectory's)
    keep = sorted({e for T in space.T for e in needed_epochs(replace(transfer_cfg, T=T), source.epochs[-1])})
    trainable = tune.with_resources(tune.with_parameters(trial, data=as_numpy(data), source=source.select(keep),
                                                         setup=trial_setup),
                                    {"cpu": resources.num_cpus, "gpu": resources.num_gpus})
    if resume:
        experiment = f"{storage.rstrip('/')}/{EXPERIMENT}"
        if not tune.Tuner.can_restore(experiment):
            raise LtrayError(f"nothing to resume: {experiment} holds no restorable Tune experiment")
        tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space.param_space(finetune),
            tune_config=tune.TuneConfig(metric=setup["objective"], mode="max", num_samples=setup["num_samples"],
                                        search_alg=BasicVariantGenerator(points_to_evaluate=space.sample(
                                            setup["num_samples"], setup["seed"], finetune))),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=storage,
                                      verbose=1 if progress else 0,
                                      failure_config=tune.FailureConfig(max_failures=resources.max_retries)))
    return tuner.fit()


def run_id(setup: dict) -> str:
    """The sweep's id: its configuration, where its data and Tune's state live excepted."""
    from ..results import config_hash

    rest = {k: v for k, v in setup.items()   # the given trajectory counts by its content (its digest), not its path
            if k not in ("storage", "trajectory", "data_cfg", "model_cfg", "train_cfg", "transfer_cfg")}
    return config_hash(*_configs(setup), rest)


def _publish(grid, setup: dict, source, data_cfg, model_cfg, out: Path, wall: float) -> None:
    import pandas as pd

    from ..results import SWEEP_SCHEMA, provenance, write_parquet

    objective = setup["objective"]
    rows = []
    for result in grid:
        cfg, m = result.config or {}, result.metrics or {}
        error = m.get("ltray_error") or (str(result.error).strip().splitlines()[-1] if result.error else None)
        status = "error" if error else "ok" if m.get(objective) is not None else "unfinished"
        rows.append(dict(trial_id=m.get("trial_id") or Path(result.path).name, status=status,
                         dataset=data_cfg.name, model=model_cfg.name, width=source.meta.get("width"),
                         seed_source=int(source.meta.get("seed", 0)), seed_target=setup["seed"] + 1000,
                         T=cfg.get("T"), batch_size=cfg.get("batch_size"), schedule=cfg.get("schedule"),
                         method=cfg.get("method"), finetune_lr=cfg.get("finetune_lr"),
                         finetune_epochs=setup["finetune_epochs"] if "finetune_lr" in cfg else None,
                         objective=objective, objective_value=m.get(objective),
                         **{k: m.get(k) for k in ("best_val_acc", "final_val_acc", "best_step", "finetuned_val_acc",
                                                  "transfer_seconds", "seconds")},
                         error=error, **{**provenance(run_id(setup)), "device": m.get("device"),
                                         "threads": m.get("threads")}))
    rows.sort(key=lambda r: r["trial_id"])
    path = write_parquet(rows, SWEEP_SCHEMA, out / "sweep.parquet")
    df = pd.DataFrame(rows)
    ok = df[df.status == "ok"].sort_values("objective_value", ascending=False)
    cols = ["T", "batch_size", "schedule", "method"] + (["finetune_lr"] if df.finetune_lr.notna().any() else []) \
        + [objective, "seconds"]
    print(ok[cols].head(10).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = df[df.status == "error"]
    if len(failed):
        print(f"{len(failed)} of {len(df)} trials failed, e.g.: {failed.error.iloc[0]}")
    print(f"wrote {path} ({len(df)} trials; wall {wall:.1f} s, the trials' own seconds sum to "
          f"{df.seconds.sum():.1f} s)")
    unfinished = int((df.status == "unfinished").sum())
    if unfinished:  # Tune stopped on Ctrl-C and saved its state
        print(f"{unfinished} of {len(df)} trials unfinished; continue with: ltray sweep --out {out} --resume")
        raise KeyboardInterrupt
    if not len(ok):
        raise LtrayError(f"every trial failed, e.g.: {failed.error.iloc[0]}")
