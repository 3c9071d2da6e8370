"""Paper Fig. 4a on real MNIST: 2-MLP (784-4096-10), SGD lr 0.01 (the paper's text) and lr 0.1, 10 epochs,
linear trajectories with T in {5, 10} and both lambda schedules, Naive/Oracle/GMT/FGMT, three seed pairs.

Writes <out>/transfer.parquet (one row per lr, T, schedule, method, seed pair, step), <out>/costs.parquet
(wall time of every transfer and its profile beside the source training's) and one PNG per lr.

    python experiments/reproduce_mnist.py --data-root ../shared/datasets --out experiments/results/mnist
    python experiments/reproduce_mnist.py --smoke --out /tmp/smoke      # digits, seconds
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ltray import evaluate
from ltray.analysis.plots import COLORS, NAMES, band, bands_note, figure, letter, save_figure
from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
from ltray.results import COSTS_SCHEMA, TRANSFER_SCHEMA, config_hash, summarise, write_parquet
from ltray.runs import cached_source, pair_outcome


def first_layer_ratio(traj) -> float:
    """||W1^T - W1^0|| / ||W1^0||: how far training moves the first layer (decides Naive's quality)."""
    w0, wT = traj.state(0)["fc1.weight"], traj.state(-1)["fc1.weight"]
    return float((wT - w0).norm() / w0.norm())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--out", default="experiments/results/mnist")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--Ts", type=int, nargs="+", default=[5, 10])
    p.add_argument("--schedules", nargs="+", default=["uniform", "cosine"])
    p.add_argument("--methods", default="naive,oracle,gmt,fgmt")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--width", type=int, default=None, help="hidden width (default 4096, smoke 64)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--solver", default="auto")
    p.add_argument("--cache", default="runs/cache", help="trained trajectories are kept here and reused")
    p.add_argument("--smoke", action="store_true", help="digits, width 64, 2 epochs, T=2, 1 seed: seconds")
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from <out>/transfer.parquet")
    args = p.parse_args()
    if args.smoke:
        args.lrs, args.Ts, args.seeds, args.epochs = [0.1], [2], 1, 2
    args.width = args.width or (64 if args.smoke else 4096)
    data_cfg = DataConfig("digits") if args.smoke else DataConfig("mnist", str(Path(args.data_root).resolve()))
    if args.plot_only:
        df = pd.read_parquet(Path(args.out) / "transfer.parquet")   # files before the one schema said "lr"
        return plot(df.rename(columns={"lr": "source_lr"}), args, Path(args.out))
    data = data_cfg.load()
    model_cfg = ModelConfig("mlp", args.width)
    methods = tuple(args.methods.split(","))
    out = Path(args.out)
    cache = Path(args.cache)
    rows, costs = [], []

    def trained(lr: float, seed: int):
        """Trained once per (lr, seed) and kept in the cache, so reruns and every T/schedule reuse it."""
        return cached_source(data, data_cfg, model_cfg, TrainConfig(epochs=args.epochs, lr=lr), seed, cache)

    # Settings in priority order (T outer), so an interrupted run still has complete T=5 results.
    for T in args.Ts:
        for schedule in args.schedules:
            for lr in args.lrs:
                train_cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=lr, momentum=0.9)
                cfg = TransferConfig(T=T, schedule=schedule, batch_size=128, solver=args.solver)
                run_id = config_hash(data_cfg, model_cfg, train_cfg, cfg)
                for k in range(args.seeds):
                    seed_source, seed_target = k, 1000 + k
                    source, target = trained(lr, seed_source), trained(lr, seed_target)  # target: the oracle's
                    ratio = first_layer_ratio(source)
                    src_acc = evaluate(model_cfg.build(data, 0), source.state(-1), data.val)[1]
                    outcome, new = pair_outcome(data, data_cfg=data_cfg, model_cfg=model_cfg, train_cfg=train_cfg,
                                                transfer_cfg=cfg, methods=methods, source=source,
                                                seed_target=seed_target, run_id=run_id, target=target)
                    print(f"T={T} {schedule} lr={lr} pair {k}: source val {src_acc:.2f}% "
                          f"({source.meta['train_seconds']:.1f} s), ||dW1||/||W1^0|| = {ratio:.3f}", flush=True)
                    rows += new
                    for method, res in outcome.results.items():
                        prof = res.profile
                        costs.append(dict(lr=lr, T=T, schedule=schedule, method=method, seed_source=seed_source,
                                          seed_target=seed_target, transfer_seconds=res.seconds[-1],
                                          source_train_seconds=outcome.source_train_seconds,
                                          fraction_of_training=res.seconds[-1] / outcome.source_train_seconds,
                                          gradients=prof.get("gradients", 0.0),
                                          cost_products=prof.get("cost_products", 0.0),
                                          solves=prof.get("solves", 0.0), evaluation=prof.get("evaluation", 0.0),
                                          first_layer_ratio=ratio, final_val_acc=res.val_acc[-1],
                                          source_val_acc=src_acc))
                        print(f"  {method:6s} acc {' '.join(f'{a:5.2f}' for a in res.val_acc[1:])}"
                              f"  ({res.seconds[-1]:.1f} s: {', '.join(f'{k} {v:.1f}' for k, v in prof.items())})",
                              flush=True)
                    # publish after every pair: an interrupted run keeps everything finished so far
                    write_parquet(pd.DataFrame(rows), TRANSFER_SCHEMA, out / "transfer.parquet")
                    write_parquet(pd.DataFrame(costs), COSTS_SCHEMA, out / "costs.parquet")
    plot(pd.DataFrame(rows), args, out)
    print(f"wrote {out}/transfer.parquet, costs.parquet and figures")


# The paper's Fig. 4 (MNIST, T = 5, t = 1..5) and its reference line, from ../shared/paper/figure-data.md
PAPER_T5 = {"naive": [61.86, 94.22, 96.99, 97.56, 97.74], "oracle": [91.87, 96.81, 97.47, 97.76, 97.95],
            "gmt": [87.17, 96.76, 97.53, 97.87, 98.06], "fgmt": [87.17, 96.19, 97.47, 97.78, 97.94]}
PAPER_TRAINED_EPOCH10 = 98.15


def plot(df: pd.DataFrame, args, out: Path) -> None:
    """One figure per lr: a panel per (schedule, T) on one y-axis, from t = 0, with the paper's values (T = 5)
    as crosses and the sources' own validation accuracy as a dashed line."""
    Ts, schedules = sorted(df["T"].unique()), [s for s in args.schedules if s in set(df.schedule)]
    costs = pd.read_parquet(out / "costs.parquet") if (out / "costs.parquet").exists() else None
    for lr in sorted(df.source_lr.unique()):
        sub = df[df.source_lr == lr]
        fig, axes = figure(ncols=len(Ts), nrows=len(schedules))
        source = costs[costs.lr == lr].groupby("seed_source").source_val_acc.first() if costs is not None else None
        for i, schedule in enumerate(schedules):
            for j, T in enumerate(Ts):
                ax = axes[i, j]
                if (i, j) != (0, 0):
                    ax.sharey(axes[0, 0])
                band(ax, sub[(sub["T"] == T) & (sub.schedule == schedule)], "t", "val_acc", "method",
                     order=["naive", "oracle", "gmt", "fgmt"], dodge=0.08)
                if T == 5 and not args.smoke:
                    for method, values in PAPER_T5.items():
                        ax.plot(range(1, 6), values, linestyle="none", marker="x", markersize=5,
                                color=COLORS[method], label=f"{NAMES[method]}, paper" if (i, j) == (0, 0) else None)
                    ax.axhline(PAPER_TRAINED_EPOCH10, color="black", linestyle=":", linewidth=0.8,
                               label="paper: trained, epoch 10" if (i, j) == (0, 0) else None)
                if source is not None and len(source):
                    ax.axhline(source.mean(), color="tab:red", linestyle="--", linewidth=0.8,
                               label=f"our sources (n={len(source)})" if (i, j) == (0, 0) else None)
                letter(ax, i * len(Ts) + j, f"T = {T}, {schedule} λ")
                ax.set(xlabel="transfer step $t$", ylabel=r"validation accuracy of $\theta_2^t$ (%)")
                ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0, 0].legend(fontsize=6, ncol=2)
        fig.suptitle(f"MNIST 2-MLP (width {args.width}), source SGD lr {lr:g},\nlinear trajectories: transferred "
                     f"validation accuracy" if not args.smoke else "smoke run (digits)", fontsize=9)
        bands_note(fig)
        save_figure(fig, out / f"transfer_lr{lr:g}.png")
    (out / "summary.md").write_text(summary_markdown(df))


def summary_markdown(df: pd.DataFrame) -> str:
    """Per (lr, T, schedule): mean +- std val accuracy at every t for each method, and n."""
    lines = []
    for (lr, T, schedule), g in df[df.t > 0].groupby(["source_lr", "T", "schedule"]):
        stats = summarise(g, ["method", "t"], "val_acc")
        n = int(stats["n"].min())
        lines += [f"**lr={lr:g}, T={T}, {schedule} lambda** (val acc %, mean +- std over n={n} seed pairs)", "",
                  "| method | " + " | ".join(f"t={t}" for t in range(1, T + 1)) + " |",
                  "|---|" + "---|" * T]
        for method in ["naive", "oracle", "gmt", "fgmt"]:
            s = stats[stats.method == method].sort_values("t")
            if not s.empty:
                cells = [f"{m:.2f} +- {sd:.2f}" if n > 1 else f"{m:.2f}" for m, sd in zip(s["mean"], s["std"])]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
