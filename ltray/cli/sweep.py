"""`ltray sweep`: Ray Tune over a transfer's hyper-parameters (what a sweep is: ltray.sweep).

The source is trained once in a Ray task (or loaded with --trajectory) and handed to every trial through the
object store (tune.with_parameters), zero-copy. Results: one row per trial in DIR/sweep.parquet; Tune's own state
lives in DIR/tune (an absolute storage_path, since Tune moves trials into their own working directories) or under
--storage (s3://, gs:// or a shared mount: multi-node sweeps need storage every node reaches), so `--resume`
continues an interrupted sweep (Tuner.restore).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..config import SWEEP_OBJECTIVES
from ..errors import LtrayError
from ..sweep import SearchSpace, configs_of, evaluate_config, run_id
from .args import check_out_dir, configs_from_args, resources_from_args

EXPERIMENT = "sweep"  # Tune's experiment name under the storage path


def cmd_sweep(args: argparse.Namespace) -> None:
    from ..distributed import engine
    from ..results import SWEEP_SCHEMA
    from ..runs import check_transfer

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
    data_cfg, model_cfg, train_cfg, transfer_cfg = configs_of(setup)
    space = SearchSpace(**{k: tuple(v) for k, v in setup["space"].items()})
    source = _given_source(setup["trajectory"], out / "source.safetensors")
    data = data_cfg.load()
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


def _setup_from_args(args: argparse.Namespace) -> dict:
    """Everything a sweep is, validated, as plain JSON-able data (saved in DIR/sweep.json for --resume)."""
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
    from ..distributed import engine
    from ..runs import train_source

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
    from ..distributed import search
    from ..runs import needed_epochs

    finetune = setup["objective"] == "finetuned_val_acc"
    # what travels to the trials: the checkpoints some trial reads (first and last; every actual trajectory's)
    keep = sorted({e for T in space.T for e in needed_epochs(replace(transfer_cfg, T=T), source.epochs[-1])})
    return search.fit(evaluate_config, data, storage=storage, name=EXPERIMENT, resume=resume, resources=resources,
                      metric=setup["objective"], choices=space.choices(), log_ranges=space.log_ranges(finetune),
                      points=space.sample(setup["num_samples"], setup["seed"], finetune),
                      failed_metrics=SWEEP_OBJECTIVES, progress=progress,
                      source=source.select(keep), model_cfg=model_cfg, train_cfg=train_cfg, transfer_cfg=transfer_cfg,
                      finetune_epochs=setup["finetune_epochs"], seed_target=setup["seed"] + 1000)


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
