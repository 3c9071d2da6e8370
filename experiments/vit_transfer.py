"""A small vision transformer transferred on MNIST through the CLI (issue 24, item 4): experiments/vit.py's ViT
(patch embedding, 2 pre-norm encoder layers of 4 heads, width 64), its spec derived and verified by
ltray.core.autospec, 3 seed pairs (source k, target 1000 + k), Naive, Oracle and FGMT along a linear trajectory.

This script only runs `python -m ltray transfer --model experiments.vit:vit ...` from the repository root (the
exact command is printed first) and writes summary.md beside its transfer.parquet: validation accuracy per step
t, mean ± std over the seed pairs, and the sources' training seconds.

    python experiments/vit_transfer.py --out experiments/results/vit                 # the full run (CPU)
    python experiments/vit_transfer.py --smoke --out /tmp/vit-smoke                   # 2 000 images, 1 pair
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The source's recipe (SGD momentum 0.9 as every ltray source; one warm-up epoch, then cosine annealing: a
# transformer trained by SGD diverges or stalls at a constant lr this high) and the transfer's.
RECIPE = dict(epochs=10, lr=0.05, weight_decay=1e-4, warmup_epochs=1, T=10)
SMOKE = dict(epochs=2, lr=0.05, weight_decay=1e-4, warmup_epochs=1, T=2)


def command(args: argparse.Namespace) -> list[str]:
    r = SMOKE if args.smoke else RECIPE
    cmd = [sys.executable, "-m", "ltray", "transfer", "--model", "experiments.vit:vit", "--dataset", args.dataset,
           "--epochs", str(r["epochs"]), "--lr", str(r["lr"]), "--weight-decay", str(r["weight_decay"]),
           "--cosine", "--warmup-epochs", str(r["warmup_epochs"]), "--T", str(r["T"]), "--schedule", "cosine",
           "--methods", "naive,oracle,fgmt", "--seeds", str(1 if args.smoke else args.pairs),
           "--device", "cpu", "--out", args.out]
    if args.dataset != "digits":
        cmd += ["--data-root", args.data_root]
    if args.smoke or args.max_train:
        cmd += ["--max-train", str(args.max_train or 2000)]
    if args.num_cpus:
        cmd += ["--num-cpus", str(args.num_cpus)]
    return cmd + (["--no-progress"] if args.no_progress else [])


def summary(out: Path) -> str:
    """Validation accuracy per step and method, mean ± std (n pairs), as markdown."""
    import pandas as pd

    df = pd.read_parquet(out / "transfer.parquet")
    methods = [m for m in ("naive", "oracle", "fgmt") if m in set(df.method)]
    cell = lambda v: f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"  # noqa: E731
    lines = ["| t | lambda | " + " | ".join(methods) + " |", "|" + "---|" * (2 + len(methods))]
    for t, g in df.groupby("t"):
        lines.append(f"| {t} | {g['lambda'].iloc[0]:.3f} | "
                     + " | ".join(cell(g[g.method == m].val_acc) for m in methods) + " |")
    pairs = df.groupby(["seed_source", "seed_target"])
    return (f"Validation accuracy % (mean ± std over n = {pairs.ngroups} seed pairs), T = {df['T'].iloc[0]}, "
            f"{df.dataset.iloc[0]}; sources trained in {cell(pairs.source_train_seconds.first())} s each.\n\n"
            + "\n".join(lines) + "\n")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="experiments/results/vit")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--max-train", type=int, default=None, help="cap the training split (smoke: 2 000)")
    p.add_argument("--num-cpus", type=int, default=None, help="cores of the local Ray that runs the pairs")
    p.add_argument("--smoke", action="store_true", help="2 epochs, T = 2, one pair on 2 000 images")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.out, args.data_root = str(Path(args.out).resolve()), str(Path(args.data_root).resolve())
    return args


def main(argv=None) -> int:
    args = parse(argv)
    cmd = command(args)
    print("python", " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT)   # the root on sys.path: experiments.vit imports
    if done.returncode:
        return done.returncode
    text = summary(Path(args.out))
    (Path(args.out) / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
