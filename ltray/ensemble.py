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
It reports accuracy, NLL, ECE, disagreement, ensemble gain and compute seconds (seconds_vs_full: against the
full ensemble of the same size). Units of work (a training run, a transfer) fan out as Ray tasks; each finished
unit is saved under DIR/members/, so a rerun with the same --out skips it; the Parquet files, the PNG and the
printed table are rebuilt from all units. Metric definitions: ltray.metrics; seconds: ltray.members.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .errors import LtrayError

KINDS = ("source", "checkpoint", "snapshot", "full", "transferred")
REPEAT_STRIDE = 10_000   # repeat r: sources seed + r*STRIDE + k, targets and full members seed + r*STRIDE + 1000 + j


@dataclass(frozen=True)
class Unit:
    """One unit of work: a source's checkpoints, a trained member, a snapshot run, or a transfer."""
    kind: str                  # "source", "full", "snapshot" or "transferred"
    repeat: int
    seed: int                  # the run's seed (initialisation and data order); the target for "transferred"
    source: int | None = None  # the source seed a unit reads ("source", "transferred")
    method: str | None = None
    epochs: int | None = None  # a snapshot run's length

    def name(self) -> str:
        parts = [self.kind, f"r{self.repeat}", f"s{self.seed}"]
        parts += [f"from{self.source}"] * (self.kind == "transferred") + [self.method] * bool(self.method)
        return "-".join(parts + [f"e{self.epochs}"] * bool(self.epochs))


@dataclass(frozen=True)
class Recipe:
    """What the ensembles are made of (validated by `check`)."""
    members: int = 4
    sources: int = 1
    repeats: int = 3
    methods: tuple[str, ...] = ("fgmt",)
    stages: tuple[int, ...] = (0, 2)            # fine-tuning epochs at which transferred members are evaluated
    trained_epochs: tuple[int, ...] = ()        # epochs at which source and full members are evaluated (default E)
    snapshot_epochs: tuple[int, ...] = ()       # lengths of snapshot runs (default: E rounded up to a multiple of M)
    full: bool = True
    snapshot: bool = True
    with_sources: bool = False
    seed: int = 0

    def transferred_per_repeat(self) -> int:
        return self.members - self.sources if self.with_sources else self.members


def check(recipe: Recipe, epochs: int, scheduled: bool, given: bool) -> Recipe:
    """Fill the defaults that depend on the training recipe (E epochs) and refuse what cannot run."""
    M, K = recipe.members, recipe.sources
    if M < 1 or K < 1 or recipe.repeats < 1:
        raise LtrayError(f"--members, --sources and --repeats must be >= 1, got {M}, {K} and {recipe.repeats}")
    if recipe.transferred_per_repeat() < K:
        need = "2 x --sources" if recipe.with_sources else "--sources"
        raise LtrayError(f"--members {M} must be at least {need} ({K}) so that every source is transferred")
    if M >= 1000 or K >= 1000:
        raise LtrayError("--members and --sources must be below 1000 (seeds of a repeat are spaced by 1000)")
    if given and (K > 1 or recipe.repeats > 1):
        raise LtrayError("--trajectory gives one source: use it with --sources 1 --repeats 1")
    if not recipe.stages or min(recipe.stages) < 0:
        raise LtrayError(f"--finetune-epochs needs epochs >= 0, got {list(recipe.stages)}")
    trained = recipe.trained_epochs or (epochs,)
    if min(trained) < 1 or max(trained) > epochs:
        raise LtrayError(f"--trained-epochs must lie in 1..{epochs} (the recipe's epochs), got {list(trained)}")
    if scheduled and trained != (epochs,):
        raise LtrayError("--trained-epochs needs a constant learning rate (no --cosine, no warm-up): only then is "
                         "the checkpoint after e epochs a model trained for e epochs")
    snap = recipe.snapshot_epochs or (-(-epochs // M) * M,)
    if recipe.snapshot and (M < 2 or any(e < M or e % M for e in snap)):
        raise LtrayError(f"--snapshot-epochs must be multiples of --members ({M}, >= 2), got {list(snap)}")
    return replace(recipe, trained_epochs=tuple(sorted(set(trained))), snapshot_epochs=tuple(sorted(set(snap))),
                   stages=tuple(sorted(set(recipe.stages))))


def plan(recipe: Recipe, epochs: int, seed_source: int | None = None) -> list[Unit]:
    """Every unit of every repeat. With a given trajectory, `seed_source` is its seed."""
    units = []
    for r in range(recipe.repeats):
        base = recipe.seed + REPEAT_STRIDE * r
        sources = [seed_source] if seed_source is not None else [base + k for k in range(recipe.sources)]
        targets = [base + 1000 + j for j in range(recipe.members)]
        units += [Unit("source", r, s, source=s) for s in sources]
        units += [Unit("full", r, s) for s in targets if recipe.full]
        units += [Unit("snapshot", r, sources[0], epochs=e) for e in recipe.snapshot_epochs if recipe.snapshot]
        units += [Unit("transferred", r, t, source=sources[j % len(sources)], method=m) for m in recipe.methods
                  for j, t in enumerate(targets[:recipe.transferred_per_repeat()])]
    return units


def source_epochs(recipe: Recipe, epochs: int) -> tuple[int, ...]:
    """The source checkpoints evaluated: the trained-epochs curve, and the last M for the checkpoint ensemble."""
    last = range(max(1, epochs - recipe.members + 1), epochs + 1)
    return tuple(sorted(set(recipe.trained_epochs) | set(last)))


# ---- assembling ensembles from members (pure) ----------------------------------------------------------------

def assemble(recipe: Recipe, epochs: int, units: dict[Unit, list], labels: np.ndarray,
             finetune: dict | None = None) -> list[dict]:
    """ENSEMBLE_SCHEMA rows (without arch and provenance) of every ensemble of every repeat; `finetune` holds the
    transferred members' finetune_lr, finetune_optimizer and T."""
    from .metrics import ensemble_metrics

    M, rows = recipe.members, []

    def at(unit: Unit, e: int):
        return next(m for m in units[unit] if m.row["epochs"] == e)

    def add(repeat, kind, members, source_seconds, own_seconds, sources, epochs_, method="sgd", stage=None):
        rows.append(dict(repeat=repeat, kind=kind, method=method, size=len(members), sources=sources,
                         with_sources=recipe.with_sources if kind == "transferred" else False, epochs=epochs_,
                         finetune_epochs=stage, **((finetune or {}) if kind == "transferred" else {}), seeds=",".join(str(m.row["seed"]) for m in members),
                         n_test=len(labels), source_seconds=source_seconds, seconds=source_seconds + own_seconds,
                         **ensemble_metrics([m.probs for m in members], labels)))

    for r in range(recipe.repeats):
        mine = [u for u in units if u.repeat == r]
        srcs = [u for u in mine if u.kind == "source"]
        run_seconds = {u.seed: at(u, epochs).row["seconds"] for u in srcs}
        for e in recipe.trained_epochs:
            member = at(srcs[0], e)
            add(r, "source", [member], member.row["seconds"], 0.0, 1, e)
        if M >= 2 and epochs >= M:
            add(r, "checkpoint", [at(srcs[0], e) for e in range(epochs - M + 1, epochs + 1)],
                run_seconds[srcs[0].seed], 0.0, 1, epochs)
        for u in (u for u in mine if u.kind == "snapshot"):
            add(r, "snapshot", units[u], max(m.row["seconds"] for m in units[u]), 0.0, 1, u.epochs)
        full = [u for u in mine if u.kind == "full"]
        for e in recipe.trained_epochs if full else ():
            members = [at(u, e) for u in full]
            add(r, "full", members, 0.0, sum(m.row["seconds"] for m in members), len(full), e)
        for method in recipe.methods:
            moved = [u for u in mine if u.kind == "transferred" and u.method == method]
            extra = [at(u, epochs) for u in srcs] if recipe.with_sources else []
            for stage in recipe.stages:
                members = [at(u, stage) for u in moved]
                add(r, "transferred", extra + members, sum(run_seconds.values()),
                    sum(m.row["seconds"] for m in members), len(srcs), stage, method, stage)
    for r in range(recipe.repeats):  # against as many full members (same repeat) at the recipe's epochs
        full = [at(u, epochs).row["seconds"] for u in units if u.repeat == r and u.kind == "full"]
        for x in rows:
            if x["repeat"] == r:
                x["seconds_vs_full"] = x["seconds"] / sum(full[:x["size"]]) if x["size"] <= len(full) else float("nan")
    return rows


def summary_table(ensembles):
    """One row per kind of ensemble and setting (a DataFrame): the mean over repeats and the std of accuracy."""
    keys = ["kind", "method", "size", "sources", "with_sources", "epochs"]
    g = ensembles.assign(order=ensembles.kind.map(KINDS.index)).groupby(keys + ["order"], dropna=False, sort=False)
    table = g.agg(acc=("test_acc", "mean"), acc_std=("test_acc", "std"), nll=("test_nll", "mean"),
                  ece=("test_ece", "mean"), disagree=("disagreement", "mean"), gain=("gain", "mean"),
                  seconds=("seconds", "mean"), x_full=("seconds_vs_full", "mean"), n=("repeat", "count"))
    return table.reset_index().sort_values(["order", "method", "sources", "epochs"]).drop(columns="order")


def format_table(table, n_test: int) -> str:
    rep = int(table.n.max())
    head = (f"test split: {n_test} images (one image = {100 / n_test:.2f} pt); "
            + (f"mean over {rep} repeats (acc: mean ± std)" if rep > 1 else "one repeat"))
    out = table.assign(acc=[f"{a:.2f}" + (f" ± {s:.2f}" if rep > 1 else "") for a, s in zip(table.acc, table.acc_std)],
                       kind=[k + ("+src" if w else "") for k, w in zip(table.kind, table.with_sources)])
    cols = ["kind", "method", "size", "sources", "epochs", "acc", "nll", "ece", "disagree", "gain", "seconds", "x_full"]
    fmt = {"nll": "{:.3f}", "ece": "{:.2f}", "disagree": "{:.2f}", "gain": "{:+.2f}", "seconds": "{:.1f}",
           "x_full": "{:.2f}"}
    text = out[cols].to_string(index=False, na_rep="-", formatters={k: f.format for k, f in fmt.items()})
    return head + "\n" + text


# ---- the command ---------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import add_data_args, add_model_args, add_transfer_args, int_list
    from .engine import add_ray_args

    add_data_args(p); add_model_args(p); add_transfer_args(p)
    g = p.add_argument_group("ensemble")
    g.add_argument("--members", type=int, default=4, help="M, the size of every ensemble (default 4)")
    g.add_argument("--sources", type=int, default=1,
                   help="K independently trained sources; transferred members take them round-robin (default 1)")
    g.add_argument("--with-sources", action="store_true",
                   help="the K sources are members of the transferred ensemble, beside M - K transferred ones")
    g.add_argument("--repeats", type=int, default=3, help="R, independent repeats (all seeds differ) (default 3)")
    g.add_argument("--method", default="fgmt", help="transfer method(s), comma-separated: fgmt (default), gmt, "
                   "oracle, naive")
    g.add_argument("--finetune-epochs", type=int_list, default=(0, 2),
                   help="fine-tuning epochs at which transferred members are evaluated, e.g. 0,1,2,5,10 (default 0,2)")
    g.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    g.add_argument("--finetune-optimizer", default="adam", help="adam (default) or sgd (momentum 0.9)")
    g.add_argument("--finetune-batch-size", type=int, default=128, help="fine-tuning batch size (default 128)")
    g.add_argument("--trained-epochs", type=int_list, default=(),
                   help="also evaluate the source and the full members after these epochs (constant-lr recipes)")
    g.add_argument("--full-ensemble", action=argparse.BooleanOptionalAction, default=True,
                   help="train M independent members like the source, the reference (default on)")
    g.add_argument("--snapshot-epochs", type=int_list, default=(),
                   help="length(s) of the snapshot-ensemble runs, multiples of M (default: the source's epochs "
                        "rounded up to a multiple of M)")
    g.add_argument("--snapshot", action=argparse.BooleanOptionalAction, default=True,
                   help="build the snapshot ensemble (default on)")
    g.add_argument("--trajectory", default=None, help="transfer this saved source instead of training one")
    g.add_argument("--seed", type=int, default=0, help="base seed: repeat r's sources are seed+10000r+k, its "
                   "targets and full members seed+10000r+1000+j")
    g.add_argument("--out", default="runs/ensemble", help="output directory (default runs/ensemble)")
    g.add_argument("--no-plot", action="store_true", help="skip ensemble.png")
    add_ray_args(p)


def register(subparsers) -> None:
    p = subparsers.add_parser("ensemble", help="ensembles by transfer beside full, snapshot and single models")
    add_arguments(p)
    p.set_defaults(func=cmd_ensemble)


def cmd_ensemble(args: argparse.Namespace) -> None:
    from . import __version__, engine
    from .cli import check_out_dir, configs_from_args
    from .pipeline import check_names, check_trajectory
    from .results import config_hash
    from .train import FinetuneConfig
    from .trajectory import load_trajectory

    methods = tuple(m.strip() for m in args.method.split(",") if m.strip())
    check_names(args.dataset, args.model, methods or ("",))
    data_cfg, model_cfg, train_cfg, transfer_cfg = configs_from_args(args)
    finetune_cfg = FinetuneConfig(max(args.finetune_epochs, default=0), args.finetune_lr, args.finetune_batch_size,
                                  args.finetune_optimizer)
    recipe = check(Recipe(args.members, args.sources, args.repeats, methods, tuple(args.finetune_epochs),
                          tuple(args.trained_epochs), tuple(args.snapshot_epochs), args.full_ensemble,
                          args.snapshot, args.with_sources, args.seed),
                   train_cfg.epochs, train_cfg.cosine or train_cfg.warmup_epochs > 0, args.trajectory is not None)
    if transfer_cfg.trajectory == "actual" and transfer_cfg.T > train_cfg.epochs:
        raise LtrayError(f"--trajectory-kind actual needs --T <= the source's epochs ({train_cfg.epochs})")
    engine.resources_from_args(args)
    out = check_out_dir(args.out)
    given = load_trajectory(args.trajectory) if args.trajectory else None
    data = data_cfg.load()
    if given is not None:
        check_trajectory(given, model_cfg.build(data, 0), f"--trajectory {args.trajectory}")
    seed_given = int(given.meta.get("seed", 0)) if given else None
    # what determines the numbers (never the data's path); a unit file is reused only by a run computing the same
    data_id = {k: v for k, v in asdict(data_cfg).items() if k not in ("root", "download")}
    snapshot_cfg = {e: replace(train_cfg, epochs=e, cycles=args.members, cosine=False) for e in recipe.snapshot_epochs}
    source_id = {u.source: (f"given-{trajectory_digest(given)}" if given else
                            config_hash(data_id, model_cfg, train_cfg, {"seed": u.source}))
                 for u in plan(recipe, train_cfg.epochs, seed_given) if u.source is not None}
    keys = {"source": lambda u: (source_id[u.source], source_epochs(recipe, train_cfg.epochs)),
            "full": lambda u: (data_id, model_cfg, train_cfg, recipe.trained_epochs, u.seed),
            "snapshot": lambda u: (data_id, model_cfg, snapshot_cfg[u.epochs], u.seed),
            "transferred": lambda u: (source_id[u.source], data_id, model_cfg, train_cfg, transfer_cfg,
                                      replace(finetune_cfg, epochs=0), recipe.stages, u.method, u.seed)}
    units = plan(recipe, train_cfg.epochs, seed_given)
    path = {u: out / "members" / f"{u.name()}-{config_hash(*keys[u.kind](u), __version__)}.safetensors"
            for u in units}
    from .members import load_unit

    done = {u: load_unit(path[u]) for u in units if path[u].exists()}
    todo = [u for u in units if u not in done]
    if done:
        print(f"{len(done)} of {len(units)} units already in {out / 'members'}; running {len(todo)}")
    t0, task_seconds = time.perf_counter(), 0.0
    if todo:
        with engine.session(args.num_cpus, args.address):
            resources, max_in_flight = engine.resolve_from_args(args)
            jobs = dict(model_cfg=model_cfg, train_cfg=train_cfg, transfer_cfg=transfer_cfg, finetune_cfg=finetune_cfg,
                        snapshot_cfg=snapshot_cfg, source_epochs=source_epochs(recipe, train_cfg.epochs),
                        trained_epochs=recipe.trained_epochs, stages=recipe.stages)
            task_seconds = _run_units(todo, path, done, {s: out / "sources" / f"{i}.safetensors"
                                                         for s, i in source_id.items()},
                                      given, data, data_cfg, jobs, resources, max_in_flight, not args.no_progress)
    wall = time.perf_counter() - t0
    run_id = config_hash(data_id, model_cfg, train_cfg, transfer_cfg, finetune_cfg, recipe, source_id)
    finetune = dict(finetune_lr=finetune_cfg.lr, finetune_optimizer=finetune_cfg.optimizer, T=transfer_cfg.T)
    _publish(recipe, train_cfg.epochs, {u: done[u] for u in units}, data, data_cfg, model_cfg, finetune, run_id, out, not args.no_plot)
    if todo:
        print(f"wall {wall:.1f} s for {len(todo)} units; their tasks' own seconds sum to {task_seconds:.1f} s")


def _run_units(todo: list[Unit], path: dict, done: dict, source_file: dict, given, data, data_cfg, jobs: dict,
               resources, max_in_flight: int, progress: bool) -> float:
    """Fan the unfinished units out over Ray, saving each as it arrives; returns the sum of the tasks' seconds."""
    import ray

    from . import engine
    from .members import save_unit, source_members, trained_members, transferred_members
    from .trajectory import load_trajectory, save_trajectory

    data_ref, store = engine.put_data(data), engine.TrajectoryStore.remote()
    refs, saved = {}, set()
    for seed in dict.fromkeys(u.source for u in todo if u.source is not None):
        if given is not None or source_file[seed].exists():
            traj = given if given is not None else load_trajectory(source_file[seed])
            refs[seed] = ray.get(store.put.remote(f"s{seed}", traj))[0]
            saved.add(seed)
        else:  # trained in a task whose result the store owns; transfers wait for it
            refs[seed] = ray.get(store.train.remote(f"s{seed}", [data_ref], resources, data_cfg=data_cfg,
                                                    model_cfg=jobs["model_cfg"], train_cfg=jobs["train_cfg"],
                                                    seed=seed))[0]
    seconds = 0.0

    def submit(u: Unit):
        if u.kind == "source":
            return engine.submit(source_members, data_ref, resources, model_cfg=jobs["model_cfg"], source=refs[u.source],
                                 epochs=jobs["source_epochs"])
        if u.kind in ("full", "snapshot"):
            cfg = jobs["train_cfg"] if u.kind == "full" else jobs["snapshot_cfg"][u.epochs]
            epochs = jobs["trained_epochs"] if u.kind == "full" else \
                tuple(range(u.epochs // cfg.cycles, u.epochs + 1, u.epochs // cfg.cycles))
            return engine.submit(trained_members, data_ref, resources, kind=u.kind, model_cfg=jobs["model_cfg"],
                                 train_cfg=cfg, seed=u.seed, epochs=epochs)
        return engine.submit(transferred_members, data_ref, resources, model_cfg=jobs["model_cfg"],
                             train_cfg=jobs["train_cfg"], transfer_cfg=jobs["transfer_cfg"],
                             finetune_cfg=jobs["finetune_cfg"], stages=jobs["stages"], method=u.method,
                             source=refs[u.source], seed=u.seed)

    for u, output in engine.fan_out(submit, todo, max_in_flight, desc="units", progress=progress):
        if u.source is not None and u.source not in saved:  # keep the source for reruns
            with warnings.catch_warnings():  # a read-only view of the object store; saving only reads it
                warnings.simplefilter("ignore", UserWarning)
                source = ray.get(refs[u.source])
                save_trajectory(source, source_file[u.source])
            seconds += source.meta["train_seconds"]
            saved.add(u.source)
        for m in output.value:
            m.row["repeat"] = u.repeat
        save_unit(output.value, path[u])
        done[u] = output.value
        seconds += output.seconds
    return seconds


def trajectory_digest(traj) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(traj.checkpoints).tobytes()).hexdigest()[:12]


def _publish(recipe: Recipe, epochs: int, units: dict, data, data_cfg, model_cfg, finetune: dict, run_id: str,
             out: Path, plot: bool) -> None:
    import pandas as pd

    from .models import DEFAULT_WIDTH
    from .results import ENSEMBLE_SCHEMA, MEMBERS_SCHEMA, provenance, write_parquet

    width = model_cfg.width if model_cfg.width is not None else DEFAULT_WIDTH[model_cfg.name]
    arch = dict(dataset=data_cfg.name, model=model_cfg.name, width=width)
    members = [dict(arch, **m.row, **provenance(run_id)) for u in units for m in units[u]]
    ensembles = pd.DataFrame([dict(arch, **row, **provenance(run_id))
                              for row in assemble(recipe, epochs, units, data.test.y.numpy(), finetune)])
    write_parquet(members, MEMBERS_SCHEMA, out / "members.parquet")
    write_parquet(ensembles, ENSEMBLE_SCHEMA, out / "ensemble.parquet")
    written = [out / "members.parquet", out / "ensemble.parquet"]
    if plot:
        from .plots import ensemble_figure, save_figure
        written.append(save_figure(ensemble_figure(ensembles, f"{data_cfg.name}, {model_cfg.name} width {width}"),
                            out / "ensemble.png"))
    print(format_table(summary_table(ensembles), len(data.test)))
    print("wrote " + ", ".join(str(p) for p in written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ltray.ensemble", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cmd_ensemble(args)
    except LtrayError as e:
        print(f"ltray ensemble: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ltray ensemble: interrupted (finished units are kept; rerun to continue)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # run the importable module's main, so Ray tasks pickle ltray.ensemble functions
    from ltray.ensemble import main as _main
    sys.exit(_main())
