"""Ensemble recipes as data: what a run builds (`Recipe`), the units of work it needs (`plan`), and the
ensembles assembled from the finished members (`assemble`), with the printed summary. Pure: no Ray."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import LtrayError

KINDS = ("source", "checkpoint", "snapshot", "full", "copy", "transferred")
REPEAT_STRIDE = 10_000   # repeat r: sources seed + r*STRIDE + k, targets and full members seed + r*STRIDE + 1000 + j


@dataclass(frozen=True)
class Unit:
    """One unit of work: a source's checkpoints, a trained member, a snapshot run, a transfer, or a copy of the
    source fine-tuned without transfer."""
    kind: str                  # "source", "full", "snapshot", "transferred" or "copy"
    repeat: int
    seed: int                  # the run's seed (initialisation and data order); the target for "transferred"
    source: int | None = None  # the source seed a unit reads ("source", "transferred", "copy")
    method: str | None = None
    epochs: int | None = None  # a snapshot run's length; a full member's budget under an annealed recipe
    lr: float | None = None    # a snapshot run's peak learning rate (None: the recipe's)

    def name(self) -> str:
        parts = [self.kind, f"r{self.repeat}", f"s{self.seed}"]
        parts += [f"from{self.source}"] * (self.kind in ("transferred", "copy")) + [self.method] * bool(self.method)
        parts += [f"e{self.epochs}"] * bool(self.epochs) + ([f"lr{self.lr:g}"] if self.lr is not None else [])
        return "-".join(parts)


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
    snapshot_lrs: tuple[float, ...] = ()        # peak learning rates of snapshot runs (default: the recipe's)
    copies: bool = False                        # the control: M copies of the source fine-tuned, no transfer
    annealed: bool = False                      # set by check: full members at e epochs are e-epoch annealed runs

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
    # "also": the recipe's own epochs are always evaluated, as the full ensemble there is what x_full divides by.
    # Under a schedule (cosine, warm-up) the checkpoint after e < E epochs is not annealed: a full member at
    # budget e is then its own e-epoch run with the recipe's schedule (annealed), the fair baseline.
    trained = tuple(sorted(set(given_epochs) | {epochs}))
    snap = recipe.snapshot_epochs or (-(-epochs // M) * M,)
    if recipe.snapshot and (M < 2 or any(e < M or e % M for e in snap)):
        raise LtrayError(f"--snapshot-epochs must be multiples of --members ({M}, >= 2), got {list(snap)}")
    if any(not lr > 0 for lr in recipe.snapshot_lrs):
        raise LtrayError(f"--snapshot-lrs must be > 0, got {list(recipe.snapshot_lrs)}")
    return replace(recipe, trained_epochs=trained, snapshot_epochs=tuple(sorted(set(snap))),
                   stages=tuple(sorted(set(recipe.stages))), snapshot_lrs=tuple(sorted(set(recipe.snapshot_lrs))),
                   annealed=scheduled)


def plan(recipe: Recipe, epochs: int, seed_source: int | None = None) -> list[Unit]:
    """Every unit of every repeat. With a given trajectory, `seed_source` is its seed."""
    units = []
    for r in range(recipe.repeats):
        base = recipe.seed + REPEAT_STRIDE * r
        sources = [seed_source] if seed_source is not None else [base + k for k in range(recipe.sources)]
        targets = [base + 1000 + j for j in range(recipe.members)]
        units += [Unit("source", r, s, source=s) for s in sources]
        budgets = recipe.trained_epochs if recipe.annealed else (None,)
        units += [Unit("full", r, s, epochs=e) for s in targets if recipe.full for e in budgets]
        units += [Unit("snapshot", r, sources[0], epochs=e, lr=lr) for e in recipe.snapshot_epochs if recipe.snapshot
                  for lr in recipe.snapshot_lrs or (None,)]
        moved = list(enumerate(targets[:recipe.transferred_per_repeat()]))
        units += [Unit("transferred", r, t, source=sources[j % len(sources)], method=m) for m in recipe.methods
                  for j, t in moved]
        units += [Unit("copy", r, t, source=sources[j % len(sources)]) for j, t in moved if recipe.copies]
    return units


def source_epochs(recipe: Recipe, epochs: int) -> tuple[int, ...]:
    """The source checkpoints evaluated: the trained-epochs curve (at a constant lr only: else a checkpoint before
    the end is not annealed), and the last M for the checkpoint ensemble."""
    last = range(max(1, epochs - recipe.members + 1), epochs + 1)
    return tuple(sorted((set() if recipe.annealed else set(recipe.trained_epochs)) | set(last)))


# ---- assembling ensembles from members (pure) ----------------------------------------------------------------

def assemble(recipe: Recipe, epochs: int, units: dict[Unit, list], labels: np.ndarray, val_labels: np.ndarray,
             finetune: dict) -> list[dict]:
    """ENSEMBLE_SCHEMA rows (without arch and provenance) of every ensemble of every repeat; `finetune` holds the
    transferred members' finetune_lr, finetune_optimizer and T. Full ensembles come in every size 1..M (the
    first m members), so that each row's deep-ensemble equivalent is read off them (at the recipe's epochs, in
    the same repeat). Each row has its validation accuracy and NLL (`val_labels`: the validation split's) and
    its test NLL and ECE after temperature scaling fitted on validation."""
    from ..metrics import deep_ensemble_equivalent, ensemble_metrics, mean_probs, member_metrics, temperature_scaled

    M, rows = recipe.members, []

    def at(unit: Unit, e: int):
        return next(m for m in units[unit] if m.row["epochs"] == e)

    def add(repeat, kind, members, source_seconds, own_seconds, sources, epochs_, method="sgd", stage=None,
            work=None, lr=None):
        """`work`: the ensemble's epochs_eq where its members do not add up to it (one run's checkpoints; the
        sources behind transferred members, each counted once), else the sum of its members'."""
        row = dict(repeat=repeat, kind=kind, method=method, size=len(members), sources=sources,
                   with_sources=recipe.with_sources if kind == "transferred" else False, epochs=epochs_,
                   finetune_epochs=stage, **(finetune if kind in ("transferred", "copy") else dict.fromkeys(finetune)),
                   lr=lr, seeds=",".join(str(m.row["seed"]) for m in members), n_test=len(labels),
                   source_seconds=source_seconds, seconds=source_seconds + own_seconds,
                   epochs_eq=work if work is not None else sum(m.row["epochs_eq"] for m in members),
                   **_where(members), **ensemble_metrics([m.probs for m in members], labels))
        if kind == "copy":
            row["T"] = None
        val = mean_probs([m.val_probs for m in members])
        on_val = member_metrics(val, val_labels)
        row.update(val_acc=on_val["test_acc"], val_nll=on_val["test_nll"])
        row.update(temperature_scaled(val, val_labels, mean_probs([m.probs for m in members]), labels))
        rows.append(row)

    for r in range(recipe.repeats):
        mine = [u for u in units if u.repeat == r]
        srcs = [u for u in mine if u.kind == "source"]
        run_seconds = {u.seed: at(u, epochs).row["seconds"] for u in srcs}
        lr = at(srcs[0], epochs).row["lr"]
        for e in sorted({m.row["epochs"] for m in units[srcs[0]]} & set(recipe.trained_epochs)):
            member = at(srcs[0], e)
            add(r, "source", [member], member.row["seconds"], 0.0, 1, e, work=float(e), lr=lr)
        if M >= 2 and epochs >= M:
            add(r, "checkpoint", [at(srcs[0], e) for e in range(epochs - M + 1, epochs + 1)],
                run_seconds[srcs[0].seed], 0.0, 1, epochs, work=float(epochs), lr=lr)
        for u in (u for u in mine if u.kind == "snapshot"):
            members = units[u]   # one run: its seconds and epochs are its last snapshot's
            add(r, "snapshot", members, max(m.row["seconds"] for m in members), 0.0, 1, u.epochs,
                work=float(u.epochs), lr=members[0].row["lr"])
        full = [u for u in mine if u.kind == "full"]
        for e in recipe.trained_epochs if full else ():
            members = [at(u, e) for u in full if u.epochs in (None, e)]
            for m in range(1, len(members) + 1):
                add(r, "full", members[:m], 0.0, sum(x.row["seconds"] for x in members[:m]), m, e, lr=lr)
        for method in recipe.methods + ("copy",) * recipe.copies:
            kind = "copy" if method == "copy" else "transferred"
            moved = [u for u in mine if u.kind == kind and (kind == "copy" or u.method == method)]
            extra = [at(u, epochs) for u in srcs] if recipe.with_sources else []
            for stage in recipe.stages:
                members = [at(u, stage) for u in moved]
                add(r, kind, extra + members, sum(run_seconds.values()),
                    sum(m.row["seconds"] for m in members), len(srcs), stage, method, stage,
                    work=epochs * len(srcs) + sum(m.row["epochs_eq"] for m in members))
    for r in range(recipe.repeats):  # against the M-member full ensemble of the same repeat at the recipe's epochs
        full = [x for x in rows if x["repeat"] == r and x["kind"] == "full" and x["epochs"] == epochs]
        biggest = max(full, key=lambda x: x["size"], default=None)
        curve = [x["test_nll"] for x in sorted(full, key=lambda x: x["size"])]
        for x in rows:
            if x["repeat"] == r:
                x["x_full"] = x["seconds"] / biggest["seconds"] if biggest else float("nan")
                x["x_full_eq"] = x["epochs_eq"] / biggest["epochs_eq"] if biggest else float("nan")
                x["dee"] = deep_ensemble_equivalent(x["test_nll"], curve) if curve else float("nan")
    return rows


def _where(members) -> dict:
    """device and threads of an ensemble: its members' when they agree, else "mixed" and None."""
    devices, threads = {m.row.get("device") for m in members}, {m.row.get("threads") for m in members}
    return {"device": devices.pop() if len(devices) == 1 else "mixed",
            "threads": threads.pop() if len(threads) == 1 else None}


def ci95(values) -> float:
    """Half-width of the 95 % confidence interval of the mean (Student's t; NaN for fewer than 2 values)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def summary_table(ensembles):
    """One row per kind of ensemble and setting (a DataFrame): means over repeats (the deep-ensemble equivalent:
    median, as it can be inf), and the 95 % interval of the mean test accuracy (acc_ci)."""
    keys = ["kind", "method", "size", "sources", "with_sources", "epochs", "lr"]
    df = ensembles.assign(order=ensembles.kind.map(KINDS.index))
    for col in ("lr", "epochs_eq", "x_full_eq", "dee", "test_nll_ts"):   # Parquet written before these existed
        if col not in df:
            df[col] = np.nan
    g = df.groupby(keys + ["order"], dropna=False, sort=False)
    table = g.agg(acc=("test_acc", "mean"), acc_ci=("test_acc", ci95), nll=("test_nll", "mean"),
                  nll_ts=("test_nll_ts", "mean"), ece=("test_ece", "mean"), disagree=("disagreement", "mean"),
                  gain=("gain", "mean"), epochs_eq=("epochs_eq", "mean"), x_full_eq=("x_full_eq", "mean"),
                  seconds=("seconds", "mean"), x_full=("x_full", "mean"), dee=("dee", "median"),
                  n=("repeat", "count"))
    return table.reset_index().sort_values(["order", "method", "sources", "size", "epochs"]).drop(columns="order")


def format_table(table, n_test: int) -> str:
    rep = int(table.n.max())
    head = (f"test split: {n_test} images (one image = {100 / n_test:.2f} pt); "
            + (f"mean over {rep} repeats (acc: mean ± 95 % interval)" if rep > 1 else "one repeat")
            + "; ep-eq: passes over the training set; dee: deep-ensemble equivalent (full-ensemble size of equal NLL; "
            "median)")
    out = table.assign(acc=[f"{a:.2f}" + (f" ± {c:.2f}" if rep > 1 and c == c else "")
                            for a, c in zip(table.acc, table.acc_ci)],
                       kind=[k + ("+src" if w else "") for k, w in zip(table.kind, table.with_sources)])
    cols = ["kind", "method", "size", "sources", "epochs", "acc", "nll", "nll_ts", "ece", "disagree", "gain",
            "epochs_eq", "x_full_eq", "seconds", "x_full", "dee"]
    fmt = {"nll": "{:.3f}", "nll_ts": "{:.3f}", "ece": "{:.2f}", "disagree": "{:.2f}", "gain": "{:+.2f}",
           "epochs_eq": "{:.1f}", "x_full_eq": "{:.2f}", "seconds": "{:.1f}", "x_full": "{:.2f}", "dee": "{:.2f}"}
    text = out[cols].rename(columns={"epochs_eq": "ep-eq", "x_full_eq": "x_full(ep)", "nll_ts": "nll(T)"}) \
        .to_string(index=False, na_rep="-", formatters={{"epochs_eq": "ep-eq", "x_full_eq": "x_full(ep)",
                                                          "nll_ts": "nll(T)"}.get(k, k): f.format
                                                         for k, f in fmt.items()})
    return head + "\n" + text
