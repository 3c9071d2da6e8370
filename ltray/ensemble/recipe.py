"""Ensemble recipes as data: what a run builds (`Recipe`), the units of work it needs (`plan`), and the
ensembles assembled from the finished members (`assemble`), with the printed summary. Pure: no Ray."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import LtrayError

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
    given_epochs = recipe.trained_epochs or (epochs,)
    if min(given_epochs) < 1 or max(given_epochs) > epochs:
        raise LtrayError(f"--trained-epochs must lie in 1..{epochs} (the recipe's epochs), got {list(given_epochs)}")
    # "also": the recipe's own epochs are always evaluated, as the full ensemble there is what x_full divides by
    trained = tuple(sorted(set(given_epochs) | {epochs}))
    if scheduled and trained != (epochs,):
        raise LtrayError("--trained-epochs needs a constant learning rate (no --cosine, no warm-up): only then is "
                         "the checkpoint after e epochs a model trained for e epochs")
    snap = recipe.snapshot_epochs or (-(-epochs // M) * M,)
    if recipe.snapshot and (M < 2 or any(e < M or e % M for e in snap)):
        raise LtrayError(f"--snapshot-epochs must be multiples of --members ({M}, >= 2), got {list(snap)}")
    return replace(recipe, trained_epochs=trained, snapshot_epochs=tuple(sorted(set(snap))),
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
             finetune: dict) -> list[dict]:
    """ENSEMBLE_SCHEMA rows (without arch and provenance) of every ensemble of every repeat; `finetune` holds the
    transferred members' finetune_lr, finetune_optimizer and T."""
    from ..metrics import ensemble_metrics

    M, rows = recipe.members, []

    def at(unit: Unit, e: int):
        return next(m for m in units[unit] if m.row["epochs"] == e)

    def add(repeat, kind, members, source_seconds, own_seconds, sources, epochs_, method="sgd", stage=None):
        rows.append(dict(repeat=repeat, kind=kind, method=method, size=len(members), sources=sources,
                         with_sources=recipe.with_sources if kind == "transferred" else False, epochs=epochs_,
                         finetune_epochs=stage, **(finetune if kind == "transferred" else dict.fromkeys(finetune)),
                         seeds=",".join(str(m.row["seed"]) for m in members),
                         n_test=len(labels), source_seconds=source_seconds, seconds=source_seconds + own_seconds,
                         **_where(members),
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
    for r in range(recipe.repeats):  # against the M-member full ensemble of the same repeat at the recipe's epochs
        full = [at(u, epochs).row["seconds"] for u in units if u.repeat == r and u.kind == "full"]
        for x in rows:
            if x["repeat"] == r:
                x["x_full"] = x["seconds"] / sum(full) if full else float("nan")
    return rows


def _where(members) -> dict:
    """device and threads of an ensemble: its members' when they agree, else "mixed" and None."""
    devices, threads = {m.row.get("device") for m in members}, {m.row.get("threads") for m in members}
    return {"device": devices.pop() if len(devices) == 1 else "mixed",
            "threads": threads.pop() if len(threads) == 1 else None}


def summary_table(ensembles):
    """One row per kind of ensemble and setting (a DataFrame): the mean over repeats and the std of accuracy."""
    keys = ["kind", "method", "size", "sources", "with_sources", "epochs"]
    g = ensembles.assign(order=ensembles.kind.map(KINDS.index)).groupby(keys + ["order"], dropna=False, sort=False)
    table = g.agg(acc=("test_acc", "mean"), acc_std=("test_acc", "std"), nll=("test_nll", "mean"),
                  ece=("test_ece", "mean"), disagree=("disagreement", "mean"), gain=("gain", "mean"),
                  seconds=("seconds", "mean"), x_full=("x_full", "mean"), n=("repeat", "count"))
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
