"""Reading the analyses' results back: markdown tables (mean ± std over seed pairs, with n) of every analysis
Parquet file in a folder, as quoted in docs/analyses.md, and redrawing every figure from its Parquet file."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import METHODS
from .landscape import barriers


def _pm(values, digits: int = 2) -> str:
    import numpy as np

    v = np.asarray(list(values), float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def summary_markdown(folder: str | os.PathLike) -> str:
    """Markdown tables (mean ± std over seed pairs, n given) of every analysis Parquet file in `folder`."""
    import pandas as pd

    folder, parts = Path(folder), []
    methods = list(METHODS)
    for path in sorted(folder.glob("*_transfer.parquet")) + sorted(folder.glob("*_ablation.parquet")):
        df = pd.read_parquet(path)
        df["variant"] = df.trajectory + df.schedule.fillna("").map(lambda s: f", {s}" if s else "")
        rows = []
        for (variant, method), g in df.groupby(["variant", "method"], sort=False):
            per_seed = g[g.t >= 1].groupby(["seed_source", "seed_target"])
            peak = per_seed.val_acc.max()
            step = per_seed.apply(lambda s: int(s.loc[s.val_acc.idxmax(), "t"]), include_groups=False)
            T = int(g["T"].iloc[0])
            agree = g[g.t == T].oracle_agreement if "oracle_agreement" in g else pd.Series(dtype=float)
            rows.append([variant, method, _pm(g[g.t == 1].val_acc), _pm(g[g.t == T // 2].val_acc),
                         _pm(g[g.t == T].val_acc), _pm(peak), f"{step.mean():.1f}",
                         _pm(100 * agree, 1) if agree.notna().all() and len(agree) else "-", str(len(peak))])
        rows.sort(key=lambda r: (r[0], methods.index(r[1])))
        parts.append(f"**{path.name}** (validation accuracy %, T = {T}; agreement: % of hidden units pi_T maps "
                     f"as the Oracle's pi)\n\n" + _table(["trajectory", "method", "t=1", f"t={T // 2}",
                                                           f"t={T} (final)", "peak", "peak step",
                                                           "agreement", "n"], rows))
    for path in sorted(folder.glob("*_subsequent.parquet")):
        df = pd.read_parquet(path)
        epochs = [e for e in (0, 1, 2, 5, 10) if e in set(df.epoch)]
        rows = [[start] + [_pm(g[g.epoch == e].val_acc) for e in epochs] + [str(g.seed_source.nunique())]
                for start, g in sorted(df.groupby("start"), key=lambda kv: (methods + ["standard"]).index(kv[0]))]
        parts.append(f"**{path.name}** (validation accuracy %, epoch 0 = the start)\n\n"
                     + _table(["start"] + [f"epoch {e}" for e in epochs] + ["n"], rows))
    for path in sorted(folder.glob("*_generalisation.parquet")):
        df = pd.read_parquet(path)
        epochs = [e for e in (0, 1, 2, 5, 10) if e in set(df.epoch)]
        share = lambda v: "-" if pd.isna(v) else f"{100 * v:g}%"  # noqa: E731
        rows = [[start, share(src), share(tgt)] + [_pm(g[g.epoch == e].test_acc) for e in epochs]
                + [_pm(g[g.epoch == epochs[-1]].val_acc), str(g.seed_source.nunique())]
                for (start, src, tgt), g in df.groupby(["start", "source_pretrain", "target_pretrain"], dropna=False)]
        rows.sort(key=lambda r: (r[0] == "standard", r[2] != "100%"))
        parts.append(f"**{path.name}** (test accuracy % after each epoch of Adam from the start; source / target: "
                     f"the share of the pre-training images their bodies saw)\n\n"
                     + _table(["start", "source", "target"] + [f"epoch {e}" for e in epochs]
                              + [f"val, epoch {epochs[-1]}", "n"], rows))
    for path in sorted(folder.glob("*_paths.parquet")):
        df = pd.read_parquet(path)
        rows = []
        for (case, method), g in df.groupby(["case", "method"]):
            per_seed = g.groupby(["seed_source", "seed_target"])
            # recomputed from the path itself, so files written before these columns existed read the same
            found = pd.DataFrame([barriers(p.alpha.to_numpy(), p.loss.to_numpy(), p.acc.to_numpy())
                                  for p in (pair.sort_values("alpha") for _, pair in per_seed)])
            rows.append([case, method, _pm(found.barrier, 3), _pm(found.barrier_rel, 3), _pm(found.acc_barrier),
                         _pm(g[g.alpha == 0].loss, 3), _pm(per_seed.loss.max(), 3), _pm(g[g.alpha == 1].loss, 3),
                         _pm(per_seed.acc.min()), str(len(per_seed))])
        rows.sort(key=lambda r: (r[0], methods.index(r[1])))
        parts.append(f"**{path.name}** (validation loss along (1 - alpha) a + alpha b; a = Source* or Trained, "
                     f"b = transferred theta2^T; relative barrier = loss barrier / mean end loss; accuracy "
                     f"barrier = largest drop below the line between the end accuracies, pt)\n\n" + _table(
                         ["a", "method", "loss barrier", "relative", "accuracy barrier", "loss at a", "max loss",
                          "loss at b", "min acc %", "n"], rows))
    return "\n\n".join(parts)


def replot(folder: str | os.PathLike) -> list[Path]:
    """Redraw every analysis figure in `folder` from its Parquet file (after a change to the plots only)."""
    import pandas as pd

    from . import plots

    figures = {"transfer": plots.transfer_figure, "subsequent": plots.subsequent_figure,
               "paths": plots.paths_figure, "plane": plots.planes_figure, "ablation": plots.ablation_figure,
               "generalisation": plots.generalisation_figure}
    known = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}
    written = []
    for path in sorted(Path(folder).glob("*.parquet")):
        what = path.stem.rsplit("_", 1)[-1]
        if what not in figures:
            continue
        df = pd.read_parquet(path)
        kwargs = {}
        if what == "transfer":
            classes = df.classes.iloc[0]
            # a "-permuted" task (ltray.results) has the classes of the one it shuffles
            n = len(classes.split(",")) if isinstance(classes, str) else \
                known.get(df.dataset.iloc[0].removesuffix("-permuted"))
            kwargs["chance"] = 100.0 / n if n else None
        png = path.parent / f"{path.stem}.png"
        written.append(plots.save_figure(figures[what](df.to_dict("records"), **kwargs), png))
    return written
