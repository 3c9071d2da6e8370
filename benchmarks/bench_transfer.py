"""End-to-end cost of one transfer beside the source training's (issue: transfer must cost a small fraction).

Trains (or loads) an MNIST 2-MLP source, then runs each --solvers entry with the same seeds and prints the
wall time of the transfer, its fraction of the source training and where it went (gradients, cost
products, solves, evaluation), plus the transferred accuracies so solvers can be compared for equality.

    python benchmarks/bench_transfer.py --data-root ../shared/datasets --solvers scipy auto --seeds 3
    python benchmarks/bench_transfer.py --smoke
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from ltray.config import DataConfig, ModelConfig, TrainConfig, TransferConfig
from ltray.results import derive_seed
from ltray.runs import cached_source, train_source, transfer_pair


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--T", type=int, default=10)
    p.add_argument("--method", default="fgmt")
    p.add_argument("--solvers", nargs="+", default=["scipy", "auto"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--cache", default="runs/cache", help="reuse sources trained here (their training time too)")
    p.add_argument("--out", default="benchmarks/results/bench_transfer.csv")
    p.add_argument("--retime-source", action="store_true",
                   help="train source 0 once more, unsaved, and take fractions against that wall time (cached "
                        "sources carry the time of the machine that trained them, possibly a loaded one)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the source trains and the transfer runs")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    data_cfg = DataConfig("digits") if args.smoke else DataConfig("mnist", str(Path(args.data_root).resolve()))
    if args.smoke:
        args.width, args.epochs, args.T = 64, 2, 3
    data = data_cfg.load()
    model_cfg = ModelConfig("mlp", args.width)
    train_cfg = TrainConfig(epochs=args.epochs, lr=args.lr)
    retimed = None
    if args.retime_source:
        t0 = time.perf_counter()
        train_source(data, data_cfg, model_cfg, train_cfg, 0, device=args.device)
        retimed = time.perf_counter() - t0
        print(f"source training on this machine now: {retimed:.1f} s", flush=True)
    rows = []
    for k in range(args.seeds):
        source = cached_source(data, data_cfg, model_cfg, train_cfg, k, None if args.smoke else args.cache,
                               args.device)
        for solver in args.solvers:
            cfg = TransferConfig(T=args.T, solver=solver)
            t0 = time.perf_counter()
            out = transfer_pair(data, model_cfg, train_cfg, cfg, (args.method,), source, 1000 + k,
                                device=args.device, seed=derive_seed("transfer", k, 1000 + k))
            res = out.results[args.method]
            wall = time.perf_counter() - t0
            train_s = retimed or out.source_train_seconds
            row = dict(seed=k, solver=solver, method=args.method, T=args.T, width=args.width, device=args.device,
                       transfer_seconds=res.seconds[-1], wall_seconds=wall, source_train_seconds=train_s,
                       fraction=res.seconds[-1] / train_s,
                       acc_t1=res.val_acc[1], acc_final=res.val_acc[-1], acc_best=max(res.val_acc[1:]),
                       **{f"s_{part}": sec for part, sec in res.profile.items()})
            rows.append(row)
            print({k2: round(v, 3) if isinstance(v, float) else v for k2, v in row.items()}, flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        df.to_csv(args.out, index=False)
    print(df.groupby("solver")[["transfer_seconds", "fraction", "acc_final"]].agg(["mean", "std"]).to_string())


if __name__ == "__main__":
    main()
