"""Assignment solvers on the real score matrices of one MNIST FGMT transfer (width 4096, T=10).

Records the 10 accumulated 4096 x 4096 matrices that FGMT hands to the solver (source seed 0 from the
bench_transfer cache, target seed 1000), then for each: scipy, fastlap and the auction (compiled CPU backend,
and its torch backend) cold, with the objective gap to scipy; and both auctions warm-started along the chain,
as the matcher runs them.

    python benchmarks/bench_recorded.py                      # records into runs/recorded (1.3 GB), then times
    python benchmarks/bench_recorded.py --smoke              # digits, width 64: seconds
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ltray import lap
from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
from ltray.results import derive_seed
from ltray.runs import cached_source, transfer_pair


def record(args) -> list[Path]:
    """Run one FGMT transfer whose solver saves each score matrix before solving it exactly."""
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def recording(score, warm):
        paths.append(out / f"fgmt_step{len(paths) + 1:02d}.npy")
        np.save(paths[-1], score.cpu().numpy())
        return lap.SOLVERS["scipy"](score, warm)

    lap.SOLVERS["recording"] = recording
    data_cfg = DataConfig("digits") if args.smoke else DataConfig("mnist", str(Path(args.data_root).resolve()))
    data, train_cfg = data_cfg.load(), TrainConfig(epochs=args.epochs, lr=0.01)
    model_cfg = ModelConfig("mlp", args.width)
    source = cached_source(data, data_cfg, model_cfg, train_cfg, 0, None if args.smoke else args.cache)
    transfer_pair(data, model_cfg, train_cfg, TransferConfig(T=args.T, solver="recording"), ("fgmt",), source,
                  1000, seed=derive_seed("transfer", 0, 1000))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--cache", default="runs/cache", help="bench_transfer's cached sources")
    p.add_argument("--dir", default="runs/recorded", help="where the matrices go")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--T", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/bench_recorded.csv")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.width, args.epochs, args.T = 64, 2, 3
    solvers = ["scipy", "auction", "auction-torch"] + (["fastlap"] if lap.has_fastlap() else [])
    chained = ["auction", "auction-torch"]
    rows, warm = [], dict.fromkeys(chained)
    for step, path in enumerate(record(args), 1):
        a = torch.from_numpy(np.load(path))      # as the matcher hands it over (float32)
        n = a.shape[0]
        opt = None
        for solver in solvers:
            res, sec = lap.timed_solve(a, solver)
            value = float(a[torch.arange(n), res.perm].double().sum())
            opt = value if solver == "scipy" else opt
            rows.append(dict(step=step, n=n, solver=solver, mode="cold", seconds=sec, method=res.method,
                             rel_gap=(opt - value) / abs(opt)))
        for solver in chained:
            warm[solver], sec = lap.timed_solve(a, solver, warm[solver])
            value = float(a[torch.arange(n), warm[solver].perm].double().sum())
            rows.append(dict(step=step, n=n, solver=solver, mode="warm chain", seconds=sec,
                             method=warm[solver].method, rel_gap=(opt - value) / abs(opt)))
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    if not args.smoke:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
    print(df.pivot_table(index="step", columns=["solver", "mode"], values="seconds").round(2).to_string())
    print("total seconds:", df.groupby(["solver", "mode"]).seconds.sum().round(1).to_dict())
    print("max relative gap to scipy:", df.groupby(["solver", "mode"]).rel_gap.max().to_dict())


if __name__ == "__main__":
    main()
