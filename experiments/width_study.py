"""Width study: how far source training moves the first layer, against the final accuracy of Naive, FGMT and the
Oracle, for the MNIST 2-MLP at several widths and learning rates (T = 10, cosine lambda, 3 seed pairs).

Naive ends at 80 % at width 1024 and at 29 % at width 4096 (lr 0.01): the question is whether the first layer's
movement ||W1^T - W1^0|| / ||W1^0|| explains it. Each width is one run of experiments/reproduce_mnist.py (its
costs.parquet holds the ratio and each method's final accuracy per seed pair); trained trajectories are shared
through --cache, so a width already trained elsewhere costs only its transfers. Writes <out>/w<width>/ (that
script's files), <out>/width.parquet, <out>/width.png and <out>/summary.md.

    python experiments/width_study.py --data-root ../shared/datasets --out experiments/results/width
    python experiments/width_study.py --smoke --out /tmp/smoke-width        # digits, seconds
    python experiments/width_study.py --out experiments/results/width --plot-only
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ltray.analysis.plots import COLORS, MARKERS, NAMES, figure, letter, save_figure
from ltray.results import write_parquet

METHODS = ("naive", "fgmt", "oracle")


def collect(out: Path, widths: list[int]) -> pd.DataFrame:
    """One row per (width, lr, method, seed pair) from each width's costs.parquet (cosine schedule only)."""
    frames = []
    for w in widths:
        costs = pd.read_parquet(out / f"w{w}" / "costs.parquet")
        costs = costs[costs.schedule == "cosine"]
        frames.append(costs.assign(width=w)[["width", "lr", "T", "method", "seed_source", "seed_target",
                                             "first_layer_ratio", "final_val_acc", "source_val_acc"]])
    return pd.concat(frames, ignore_index=True)


def summary(df: pd.DataFrame, seconds: float | None) -> str:
    g = df.groupby(["lr", "width", "method"])
    stats = g.agg(ratio=("first_layer_ratio", "mean"), acc=("final_val_acc", "mean"), sd=("final_val_acc", "std"),
                  source=("source_val_acc", "mean"), n=("final_val_acc", "size")).reset_index()
    ran = f" ({seconds:.0f} s)" if seconds else ""
    lines = [f"# Width study{ran}", "",
             "`python experiments/width_study.py`: MNIST 2-MLP, SGD momentum 0.9, batch 128, 10 epochs; FGMT T = 10, "
             "cosine lambda; validation accuracy %, mean ± std over n seed pairs. Ratio = ||W1^T - W1^0|| / ||W1^0|| "
             "of the source (how far training moves the first layer).", "",
             "| lr | width | ratio | source | " + " | ".join(NAMES[m] for m in METHODS) + " | n |",
             "|---|---|---|---|" + "---|" * len(METHODS) + "---|"]
    for (lr, width), s in stats.groupby(["lr", "width"]):
        by = s.set_index("method")
        cells = [f"{by.acc[m]:.2f} ± {by.sd[m]:.2f}" if m in by.index else "-" for m in METHODS]
        first = by.iloc[0]
        lines.append(f"| {lr:g} | {width} | {first.ratio:.3f} | {first.source:.2f} | " + " | ".join(cells)
                     + f" | {int(by.n.min())} |")
    return "\n".join(lines) + "\n"


def plot(df: pd.DataFrame, out: Path, smoke: bool) -> None:
    """(a) the first-layer ratio against width, per lr; (b) each method's final accuracy against that ratio."""
    fig, axes = figure(ncols=2)
    lrs = sorted(df.lr.unique())
    styles = dict(zip(lrs, ["-", "--", ":"]))
    ratios = df.groupby(["lr", "width"]).first_layer_ratio.mean().reset_index()
    for lr in lrs:
        r = ratios[ratios.lr == lr]
        axes[0, 0].plot(r.width, r.first_layer_ratio, styles[lr], marker="o", color="tab:red", label=f"lr {lr:g}")
    axes[0, 0].set(xscale="log", xlabel="hidden width", ylabel=r"$\|W_1^T - W_1^0\| \,/\, \|W_1^0\|$")
    axes[0, 0].set_xticks(sorted(df.width.unique()), [str(w) for w in sorted(df.width.unique())])
    axes[0, 0].legend(fontsize=7)
    letter(axes[0, 0], 0, "first-layer movement of the source")
    stats = df.groupby(["lr", "width", "method"]).agg(ratio=("first_layer_ratio", "mean"),
                                                      acc=("final_val_acc", "mean"),
                                                      sd=("final_val_acc", "std")).reset_index()
    ax = axes[0, 1]
    for m in METHODS:
        for lr in lrs:
            s = stats[(stats.method == m) & (stats.lr == lr)].sort_values("ratio")
            ax.errorbar(s.ratio, s.acc, yerr=s.sd.fillna(0), linestyle=styles[lr], marker=MARKERS[m], color=COLORS[m],
                        markersize=4, capsize=2, label=f"{NAMES[m]}, lr {lr:g}")
            for _, row in s.iterrows():
                ax.annotate(str(row.width), (row.ratio, row.acc), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set(xscale="log", xlabel=r"$\|W_1^T - W_1^0\| \,/\, \|W_1^0\|$ (log)",
           ylabel=r"final validation accuracy of $\theta_2^T$ (%)")
    ax.set_xticks([t for t in (0.1, 0.2, 0.5, 1, 2, 5) if stats.ratio.min() / 1.5 <= t <= stats.ratio.max() * 1.5])
    ax.legend(fontsize=6, ncol=2)
    letter(ax, 1, "final accuracy, labelled with the width")
    for a in axes[0]:   # plain numbers on the log axes, no minor labels
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle("smoke run (digits)" if smoke else "MNIST 2-MLP, T = 10, cosine λ: first-layer movement and final "
                 "transferred accuracy (bars: ± std over seed pairs)", fontsize=9)
    save_figure(fig, out / "width.png")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--out", default="experiments/results/width")
    p.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cache", default="runs/cache", help="trained trajectories are kept here and reused")
    p.add_argument("--smoke", action="store_true", help="digits, widths 16 and 64, 2 epochs, 1 seed: seconds")
    p.add_argument("--plot-only", action="store_true", help="redraw from <out>/w<width>/costs.parquet")
    args = p.parse_args(argv)
    if args.smoke:
        args.widths, args.lrs, args.seeds = [16, 64], [0.1], 1
    out = Path(args.out)
    t0, seconds = time.perf_counter(), None
    if not args.plot_only:
        script = Path(__file__).with_name("reproduce_mnist.py")
        for w in args.widths:
            cmd = [sys.executable, str(script), "--out", str(out / f"w{w}"), "--width", str(w), "--Ts", "10",
                   "--schedules", "cosine", "--methods", ",".join(METHODS), "--seeds", str(args.seeds),
                   "--cache", args.cache, "--data-root", args.data_root, "--lrs", *map(str, args.lrs)]
            cmd += ["--smoke"] if args.smoke else []
            print(f"width {w}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
    df = collect(out, args.widths)
    write_parquet(df, pa.Schema.from_pandas(df, preserve_index=False), out / "width.parquet")
    plot(df, out, args.smoke)
    if not (args.plot_only and (out / "summary.md").exists()):   # a redraw keeps the run's summary (and its time)
        (out / "summary.md").write_text(summary(df, seconds))
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
