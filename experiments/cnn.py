"""Learning transfer on CNNs, random-initialisation scenario (paper Fig. 4b/4c; issue 21): Conv8 with and without
BatchNorm and ResNet-18 (ltray's CIFAR-style one, torchvision's) on MNIST. Sources and the Oracle's targets are
trained with the paper's recipe shape (SGD momentum 0.9, weight decay 1e-4, cosine annealing), then each seed pair
(source k, target 1000 + k) is transferred with every method for every (T, trajectory kind) asked for. An actual
trajectory needs a source of at least T epochs; those combinations are skipped with a note.

Writes, under --out, <tag>_transfer.parquet (TRANSFER_SCHEMA), <tag>_training.parquet (every trained network's
validation accuracy per epoch), <tag>_profile.parquet (where each transfer's seconds went), <tag>_transfer.png, and
summary.md over every tag in the folder. <tag> is <model>_w<width>_<init>.

    python experiments/cnn.py --model conv8bn --width 8 --data-root ../shared/datasets --out experiments/results/cnn
    python experiments/cnn.py --model conv8 --init kaiming --width 8 --data-root ../shared/datasets \
        --out experiments/results/cnn
    python experiments/cnn.py --smoke --out /tmp/cnn-smoke                # digits, conv8bn width 4: seconds
    python experiments/cnn.py --summary-only --out experiments/results/cnn
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ltray import evaluate
from matplotlib.ticker import MaxNLocator

from ltray.analysis.plots import band, figure, letter, save_figure
from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
from ltray.errors import LtrayError
from ltray.results import (PROFILE_SCHEMA, TRAINING_SCHEMA, TRANSFER_SCHEMA, config_hash, provenance, summarise,
                           write_parquet)
from ltray.runs import cached_source, pair_outcome

PARTS = ("gradients", "cost_products", "solves", "bn_reset", "evaluation")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="conv8bn", help="conv8, conv8bn, resnet18 or torchvision:resnet18")
    p.add_argument("--width", type=int, default=None, help="Conv8 base channels (paper 64); ResNet-18: fixed")
    p.add_argument("--init", default="default", help="default (PyTorch's) or kaiming (He; ltray.models.INITS)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--pairs", type=int, default=3, help="seed pairs (source k, target 1000 + k)")
    p.add_argument("--first-pair", type=int, default=0, help="k of the first pair (split pairs over processes)")
    p.add_argument("--runs", nargs="+", default=["linear:10", "actual:10", "linear:30"],
                   help="transfers per pair, KIND:T (linear or actual trajectory of T steps)")
    p.add_argument("--methods", default="naive,oracle,gmt,fgmt")
    p.add_argument("--batch-size", type=int, default=256, help="gradient batch B (paper Conv8: 128 x 2)")
    p.add_argument("--bn-samples", type=int, default=256, help="B': samples to reset BatchNorm statistics")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default="runs/cache", help="trained trajectories are kept here and reused")
    p.add_argument("--out", default="experiments/results/cnn")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true", help="digits, conv8bn width 4, 3 epochs, T 2 and 3, 1 pair")
    p.add_argument("--summary-only", action="store_true", help="rewrite summary.md from the Parquet in --out")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="join the Parquet files of runs split over processes (one --out each) into --out, redraw "
                        "the figures, rewrite summary.md")
    args = p.parse_args(argv)
    if args.smoke:
        args.dataset, args.model, args.width, args.epochs, args.pairs = "digits", "conv8bn", 4, 3, 1
        args.runs = ["linear:2", "actual:2", "linear:4"]
        args.batch_size, args.bn_samples = 64, 64
    return args


def tag(args) -> str:
    width = f"_w{args.width}" if args.width else ""
    return f"{args.model.replace(':', '-')}{width}_{args.init}"


def run(args) -> None:
    out = Path(args.out)
    root = str(Path(args.data_root).resolve()) if args.dataset != "digits" else None
    data_cfg = DataConfig(args.dataset, root, max_train=args.max_train)
    model_cfg = ModelConfig(args.model, args.width, init=args.init)
    train_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, cosine=True)
    methods = tuple(args.methods.split(","))
    data = data_cfg.load()
    model = model_cfg.build(data, 0).to(args.device)
    run_id = config_hash(data_cfg.identity(), model_cfg, train_cfg,
                         vars(args) | {"out": None, "cache": None, "no_progress": None, "data_root": None})
    cache = Path(args.cache) / "cnn"
    training, rows, profile = [], [], []

    def trained(seed: int, role: str):
        traj = cached_source(data, data_cfg, model_cfg, train_cfg, seed, cache, args.device, not args.no_progress)
        seconds = [0.0] + list(traj.meta.get("epoch_seconds", []))
        for e in range(len(traj)):
            loss, acc = evaluate(model, traj.state(e, args.device), data.val)
            training.append(dict(dataset=data_cfg.name, model=model_cfg.name, width=traj.meta.get("width"),
                                 init=args.init, role=role, seed=seed, epoch=int(traj.epochs[e]), lr=args.lr,
                                 weight_decay=args.weight_decay, val_acc=acc, val_loss=loss,
                                 seconds=seconds[e] if e < len(seconds) else None, **provenance(run_id, args.device)))
        print(f"{role} seed {seed}: val acc per epoch {[round(r['val_acc'], 2) for r in training[-len(traj):]]}",
              flush=True)
        return traj

    def publish() -> None:
        """Every file rewritten whole after each transfer run: a run stopped midway keeps what it finished."""
        name = tag(args)
        out.mkdir(parents=True, exist_ok=True)
        save_figure(grid_figure(pd.DataFrame(rows), pd.DataFrame(training), 100.0 / data.num_classes),
                    out / f"{name}_transfer.png")
        write_parquet(training, TRAINING_SCHEMA, out / f"{name}_training.parquet")
        write_parquet(profile, PROFILE_SCHEMA, out / f"{name}_profile.parquet")
        write_parquet(rows, TRANSFER_SCHEMA, out / f"{name}_transfer.parquet")
        print(f"wrote {out}/{name}_*.parquet and .png", flush=True)

    runs = [(kind, int(T)) for kind, _, T in (r.partition(":") for r in args.runs)]
    for k in range(args.first_pair, args.first_pair + args.pairs):
        source = trained(k, "source")
        target = trained(1000 + k, "target") if "oracle" in methods else None   # the Oracle's trained target
        for kind, T in runs:
            if kind == "actual" and T > args.epochs:
                print(f"skipped: an actual trajectory of T = {T} needs >= {T} epochs, the sources have "
                      f"{args.epochs}", flush=True)
                continue
            cfg = TransferConfig(T=T, schedule="cosine", trajectory=kind, batch_size=args.batch_size,
                                 bn_samples=args.bn_samples)
            outcome, new = pair_outcome(data, data_cfg=data_cfg, model_cfg=model_cfg, train_cfg=train_cfg,
                                        transfer_cfg=cfg, methods=methods, source=source, seed_target=1000 + k,
                                        run_id=run_id, device=args.device, target=target)
            rows += new
            for method, r in outcome.results.items():
                profile.append(dict(dataset=data_cfg.name, model=model_cfg.name, width=source.meta.get("width"),
                                    init=args.init, method=method, T=T, trajectory=kind, seed_source=k,
                                    seed_target=1000 + k, transfer_seconds=r.seconds[-1],
                                    source_train_seconds=outcome.source_train_seconds,
                                    target_train_seconds=outcome.target_train_seconds,
                                    **{p: r.profile.get(p, 0.0) for p in PARTS},
                                    gradient_pairs=r.gradient_pairs, **provenance(run_id, args.device)))
            print(f"pair {k} T={T} {kind}: " + ", ".join(f"{m} {r.val_acc[-1]:.2f} (best {max(r.val_acc):.2f})"
                                                         for m, r in outcome.results.items()), flush=True)
            publish()


def grid_figure(df: pd.DataFrame, training: pd.DataFrame, chance: float):
    """One panel per (trajectory kind, T): validation accuracy of theta2^t by method, mean +- std over seed pairs,
    with the sources' final accuracy and chance as reference lines."""
    combos = df[["trajectory", "T"]].drop_duplicates().sort_values(["trajectory", "T"], ascending=[False, True])
    fig, axes = figure(len(combos), 1)
    final = training[(training.role == "source") & (training.epoch == training.epoch.max())].val_acc.mean()
    for i, (ax, (_, c)) in enumerate(zip(axes[0], combos.iterrows())):
        band(ax, df[(df.trajectory == c.trajectory) & (df["T"] == c["T"])], "t", "val_acc", "method",
             order=["naive", "oracle", "gmt", "fgmt"], dodge=0.08)
        ax.axhline(final, color="tab:red", linestyle="--", linewidth=1, label=f"source, epoch {training.epoch.max()}")
        ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
        ax.set_xlabel("transfer step $t$")
        ax.set_ylabel("validation accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        letter(ax, i, f"{c.trajectory} trajectory, T = {c['T']}")
    axes[0, 0].legend(fontsize=7, loc="center left")
    r = df.iloc[0]
    init = training.init.iloc[0]
    fig.suptitle(f"{r.dataset}, {r.model}" + (f" width {int(r.width)}" if pd.notna(r.width) else "")
                 + f" ({init} init), source lr {r.source_lr:g}, cosine λ, B = {int(r.batch_size)}\n"
                 "lines: mean; bands: ± std over n seed pairs (n in the legend)", fontsize=9)
    return fig


def _pm(s: pd.Series) -> str:
    return f"{s.mean():.2f} ± {s.std():.2f}" if len(s) > 1 else f"{s.mean():.2f}"


def summary(out: Path) -> str:
    """summary.md: per tag, the sources' accuracy, each method's final and best accuracy per (T, trajectory), and
    the transfer's cost per part beside the source's training."""
    lines = ["# Learning transfer on CNNs (random initialisation)", "",
             "Written by experiments/cnn.py from the Parquet files beside this one. Accuracies: validation split "
             "(%), mean ± std over seed pairs (n in brackets); `best` is the best t >= 1 along the transfer.", ""]
    if (out / "notes.md").exists():   # what the numbers alone do not say (where and how they were run)
        lines += [(out / "notes.md").read_text().strip(), ""]
    for path in sorted(out.glob("*_transfer.parquet")):
        name = path.name[: -len("_transfer.parquet")]
        df, tr = pd.read_parquet(path), pd.read_parquet(out / f"{name}_training.parquet")
        prof = pd.read_parquet(out / f"{name}_profile.parquet")
        last = tr[tr.epoch == tr.epoch.max()]
        width = f" width {int(tr.width.iloc[0])}" if pd.notna(tr.width.iloc[0]) else ""
        lines += [f"## {name}", "",
                  f"{tr.dataset.iloc[0]}, {tr.model.iloc[0]}{width}, {tr.init.iloc[0]} init; "
                  f"SGD lr {tr.lr.iloc[0]:g}, momentum 0.9, weight decay {tr.weight_decay.iloc[0]:g}, cosine, "
                  f"{tr.epoch.max()} epochs; gradient batch B = {df.batch_size.iloc[0]}; device "
                  f"{df.device.iloc[0]}, {df.threads.iloc[0]} threads.", "",
                  f"- sources: final val acc {_pm(last[last.role == 'source'].val_acc)} (n={len(last[last.role == 'source'])}); "
                  f"Oracle targets {_pm(last[last.role == 'target'].val_acc)}", ""]
        lines += ["| trajectory | T | method | t = T | best | t at best |", "|---|---|---|---|---|---|"]
        for (kind, T, method), g in df.groupby(["trajectory", "T", "method"], sort=False):
            end = g[g.t == T].val_acc
            best = g[g.t >= 1].groupby("seed_source").val_acc.max()
            at = g[g.t >= 1].loc[g[g.t >= 1].groupby("seed_source").val_acc.idxmax()].t
            lines.append(f"| {kind} | {T} | {method} | {_pm(end)} ({len(end)}) | {_pm(best)} | "
                         f"{', '.join(map(str, at))} |")
        lines += ["", "Cost: wall seconds per transfer (mean over pairs) by part, and FGMT's / GMT's total "
                  "over the source's training seconds.", "",
                  "| trajectory | T | method | total | " + " | ".join(PARTS) + " | / training |",
                  "|---|---|---|---|" + "---|" * len(PARTS) + "---|"]
        for (kind, T, method), g in prof[prof.method.isin(["gmt", "fgmt"])].groupby(["trajectory", "T", "method"]):
            lines.append(f"| {kind} | {T} | {method} | {g.transfer_seconds.mean():.2f} | "
                         + " | ".join(f"{g[p].mean():.2f}" for p in PARTS)
                         + f" | {(g.transfer_seconds / g.source_train_seconds).mean():.2f} |")
        lines.append("")
    return "\n".join(lines)


SCHEMAS = {"training": TRAINING_SCHEMA, "profile": PROFILE_SCHEMA, "transfer": TRANSFER_SCHEMA}


def merge(folders: list[str], out: Path) -> None:
    """The files of one tag from several folders (pairs run in separate processes) joined into `out`, with the
    figure drawn anew from them."""
    for path in sorted({p.name for f in folders for p in Path(f).glob("*_transfer.parquet")}):
        name = path[: -len("_transfer.parquet")]
        parts = {what: pd.concat([pd.read_parquet(Path(f) / f"{name}_{what}.parquet") for f in folders
                                  if (Path(f) / f"{name}_{what}.parquet").exists()], ignore_index=True)
                 for what in SCHEMAS}
        out.mkdir(parents=True, exist_ok=True)
        # chance: the datasets of these runs (MNIST, digits) have 10 classes
        save_figure(grid_figure(parts["transfer"], parts["training"], 10.0), out / f"{name}_transfer.png")
        for what, schema in SCHEMAS.items():
            write_parquet(parts[what].sort_values([c for c in ("seed_source", "seed", "role") if c in parts[what]],
                                                  kind="stable"), schema, out / f"{name}_{what}.parquet")
        print(f"merged {name} from {len(folders)} folders into {out}")


def main(argv=None) -> int:
    args = parse(argv)
    try:
        if args.merge:
            merge(args.merge, Path(args.out))
        elif not args.summary_only:
            run(args)
        from ltray.core.trajectory import atomic_write

        out = Path(args.out)
        text = summary(out)
        atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(text))
    except LtrayError as e:
        print(f"cnn.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
