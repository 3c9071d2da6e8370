"""Ensembles by transfer beside what a user would otherwise do: `python -m ltray.ensemble` (also `ltray ensemble`).

In one run, for each of R repeats (independent seeds), it builds and evaluates on the test split:
- source: the single source model;
- checkpoint: the source run's last M epoch checkpoints (costs nothing beyond the source);
- snapshot: Huang et al.'s snapshot ensemble: one SGD run with the source's recipe whose learning rate is
  cosine-annealed over M equal cycles with restarts, the M cycle ends being the members (one run's cost);
- full: M members trained independently like the source (the reference; a deep ensemble);
- transferred: M members, each the source (of K independently trained ones, round-robin) transferred to a fresh
  initialisation (--method), its best step fine-tuned for each of --finetune-epochs (each with its own data
  order); with --with-sources the K sources are members too, beside M - K transferred ones.
It reports accuracy, NLL, ECE, disagreement, ensemble gain and compute seconds (x_full: against the M-member
full ensemble). Units of work (a training run, a transfer) run in this process while the rest would finish
sooner here than on a freshly started local Ray (_worth_ray), then fan out as Ray tasks; --ray, --address or
--gpus-per-task sends every unit to Ray, --no-ray keeps every unit here (ltray.ensemble.units); each finished
unit is saved under DIR/members/, so a rerun with the same --out skips it; the Parquet files, the PNG and the
printed table are rebuilt from all units. Metric definitions: ltray.metrics; seconds: ltray.ensemble.members.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from ..ensemble.recipe import Recipe, assemble, check, format_table, plan, source_epochs, summary_table
from ..ensemble.units import RAY_START_SECONDS, UNIT_FORMAT, Units
from .args import check_out_dir, configs_from_args, resolve_from_args, resources_from_args


def cmd_ensemble(args: argparse.Namespace) -> None:
    from ..config import FinetuneConfig
    from ..core.trajectory import load_trajectory, trajectory_digest
    from ..distributed import engine
    from ..ensemble.members import load_unit
    from ..results import ENSEMBLE_SCHEMA, MEMBERS_SCHEMA, config_hash
    from ..runs import check_transfer, recorded_recipe

    methods = tuple(m.strip() for m in args.method.split(",") if m.strip())
    data_cfg, model_cfg, train_cfg, transfer_cfg = configs_from_args(args, methods or ("",))
    given = load_trajectory(args.trajectory, lazy=True) if args.trajectory else None
    if given is not None:   # full and snapshot members train with the given source's recipe, as long as it did
        train_cfg = replace(recorded_recipe(given, train_cfg), epochs=given.epochs[-1])
    recipe = check(Recipe(args.members, args.sources, args.repeats, methods, tuple(args.finetune_epochs),
                          tuple(args.trained_epochs), tuple(args.snapshot_epochs), args.full_ensemble,
                          args.snapshot, args.with_sources, args.seed, tuple(args.snapshot_lrs), args.copies),
                   train_cfg.epochs, train_cfg.cosine or train_cfg.warmup_epochs > 0, given is not None)
    finetune_cfg = FinetuneConfig(max(args.finetune_epochs, default=0), args.finetune_lr, args.finetune_batch_size,
                                  args.finetune_optimizer)
    resources_from_args(args)
    out = check_out_dir(args.out, (("members.parquet", MEMBERS_SCHEMA), ("ensemble.parquet", ENSEMBLE_SCHEMA)))
    data = data_cfg.load()
    check_transfer(data, model_cfg, transfer_cfg, train_cfg, given, f"--trajectory {args.trajectory}")
    seed_given = int(given.meta.get("seed", 0)) if given else None
    # what determines the numbers (never the data's path); a unit file is reused only by a run computing the same
    data_id = data_cfg.identity()
    snapshot_cfg = {(e, lr): replace(train_cfg, epochs=e, cycles=args.members, cosine=False, warmup_epochs=0,
                                     lr=lr or train_cfg.lr)
                    for e in recipe.snapshot_epochs for lr in recipe.snapshot_lrs or (None,)}
    full_cfg = {e: replace(train_cfg, epochs=e) for e in recipe.trained_epochs}   # annealed: one run per budget
    source_id = {u.source: (f"given-{trajectory_digest(given)}" if given else
                            config_hash(data_id, model_cfg, train_cfg, {"seed": u.source}))
                 for u in plan(recipe, train_cfg.epochs, seed_given) if u.source is not None}
    keys = {"source": lambda u: (source_id[u.source], source_epochs(recipe, train_cfg.epochs)),
            "full": lambda u: (data_id, model_cfg, full_cfg[u.epochs], (u.epochs,), u.seed) if u.epochs else
            (data_id, model_cfg, train_cfg, recipe.trained_epochs, u.seed),
            "snapshot": lambda u: (data_id, model_cfg, snapshot_cfg[u.epochs, u.lr], u.seed),
            "transferred": lambda u: (source_id[u.source], data_id, model_cfg, train_cfg, transfer_cfg,
                                      replace(finetune_cfg, epochs=0), recipe.stages, u.method, u.seed),
            "copy": lambda u: (source_id[u.source], data_id, model_cfg, transfer_cfg.bn_samples,
                               replace(finetune_cfg, epochs=0), recipe.stages, u.seed)}
    units = plan(recipe, train_cfg.epochs, seed_given)
    path = {u: out / "members" / f"{u.name()}-{config_hash(UNIT_FORMAT, *keys[u.kind](u))}.safetensors"
            for u in units}
    done = {u: load_unit(path[u]) for u in units if path[u].exists()}
    todo = [u for u in units if u not in done]
    if done:
        print(f"{len(done)} of {len(units)} units already in {out / 'members'}; running {len(todo)}")
    t0, task_seconds = time.perf_counter(), 0.0
    if todo:
        jobs = dict(model_cfg=model_cfg, train_cfg=train_cfg, transfer_cfg=transfer_cfg, finetune_cfg=finetune_cfg,
                    snapshot_cfg=snapshot_cfg, full_cfg=full_cfg, source_epochs=source_epochs(recipe, train_cfg.epochs),
                    trained_epochs=recipe.trained_epochs, stages=recipe.stages)
        runner = Units(todo, path, done, {s: out / "sources" / f"{i}.safetensors" for s, i in source_id.items()},
                        given, data, data_cfg, jobs)
        ray_asked = args.ray or args.address is not None or args.gpus_per_task is not None
        if args.ray is False or not ray_asked:   # small jobs: no Ray start, no fan-out overhead
            runner.run_here(float("inf") if args.ray is False else _worth_ray(args), int(args.cpus_per_task),
                            not args.no_progress)
        if runner.todo:
            with engine.session(args.num_cpus, args.address):
                resources, max_in_flight = resolve_from_args(args)
                runner.run_on_ray(resources, max_in_flight, not args.no_progress)
        task_seconds = runner.seconds
        print(runner.report())
    wall = time.perf_counter() - t0
    run_id = config_hash(data_id, model_cfg, train_cfg, transfer_cfg, finetune_cfg, recipe, source_id)
    finetune = dict(finetune_lr=finetune_cfg.lr, finetune_optimizer=finetune_cfg.optimizer, T=transfer_cfg.T)
    _publish(recipe, train_cfg.epochs, {u: done[u] for u in units}, data, data_cfg, model_cfg, finetune, run_id, out,
             not args.no_plot)
    if todo:
        print(f"wall {wall:.1f} s for {len(todo)} units; their own seconds sum to {task_seconds:.1f} s")


def _worth_ray(args: argparse.Namespace) -> float:
    """Seconds of remaining in-process work above which the local Ray pays: with W task slots it finishes R
    seconds of work in about RAY_START_SECONDS + R / W, which beats R once R > RAY_START_SECONDS * W / (W - 1).
    One slot never pays."""
    import os

    slots = int((args.num_cpus or os.cpu_count() or 1) // max(args.cpus_per_task, 1e-9))
    return RAY_START_SECONDS * slots / (slots - 1) if slots > 1 else float("inf")


def _publish(recipe: Recipe, epochs: int, units: dict, data, data_cfg, model_cfg, finetune: dict, run_id: str,
             out: Path, plot: bool) -> None:
    import pandas as pd

    from ..models import DEFAULT_WIDTH
    from ..results import ENSEMBLE_SCHEMA, MEMBERS_SCHEMA, provenance, write_parquet

    width = model_cfg.width if model_cfg.width is not None else DEFAULT_WIDTH.get(model_cfg.name)
    arch = dict(dataset=data_cfg.name, model=model_cfg.name, width=width)
    members = [{**arch, **provenance(run_id), **m.row} for u in units for m in units[u]]   # the task's device
    ensembles = pd.DataFrame([{**arch, **provenance(run_id), **row}
                              for row in assemble(recipe, epochs, units, data.test.y.numpy(), data.val.y.numpy(),
                                                  finetune)])
    write_parquet(members, MEMBERS_SCHEMA, out / "members.parquet")
    write_parquet(ensembles, ENSEMBLE_SCHEMA, out / "ensemble.parquet")
    written = [out / "members.parquet", out / "ensemble.parquet"]
    if plot:
        from ..analysis.plots import ensemble_figure, save_figure
        written.append(save_figure(ensemble_figure(ensembles, f"{data_cfg.name}, {model_cfg.name} width {width}"),
                            out / "ensemble.png"))
    print(format_table(summary_table(ensembles), len(data.test)))
    print("wrote " + ", ".join(str(p) for p in written))
