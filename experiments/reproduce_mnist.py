"""Paper Fig. 4a on real MNIST: 2-MLP (784-4096-10), SGD lr 0.01 (the paper's text) and lr 0.1, 10 epochs,
linear trajectories with T in {5, 10} and both lambda schedules, Naive/Oracle/GMT/FGMT, three seed pairs.

Writes <out>/transfer.parquet (one row per lr, T, schedule, method, seed pair, step), <out>/costs.parquet
(wall time of every transfer and its profile beside the source training's) and one PNG per lr.

    python experiments/reproduce_mnist.py --data-root ../shared/datasets --out experiments/results/mnist
    python experiments/reproduce_mnist.py --smoke --out /tmp/smoke      # digits, seconds
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
from ltray.pipeline import DataConfig, ModelConfig, train_source, transfer_pair
from ltray.plots import band, figure, save_figure
from ltray.results import TRANSFER_SCHEMA, config_hash, derive_seed, provenance, write_parquet
from ltray.train import TrainConfig, evaluate
from ltray.transfer import TransferConfig

COSTS_SCHEMA = pa.schema([
    ("lr", pa.float64()), ("T", pa.int64()), ("schedule", pa.string()), ("method", pa.string()),
    ("seed_source", pa.int64()), ("seed_target", pa.int64()), ("transfer_seconds", pa.float64()),
    ("source_train_seconds", pa.float64()), ("fraction_of_training", pa.float64()), ("gradients", pa.float64()),
    ("cost_products", pa.float64()), ("solves", pa.float64()), ("evaluation", pa.float64()),
    ("first_layer_ratio", pa.float64()), ("final_val_acc", pa.float64()), ("source_val_acc", pa.float64()),
])


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
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--solver", default="scipy")
    p.add_argument("--smoke", action="store_true", help="digits, width 64, 2 epochs, T=2, 1 seed: seconds")
    args = p.parse_args()
    if args.smoke:
        args.lrs, args.Ts, args.seeds, args.width, args.epochs = [0.1], [2], 1, 64, 2
    data_cfg = DataConfig("digits") if args.smoke else DataConfig("mnist", str(Path(args.data_root).resolve()))
    data = data_cfg.load()
    model_cfg = ModelConfig("mlp", args.width)
    methods = tuple(args.methods.split(","))
    out = Path(args.out)
    rows, costs = [], []
    for lr in args.lrs:
        train_cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=lr, momentum=0.9)
        for k in range(args.seeds):
            seed_source, seed_target = k, 1000 + k
            source = train_source(data, data_cfg, model_cfg, train_cfg, seed_source)
            target = train_source(data, data_cfg, model_cfg, train_cfg, seed_target)  # the oracle's theta2^T
            ratio = first_layer_ratio(source)
            src_acc = evaluate(model_cfg.build(data, 0), source.state(-1), data.val)[1]
            print(f"lr={lr} pair {k}: source {source.meta['train_seconds']:.1f} s, val {src_acc:.2f}%, "
                  f"||dW1||/||W1^0|| = {ratio:.3f}", flush=True)
            for T in args.Ts:
                for schedule in args.schedules:
                    cfg = TransferConfig(T=T, schedule=schedule, batch_size=128, solver=args.solver)
                    run_id = config_hash(data_cfg, model_cfg, train_cfg, cfg)
                    outcome = transfer_pair(data, model_cfg, train_cfg, cfg, methods, source, seed_target,
                                            seed=derive_seed("transfer", seed_source, seed_target), target=target)
                    for method, res in outcome.results.items():
                        for r in res.rows():
                            rows.append(dict(r, dataset=data_cfg.name, model="mlp", width=args.width,
                                             seed_source=seed_source, seed_target=seed_target, T=T,
                                             schedule=schedule, trajectory="linear", batch_size=128,
                                             solver=args.solver, source_train_seconds=outcome.source_train_seconds,
                                             lr=lr, **provenance(run_id)))
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
                        print(f"  T={T:2d} {schedule:7s} {method:6s} acc {' '.join(f'{a:5.2f}' for a in res.val_acc[1:])}"
                              f"  ({res.seconds[-1]:.1f} s)", flush=True)
    schema = TRANSFER_SCHEMA.append(pa.field("lr", pa.float64()))
    df = pd.DataFrame(rows)
    write_parquet(df, schema, out / "transfer.parquet")
    write_parquet(pd.DataFrame(costs), COSTS_SCHEMA, out / "costs.parquet")
    for lr in args.lrs:
        sub = df[(df.lr == lr) & (df.t > 0)]
        fig, axes = figure(ncols=len(args.Ts), nrows=len(args.schedules))
        for i, schedule in enumerate(args.schedules):
            for j, T in enumerate(args.Ts):
                ax = axes[i, j]
                band(ax, sub[(sub["T"] == T) & (sub.schedule == schedule)], "t", "val_acc", "method",
                     order=["naive", "oracle", "gmt", "fgmt"])
                ax.set(title=f"T={T}, {schedule} lambda", xlabel="transfer step t", ylabel="validation accuracy (%)")
                ax.legend(fontsize=7)
        fig.suptitle(f"MNIST 2-MLP (width {args.width}), source SGD lr={lr}: transferred accuracy"
                     if not args.smoke else "smoke run (digits)")
        save_figure(fig, out / f"transfer_lr{lr:g}.png")
    print(f"wrote {out}/transfer.parquet, costs.parquet and figures")


if __name__ == "__main__":
    main()
