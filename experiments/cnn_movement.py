"""How far training moves each layer of the CNN study's networks from their initialisation: ||W^E - W^0|| / ||W^0||
per weight tensor, for every trained network in the cache that experiments/cnn.py filled: how much of a
transferred theta2^T = theta2^0 + pi(theta1^T - theta1^0) is the source's training rather than theta2^0's random
weights (on the 2-MLP, what Naive's level follows: docs/analyses.md, the width study; on the plain Conv8 it does not
explain the failure: experiments/results/cnn_lr0.05). Writes <out>/movement.csv and prints the per-layer means.

    python experiments/cnn_movement.py --cache runs/cache/cnn --out experiments/results/cnn
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ltray.core.trajectory import load_trajectory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="runs/cache/cnn")
    p.add_argument("--out", default="experiments/results/cnn")
    args = p.parse_args()
    rows = []
    for path in sorted(Path(args.cache).glob("*.safetensors")):
        traj = load_trajectory(path, lazy=True)
        first, last = traj.state(0), traj.state(-1)
        meta = traj.meta
        for key, w0 in first.items():
            if key.endswith(".weight") and w0.ndim > 1:
                rows.append(dict(model=meta["model"], width=meta.get("width"), init=meta.get("init", "default"),
                                 lr=meta["train_config"]["lr"], seed=meta["seed"], epochs=meta["epochs"], tensor=key,
                                 ratio=float((last[key] - w0).norm() / w0.norm())))
    df = pd.DataFrame(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(args.out) / "movement.csv", index=False, float_format="%.4f")
    print(df.groupby(["model", "width", "init", "lr", "tensor"], sort=False).ratio.mean().round(3).to_string())


if __name__ == "__main__":
    main()
