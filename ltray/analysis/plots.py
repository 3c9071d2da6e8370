"""Figure helpers shared by the analyses: mean +- std bands over seeds, a heat map with contour lines.

Object-oriented matplotlib (a `Figure` with the Agg canvas, never pyplot), so importing ltray leaves
matplotlib's global state alone and figures are freed when they go out of scope.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..core.trajectory import atomic_write
from ..results import summarise
from .landscape import barriers, surface_array

# One colour and name per transfer method / start point, the same in every figure.
COLORS = {"naive": "tab:gray", "oracle": "black", "gmt": "tab:blue", "fgmt": "tab:orange", "standard": "tab:green",
          "trained": "tab:red"}
NAMES = {"naive": "Naive", "oracle": "Oracle", "gmt": "GMT", "fgmt": "FGMT", "standard": "Standard",
         "trained": "Trained"}


def figure(ncols: int = 1, nrows: int = 1, panel: tuple[float, float] = (4.6, 3.4)) -> tuple[Figure, np.ndarray]:
    """A figure with an (nrows, ncols) array of axes, each panel `panel` inches."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


MARKERS = {"naive": "s", "oracle": "D", "gmt": "o", "fgmt": "^", "standard": "v", "trained": "P"}
PANEL = "({})"   # panel letters: (a), (b), ...


def band(ax, df: pd.DataFrame, x: str, y: str, hue: str, order: Sequence[str] | None = None,
         names: Mapping[str, str] | None = None, colors: Mapping[str, str] | None = None,
         linestyle: str = "-", marker: str | None = None, dodge: float = 0.0) -> pd.DataFrame:
    """Plot mean +- std of `y` over the rows sharing (`hue`, `x`) (one row per seed) as a line with a shaded
    band; the legend entry gives n, the number of seeds. Each hue has its own marker, and with `dodge` the
    curves are shifted apart along x by that fraction of the x step, so one curve cannot hide another that it
    overlaps. Returns the summary (hue, x, mean, std, n)."""
    names = {**NAMES, **(names or {})}
    colors = {**COLORS, **(colors or {})}
    stats = summarise(df, [hue, x], y)
    keys = list(order) if order is not None else list(dict.fromkeys(stats[hue]))
    keys = [k for k in keys if (stats[hue] == k).any()]
    xs = np.sort(stats[x].unique())
    step = float(np.min(np.diff(xs))) if len(xs) > 1 else 1.0
    for i, key in enumerate(keys):
        s = stats[stats[hue] == key].sort_values(x)
        n = int(s["n"].min())
        std = s["std"].fillna(0.0).to_numpy()
        at = s[x].to_numpy(float) + dodge * step * (i - (len(keys) - 1) / 2)
        line, = ax.plot(at, s["mean"], linestyle=linestyle, marker=marker or MARKERS.get(key, "o"), markersize=3.5,
                        color=colors.get(key), label=f"{names.get(key, key)} (n={n})")
        ax.fill_between(at, s["mean"] - std, s["mean"] + std, color=line.get_color(), alpha=0.15, linewidth=0)
    return stats


def letter(ax, i: int, title: str = "") -> None:
    """Panel letter (a), (b), ... and title, on the left of the panel's top."""
    ax.set_title(f"{PANEL.format(chr(97 + i))} {title}".strip(), loc="left", fontsize=9)


def bands_note(fig: Figure, unit: str = "seed pairs") -> None:
    fig.text(0.995, 0.005, f"lines: mean; bands: ± std over n {unit} (n in the legend)", ha="right", va="bottom",
             fontsize=7, color="dimgray")


def heatmap(ax, u: np.ndarray, v: np.ndarray, z: np.ndarray, points: Mapping[str, tuple[float, float]] | None = None,
            label: str = "loss", log: bool = True, levels: int = 12, cmap: str = "viridis", norm=None,
            colorbar: bool = True):
    """z[i, j] at (u[j], v[i]) as a colour map with contour lines (log-spaced when `log`), the named `points`
    marked and labelled. `norm` shares one colour scale between panels. Contour labels near a point are left
    out, so they do not collide with its name. Returns the mappable (for a shared colour bar)."""
    z = np.asarray(z, dtype=float)
    if norm is None and log:
        norm = shared_norm([z])
    contour_levels = np.geomspace(norm.vmin, norm.vmax, levels) if log else levels
    mesh = ax.pcolormesh(u, v, z, norm=norm, cmap=cmap, shading="gouraud")
    cs = ax.contour(u, v, z, levels=contour_levels, colors="white", linewidths=0.6, alpha=0.8)
    texts = ax.clabel(cs, fontsize=6, fmt=lambda val: f"{val:.3g}", inline=False)
    span = max(float(np.ptp(u)), float(np.ptp(v)), 1e-12)
    for text in texts:
        tx, ty = text.get_position()
        if any(np.hypot(tx - pu, ty - pv) < 0.12 * span for pu, pv in (points or {}).values()):
            text.remove()
    mid = (np.min(u) + np.max(u)) / 2
    for name, (pu, pv) in (points or {}).items():
        ax.plot([pu], [pv], marker="o", markersize=6, color="white", markeredgecolor="black")
        right = pu > mid  # label towards the inside of the plot, so it is not cut off at the edge
        ax.annotate(name, (pu, pv), textcoords="offset points", xytext=(-5 if right else 5, 5), fontsize=8,
                    color="white", fontweight="bold", ha="right" if right else "left")
    ax.set_aspect("equal", adjustable="box")
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, shrink=0.85).set_label(label)
    return mesh


def shared_norm(surfaces) -> LogNorm:
    """One logarithmic colour scale over several loss surfaces."""
    lo = max(min(float(np.nanmin(z)) for z in surfaces), 1e-6)
    hi = max(max(float(np.nanmax(z)) for z in surfaces), lo * 1.0001)
    return LogNorm(lo, hi)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write the figure as PNG atomically (a temp file beside `path`, then os.replace)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


# ---- `ltray landscape` figures ------------------------------------------------------------------------

def path_figure(rows: Sequence[dict], title: str = "") -> Figure:
    """Loss and accuracy along one path (no seeds: the command's figure)."""
    fig, axes = figure(2, 1)
    a = [r["alpha"] for r in rows]
    first, last = rows[0], rows[-1]
    for ax, key, name in ((axes[0, 0], "loss", "loss"), (axes[0, 1], "acc", "accuracy (%)")):
        ax.plot(a, [r[key] for r in rows], marker="o", markersize=3, label=f"{first['point_a']} -> {last['point_b']}")
        if key == "loss":
            ax.plot([0, 1], [first[key], last[key]], linestyle="--", color="gray", label="linear in the end losses")
        ax.set_xlabel(f"alpha (0 = {first['point_a']}, 1 = {last['point_b']})")
        ax.set_ylabel(f"{first['split']} {name}")
        ax.legend(fontsize=8)
    axes[0, 0].set_title(f"{title} loss barrier {first['barrier']:.3g} ({first['barrier_rel']:.1%} of the end "
                         f"losses), accuracy barrier {first['acc_barrier']:.2f} pt".strip(), fontsize=8)
    return fig


def plane_figure(rows: Sequence[dict], anchors: Sequence[dict], title: str = "", split: str = "val") -> Figure:
    """The loss surface of `ltray landscape` with three points."""
    fig, axes = figure(1, 1, panel=(5.2, 4.4))
    ax = axes[0, 0]
    u, v, z = surface_array(rows)
    heatmap(ax, u, v, z, {a["point"]: (a["u"], a["v"]) for a in anchors}, label=f"{split} loss (log scale)")
    ax.set_xlabel("u (parameter-space distance)")
    ax.set_ylabel("v (parameter-space distance)")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# ---- the analyses' figures (rows as written to Parquet) ------------------------------------------------

ORDER = ["naive", "oracle", "gmt", "fgmt", "standard"]


def _title(df: pd.DataFrame) -> str:
    """Dataset (and pre-training), model, width, the source's lr, and T with the lambda schedule when the rows
    have them, e.g. 'MNIST, mlp width 1024, source lr 0.01, T = 10 (cosine)'."""
    r = {k: (v if pd.notna(v) else None) for k, v in df.iloc[0].items()}  # Parquet nulls come back as NaN
    task = f"{r['dataset']}" + (f" {{{r['classes']}}}" if r.get("classes") else "")
    if r.get("scenario") == "pretrained":
        pre = f"{r['pretrain_dataset']}" + (f" {{{r['pretrain_classes']}}}" if r.get("pretrain_classes") else "")
        task = f"pre-trained on {pre} -> fine-tuned on {task}"
    parts = [task, f"{r['model']}" + (f" width {int(r['width'])}" if r.get("width") is not None else "")]
    if r.get("source_lr") is not None:
        parts.append(f"source lr {r['source_lr']:g}")
    if r.get("T") is not None:
        parts.append(f"T = {int(r['T'])}" + (f" ({r['schedule']} λ)" if r.get("schedule") else ""))
    return ", ".join(parts)


def transfer_figure(rows, chance: float | None = None) -> Figure:
    """Validation accuracy and loss of θ2^t along the transfer from t = 0, mean ± std over seed pairs (paper
    Fig. 4), and, when the rows have it, how much of π_t agrees with the Oracle's permutation."""
    df = pd.DataFrame(rows)
    panels = [("val_acc", "validation accuracy (%)", r"accuracy of $\theta_2^t$"),
              ("val_loss", "validation loss (log scale)", r"loss of $\theta_2^t$")]
    if "oracle_agreement" in df and df.oracle_agreement.notna().any():
        df = df.assign(agreement=100 * df.oracle_agreement)
        panels.append(("agreement", r"units $\pi_t$ maps as the Oracle's $\pi$ (%)", r"agreement of $\pi_t$"))
    fig, axes = figure(len(panels), 1)
    for i, (ax, (y, label, title)) in enumerate(zip(axes[0], panels)):
        # the Oracle agrees with itself (100 %) by definition: leave it out so the others' scale shows
        band(ax, df[df.method != "oracle"] if y == "agreement" else df, "t", y, "method", order=ORDER, dodge=0.08)
        ax.set_xlabel("transfer step $t$")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        letter(ax, i, title)
    if chance is not None:
        axes[0, 0].axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
    axes[0, 1].set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(_title(df), fontsize=9)
    bands_note(fig)
    return fig


def subsequent_figure(rows) -> Figure:
    """Validation accuracy per epoch of training from each method's best transferred point and from the plain
    initialisation (paper Fig. 5); right: from epoch 1 on, the y range fitted to the transferred starts so
    their differences show (the standard start may lie below it: its values are in the left panel)."""
    df = pd.DataFrame(rows)
    fig, axes = figure(2, 1)
    band(axes[0, 0], df, "epoch", "val_acc", "start", order=ORDER, dodge=0.06)
    later = df[df.epoch >= 1]
    stats = band(axes[0, 1], later, "epoch", "val_acc", "start", order=ORDER, dodge=0.06)
    moved = stats[stats.start != "standard"]
    lo, hi = float((moved["mean"] - moved["std"].fillna(0)).min()), float((moved["mean"] + moved["std"].fillna(0)).max())
    pad = 0.15 * max(hi - lo, 0.1)
    axes[0, 1].set_ylim(lo - pad, hi + pad)
    for i, (ax, title) in enumerate(((axes[0, 0], "from the start (epoch 0)"),
                                     (axes[0, 1], "epochs ≥ 1, zoomed on the transferred starts"))):
        ax.set_xlabel("epoch of subsequent training (Adam)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation accuracy (%)")
        letter(ax, i, title)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(_title(df), fontsize=9)
    bands_note(fig)
    return fig


def generalisation_figure(rows) -> Figure:
    """Test accuracy per epoch of training from a transferred start and from the plain pre-trained start, for a
    target pre-trained on all the data and on the source's share (paper v2 Fig. 8); right: from epoch 1 on."""
    df = pd.DataFrame(rows)
    share = float(df.source_pretrain.dropna().iloc[0])
    pct = f"{100 * share:g}%"
    df["series"] = [f"{s}|{t}" for s, t in zip(df.start, df.target_pretrain)]
    names, colors = {}, {}
    for key in df.series.unique():
        start, target = key.split("|")
        where = "full" if float(target) == 1.0 else pct
        names[key] = f"Standard ({where})" if start == "standard" else f"{NAMES.get(start, start)} ({pct} → {where})"
        colors[key] = COLORS.get(start) if where == "full" else ("tab:olive" if start == "standard" else "tab:brown")
    order = sorted(names, key=lambda k: (k.split("|")[0] == "standard", -float(k.split("|")[1])))
    fig, axes = figure(2, 1)
    band(axes[0, 0], df, "epoch", "test_acc", "series", order=order, names=names, colors=colors, dodge=0.06)
    band(axes[0, 1], df[df.epoch >= 1], "epoch", "test_acc", "series", order=order, names=names, colors=colors,
         dodge=0.06)
    for i, (ax, title) in enumerate(((axes[0, 0], "from the start (epoch 0)"), (axes[0, 1], "epochs ≥ 1"))):
        ax.set_xlabel("epoch after the transfer (Adam)")
        ax.set_ylabel("test accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        letter(ax, i, title)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{_title(df)}\nthe source's body pre-trained on {pct} of the pre-training images", fontsize=9)
    bands_note(fig)
    return fig


def paths_figure(rows) -> Figure:
    """Loss and accuracy along the linear paths Source* -> transferred and Trained -> transferred (paper
    Fig. 6a/b), the two cases on shared y-axes; the loss on a log scale when one curve dwarfs the others; the
    legend gives each method's loss barrier, mean ± std."""
    df = pd.DataFrame(rows)
    fig, axes = figure(2, 2)
    for i in range(2):
        axes[i, 1].sharey(axes[i, 0])
    for j, (case, start) in enumerate((("source", r"Source* $= \pi\theta_1^T$"),
                                       ("trained", r"Trained $\theta_2^T$"))):
        sub = df[df.case == case]
        per_path = [dict(method=m, **barriers(p.alpha.to_numpy(), p.loss.to_numpy(), p.acc.to_numpy()))
                    for (m, _, _), p in ((k, g.sort_values("alpha")) for k, g in
                                         sub.groupby(["method", "seed_source", "seed_target"]))]
        found = pd.DataFrame(per_path).groupby("method")
        names = {m: f"{NAMES.get(m, m)}: loss barrier {b.barrier.mean():.3f} ± {b.barrier.std():.3f}, "
                    f"acc {b.acc_barrier.mean():.2f} pt" for m, b in found}
        for i, (y, label) in enumerate((("loss", "validation loss"), ("acc", "validation accuracy (%)"))):
            ax = axes[i, j]
            band(ax, sub, "alpha", y, "method", order=ORDER, names=names if i == 0 else None, dodge=0.1)
            ax.set_xlabel(f"α (0: {start}, 1: transferred " + r"$\theta_2^T$)")
            ax.set_ylabel(label)
            letter(ax, 2 * i + j, f"{start} ↔ transferred" if i == 0 else "")
        axes[0, j].legend(fontsize=7)
    losses = df.groupby(["method", "alpha"]).loss.mean()
    if losses.max() > 10 * losses.min():
        axes[0, 0].set_yscale("log")                  # shared with (b)
        for ax in axes[0]:
            ax.set_ylabel("validation loss (log scale)")
    fig.suptitle(_title(df), fontsize=9)
    bands_note(fig)
    return fig


def planes_figure(rows) -> Figure:
    """The loss surface on the plane through the anchor points, one panel per seed pair, on one colour scale
    (paper Fig. 6c)."""
    df = pd.DataFrame(rows)
    pairs = sorted({(int(a), int(b)) for a, b in zip(df.seed_source, df.seed_target)})
    fig, axes = figure(len(pairs), 1, panel=(4.0, 4.4))
    surfaces = {p: surface_array(df[(df.seed_source == p[0]) & (df.seed_target == p[1]) & df.point.isna()]
                                 .to_dict("records")) for p in pairs}
    norm = shared_norm([z for _, _, z in surfaces.values()])
    mesh = None
    for i, (ax, (s1, s2)) in enumerate(zip(axes[0], pairs)):
        sub = df[(df.seed_source == s1) & (df.seed_target == s2)]
        anchors = sub[sub.point.notna()]
        u, v, z = surfaces[(s1, s2)]
        mesh = heatmap(ax, u, v, z, {NAMES.get(p, p): (a, b) for p, a, b in zip(anchors.point, anchors.u, anchors.v)},
                       norm=norm, colorbar=False)
        ax.set_xlabel("u (parameter-space distance)")
        ax.set_ylabel("v (parameter-space distance)")
        letter(ax, i, f"seeds ({s1}, {s2})")
    fig.colorbar(mesh, ax=list(axes[0]), shrink=0.85).set_label(f"{df.split.iloc[0]} loss (log scale)")
    fig.suptitle(_title(df) + r": plane through Trained, Oracle and FGMT $\theta_2^T$", fontsize=9)
    return fig


def ablation_figure(rows, methods: tuple[str, ...] = ("gmt", "fgmt")) -> Figure:
    """Sec. 3.3 / Fig. 3: left, cosine vs uniform λ schedule of the linear trajectory; right, linear (cosine)
    vs actual per-epoch trajectory, on shared y-axes. Solid: the paper's default (linear, cosine)."""
    df = pd.DataFrame(rows)
    df = df[df.method.isin(methods)]
    default = df[(df.trajectory == "linear") & (df.schedule == "cosine")]
    other = {"schedule": df[(df.trajectory == "linear") & (df.schedule == "uniform")],
             "trajectory": df[df.trajectory == "actual"]}
    fig, axes = figure(2, 1)
    axes[0, 1].sharey(axes[0, 0])
    for i, (ax, (what, alt), alt_name) in enumerate(zip(axes[0], other.items(), ("linear, uniform",
                                                                                 "actual checkpoints"))):
        band(ax, default, "t", "val_acc", "method", order=list(methods), dodge=0.06,
             names={m: f"{NAMES[m]} linear, cosine" for m in methods})
        band(ax, alt.assign(t=alt.t + 0.2), "t", "val_acc", "method", order=list(methods), linestyle="--",
             dodge=0.06, names={m: f"{NAMES[m]} {alt_name}" for m in methods})   # shifted off the default's
        ax.set_xlabel("transfer step $t$")
        ax.set_ylabel("validation accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        letter(ax, i, f"{what}: linear-cosine vs {alt_name}")
        ax.legend(fontsize=7)
    fig.suptitle(_title(df.drop(columns=["T", "schedule"], errors="ignore")), fontsize=9)
    bands_note(fig)
    return fig


KIND_STYLE = {"source": ("tab:gray", "s", "single source model"), "checkpoint": ("tab:brown", "v", "checkpoint ensemble"),
              "snapshot": ("tab:purple", "D", "snapshot ensemble"), "full": ("black", "o", "full ensemble"),
              "copy": ("tab:cyan", "P", "copies of the source, fine-tuned (no transfer)"),
              "transferred": ("tab:orange", "^", "transferred")}


def _clip_to_full(axes, df: pd.DataFrame, points: list) -> None:
    """y-ranges set by the full ensemble's curve (1 pt below its least accurate point, 1.5x its highest NLL), so
    that one poor setting does not flatten the rest; how many points fall outside is written on the panel."""
    full = df[df.kind == "full"].groupby("epochs")[["test_acc", "test_nll"]].mean()
    if full.empty:
        return
    low, high = full.test_acc.min() - 1.0, full.test_nll.max() * 1.5
    for ax, outside, limit in ((axes[0], sum(a < low for a, _ in points), dict(bottom=low)),
                               (axes[1], sum(v > high for _, v in points), dict(top=high))):
        ax.set_ylim(**limit)
        if outside:
            ax.text(0.99, 0.01 if "bottom" in limit else 0.99, f"{outside} point{'s' * int(outside > 1)} off the axis",
                    transform=ax.transAxes, fontsize=6, ha="right", va="bottom" if "bottom" in limit else "top",
                    color="0.4")


def ensemble_figure(ensembles: pd.DataFrame, title: str = "", series: pd.Series | None = None) -> Figure:
    """Test accuracy and NLL of every kind of ensemble of the largest size against its compute in passes over the
    training set (epochs_eq; seconds for results written before it existed): one curve per kind (and per
    transferred recipe: `series`, by default method and sources; per peak lr for snapshots), a point per
    setting (numbers: epochs per member, fine-tuning epochs when transferred), error bars = std over repeats."""
    fig, axes = figure(2, 1, panel=(5.6, 4.0))
    size = int(ensembles["size"].max())
    ensembles = ensembles[(ensembles.kind != "full") | (ensembles["size"] == size)]
    work = "epochs_eq" if "epochs_eq" in ensembles and ensembles.epochs_eq.notna().all() else "seconds"
    if series is None:
        series = pd.Series([k if k != "transferred" else f"{NAMES.get(m, m)}, {s} source{'s' if s > 1 else ''}"
                            f"{' + sources' if w else ''}" for k, m, s, w in
                            zip(ensembles.kind, ensembles.method, ensembles.sources, ensembles.with_sources)],
                           index=ensembles.index)
    if "lr" in ensembles and ensembles[ensembles.kind == "snapshot"].lr.nunique() > 1:
        series = series.where(ensembles.kind != "snapshot", "snapshot, peak lr " + ensembles.lr.map("{:g}".format))
    df = ensembles.assign(series=series)
    shades = iter(["tab:orange", "tab:red", "tab:blue", "tab:green", "tab:olive", "tab:cyan", "tab:pink",
                   "gold", "navy", "lime", "darkslategray", "tab:brown", "tab:purple"])
    n = int(df.groupby(["series", "epochs"]).repeat.count().min())
    points = []   # (accuracy, nll) of every point drawn, for the clipped y-ranges
    for name, rows in df.groupby("series", sort=False):
        kind = rows.kind.iloc[0]
        color, marker, label = KIND_STYLE[kind]
        if kind in ("transferred", "snapshot", "copy") and name != kind:   # several series of one kind
            color = next(shades)
        label = f"transferred: {name}" if kind == "transferred" else name if name != kind else label
        stats = rows.groupby("epochs").agg(x=(work, "mean"), acc=("test_acc", "mean"), acc_sd=("test_acc", "std"),
                                           nll=("test_nll", "mean"), nll_sd=("test_nll", "std")).sort_values("x")
        points += list(zip(stats.acc, stats.nll))
        for ax, y in zip(axes[0], ("acc", "nll")):
            ax.errorbar(stats.x, stats[y], yerr=stats[f"{y}_sd"].fillna(0.0), color=color, marker=marker,
                        markersize=4, capsize=2, linewidth=1, label=label)
        if len(stats) > 1:
            for e, (x, acc) in stats[["x", "acc"]].iterrows():
                axes[0, 0].annotate(f"{e}", (x, acc), textcoords="offset points", xytext=(3, -9), fontsize=6,
                                    color=color)
    for ax, label in zip(axes[0], ("test accuracy (%)", "test NLL (nats)")):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("compute: passes over the training set (log)" if work == "epochs_eq"
                      else "compute: seconds of training and transfer (log)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("(a) accuracy (labels: epochs per member)", loc="left", fontsize=9)
    axes[0, 1].set_title("(b) negative log-likelihood", loc="left", fontsize=9)
    _clip_to_full(axes[0], df, points)
    fig.legend(*axes[0, 1].get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncols=3)
    fig.suptitle(f"{title}: ensembles of {size} against compute; mean ± std over {n} repeat"
                 f"{'s' * (n > 1)}", fontsize=10)
    return fig
