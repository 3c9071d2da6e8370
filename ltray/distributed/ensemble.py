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
--gpus-per-task sends every unit to Ray, --no-ray keeps every unit here; each finished
unit is saved under DIR/members/, so a rerun with the same --out skips it; the Parquet files, the PNG and the
printed table are rebuilt from all units. Metric definitions: ltray.metrics; seconds: ltray.ensemble.members.
"""
from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..ensemble.recipe import Recipe, Unit, assemble, check, format_table, plan, source_epochs, summary_table


def cmd_ensemble(args: argparse.Namespace) -> None:
    from ..cli.args import check_out_dir, configs_from_args, resolve_from_args, resources_from_args
    from ..config import FinetuneConfig
    from ..core.trajectory import load_trajectory
    from ..ensemble.members import load_unit
    from ..results import ENSEMBLE_SCHEMA, MEMBERS_SCHEMA, config_hash
    from ..runs import check_transfer, recorded_recipe
    from . import engine

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
        runner = _Units(todo, path, done, {s: out / "sources" / f"{i}.safetensors" for s, i in source_id.items()},
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


UNIT_FORMAT = 2   # in every unit file's key: files of an older format (no validation softmax) are recomputed
RAY_START_SECONDS = 8.0   # starting the local Ray and its first workers, measured here (2 cores; docs/ray.md)


def _worth_ray(args: argparse.Namespace) -> float:
    """Seconds of remaining in-process work above which the local Ray pays: with W task slots it finishes R
    seconds of work in about RAY_START_SECONDS + R / W, which beats R once R > RAY_START_SECONDS * W / (W - 1).
    One slot never pays."""
    import os

    slots = int((args.num_cpus or os.cpu_count() or 1) // max(args.cpus_per_task, 1e-9))
    return RAY_START_SECONDS * slots / (slots - 1) if slots > 1 else float("inf")


class _Units:
    """The unfinished units of one run and where they run: in this process (small jobs, by measurement: for up
    to a budget of seconds), then as Ray tasks; each unit is saved as it finishes."""

    def __init__(self, todo: list[Unit], path: dict, done: dict, source_file: dict, given, data, data_cfg,
                 jobs: dict):
        from ..runs import needed_epochs

        self.todo, self.path, self.done, self.source_file = list(todo), path, done, source_file
        self.given, self.data, self.data_cfg, self.jobs = given, data, data_cfg, jobs
        self.sources: dict[int, object] = {}    # seed -> Trajectory (here) or ObjectRef (on Ray)
        self.seconds, self.here, self.on_ray = 0.0, 0, 0
        # what a source keeps: the checkpoints the transfers and the source's own ensembles read, no more
        epochs = given.epochs[-1] if given is not None else jobs["train_cfg"].epochs
        self.keep = sorted(set(needed_epochs(jobs["transfer_cfg"], epochs)) | set(jobs["source_epochs"]))

    def job(self, u: Unit, source=None) -> tuple:
        """(function, keyword arguments) of unit u; `source` is its source trajectory or a ref to it."""
        from ..ensemble.members import source_members, trained_members, transferred_members

        j = self.jobs
        if u.kind == "source":
            return source_members, dict(model_cfg=j["model_cfg"], source=source, epochs=j["source_epochs"])
        if u.kind == "full":
            cfg, epochs = (j["full_cfg"][u.epochs], (u.epochs,)) if u.epochs else (j["train_cfg"], j["trained_epochs"])
            return trained_members, dict(kind=u.kind, model_cfg=j["model_cfg"], train_cfg=cfg, seed=u.seed,
                                         epochs=epochs)
        if u.kind == "snapshot":
            cfg = j["snapshot_cfg"][u.epochs, u.lr]
            epochs = tuple(range(u.epochs // cfg.cycles, u.epochs + 1, u.epochs // cfg.cycles))
            return trained_members, dict(kind=u.kind, model_cfg=j["model_cfg"], train_cfg=cfg, seed=u.seed,
                                         epochs=epochs)
        return transferred_members, dict(model_cfg=j["model_cfg"], train_cfg=j["train_cfg"],
                                         transfer_cfg=j["transfer_cfg"], finetune_cfg=j["finetune_cfg"],
                                         stages=j["stages"], method=u.method or "copy", source=source, seed=u.seed)

    def finished(self, u: Unit, members: list, seconds: float) -> None:
        from ..ensemble.members import save_unit

        for m in members:
            m.row["repeat"] = u.repeat
        save_unit(members, self.path[u])
        self.done[u], self.seconds = members, self.seconds + seconds
        self.todo.remove(u)

    def saved_source(self, seed: int):
        """The given trajectory, or one a previous run saved with the checkpoints this run needs, or None."""
        return self.given if self.given is not None else _kept_source(self.source_file[seed], self.keep)

    def run_here(self, budget: float, threads: int, progress: bool) -> None:
        """Units in this process, in plan order, until none is left or (after RAY_START_SECONDS / 2 of them) the
        remaining ones, at the pace of those done so far, would take longer than `budget` seconds here (then the
        caller runs them on Ray); with the threads a task would have, so that the numbers are the same wherever
        a unit ran."""
        import torch
        from tqdm.auto import tqdm

        saved_threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads))
        try:
            self._run_here(budget, progress, tqdm)
        finally:
            torch.set_num_threads(saved_threads)

    def _run_here(self, budget: float, progress: bool, tqdm) -> None:
        from ..core.trajectory import save_trajectory
        from ..runs import train_source

        t0, done = time.perf_counter(), 0
        for u in tqdm(list(self.todo), desc="units here", disable=not progress, leave=False):
            elapsed = time.perf_counter() - t0
            # judged on a few seconds of units, not the first alone (a source's training is slower than most)
            if elapsed >= RAY_START_SECONDS / 2 and elapsed / done * len(self.todo) > budget:
                break
            if u.source is not None and u.source not in self.sources:
                source = self.saved_source(u.source)
                if source is None:
                    source = train_source(self.data, self.data_cfg, self.jobs["model_cfg"], self.jobs["train_cfg"],
                                          u.source, progress=False, keep=self.keep)
                    save_trajectory(source, self.source_file[u.source])
                    self.seconds += source.meta["train_seconds"]
                self.sources[u.source] = source.select(self.keep)
            fn, kwargs = self.job(u, self.sources.get(u.source))
            t1 = time.perf_counter()
            self.finished(u, fn(self.data, device="cpu", **kwargs), time.perf_counter() - t1)
            self.here, done = self.here + 1, done + 1

    def run_on_ray(self, resources, max_in_flight: int, progress: bool) -> None:
        """The remaining units as Ray tasks, at most max_in_flight at once."""
        import ray

        from ..core.trajectory import save_trajectory
        from . import engine

        data_ref, store = engine.put_data(self.data), engine.TrajectoryStore()
        refs, to_save = {}, set()
        for seed in dict.fromkeys(u.source for u in self.todo if u.source is not None):
            source = self.sources.get(seed) or self.saved_source(seed)
            if source is not None:
                refs[seed] = store.put(f"s{seed}", source.select(self.keep))
            else:  # trained in a task; the units that read the source wait for it
                refs[seed] = store.train(f"s{seed}", data_ref, resources, data_cfg=self.data_cfg,
                                         model_cfg=self.jobs["model_cfg"], train_cfg=self.jobs["train_cfg"],
                                         seed=seed, keep=self.keep)
                to_save.add(seed)

        def submit(u: Unit):
            fn, kwargs = self.job(u, refs.get(u.source))
            return engine.submit(fn, data_ref, resources, **kwargs)

        for u, output in engine.fan_out(submit, list(self.todo), max_in_flight, desc="units", progress=progress):
            if u.source in to_save:  # keep the source for reruns
                with warnings.catch_warnings():  # a read-only view of the object store; saving only reads it
                    warnings.simplefilter("ignore", UserWarning)
                    source = ray.get(refs[u.source])
                    save_trajectory(source, self.source_file[u.source])
                self.seconds += source.meta["train_seconds"]
                to_save.discard(u.source)
            self.finished(u, output.value, output.seconds)
            self.on_ray += 1

    def report(self) -> str:
        where = " and ".join(part for part in (f"{self.here} in this process" * bool(self.here),
                                               f"{self.on_ray} as Ray tasks" * bool(self.on_ray)) if part)
        return f"ran {self.here + self.on_ray} units: {where}"


def _kept_source(path: Path, keep: list[int]):
    """The source saved by an earlier run, if it holds the checkpoints this run needs (else it is trained again)."""
    from ..core.trajectory import load_trajectory

    if not path.exists():
        return None
    source = load_trajectory(path, lazy=True)
    return source if set(keep) <= set(source.epochs) else None


def trajectory_digest(traj) -> str:
    """A content id of a trajectory's checkpoints (read row by row)."""
    import hashlib

    digest = hashlib.sha256()
    for i in range(len(traj)):
        digest.update(np.ascontiguousarray(traj.checkpoints[i], dtype=np.float32).tobytes())
    return digest.hexdigest()[:12]


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
