"""One FGMT transfer step of ResNet-18 on CIFAR-shaped data, timed per part (issue: scale past MNIST).

Synthetic everything (nothing is downloaded or trained): 3x32x32 random images and labels, ltray's resnet18
(torchvision's, 3x3 stride-1 stem) at width 64, a source trajectory theta^0 -> theta^0 + noise, a fresh target.
Runs FGMT for T steps with the paper's ResNet settings (gradient batch B = 1280 in chunks of 128, B' = 256
samples to reset BatchNorm statistics) and reports the seconds of each part per step: gradients, cost products,
assignment solves, BatchNorm resets, evaluation (on --val images).

    python benchmarks/bench_step.py                        # CPU, T = 2
    python benchmarks/bench_step.py --device cuda --T 5    # on a GPU
    python benchmarks/bench_step.py --out benchmarks/results/bench_step.jsonl   # recorded in docs/ray.md
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch


def synthetic_cifar(n_train: int, n_val: int, seed: int = 0):
    from ltray.data import DataBundle, Split

    g = torch.Generator().manual_seed(seed)

    def split(n):
        return Split(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))

    return DataBundle("cifar-shaped", split(n_train), split(n_val), split(n_val), 10, 3, 32, None)


def synthetic_source(model_name: str, width: int, device: str):
    """(model, its spec's layout, a source theta^0 -> theta^0 + noise, a fresh target theta2^0 on `device`):
    nothing is trained; 3-channel 32x32 inputs, 10 classes."""
    import numpy as np

    from ltray import build_model
    from ltray.core.trajectory import Layout, Trajectory
    from ltray.models import state_of

    model = build_model(model_name, 10, 3, 32, width, seed=0).to(device)
    theta1 = state_of(model)
    layout = Layout.of(theta1)
    first = layout.flatten(theta1)
    noise = np.random.default_rng(0).standard_normal(first.shape).astype(np.float32)
    source = Trajectory(layout, np.stack([first, first + 0.02 * noise * np.abs(first).mean()]), {"seed": 0})
    target = {k: v.to(device) for k, v in state_of(build_model(model_name, 10, 3, 32, width, 1)).items()}
    return model, layout, source, target


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1280)
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--solver", default="auto")
    p.add_argument("--out", help="append the record as one JSON line to this file")
    args = p.parse_args(argv)
    from ltray import spec_for, transfer
    from ltray.config import TransferConfig

    data = synthetic_cifar(max(args.batch_size * args.T, 2560), args.val)
    model, layout, source, target = synthetic_source("resnet18", args.width, args.device)
    cfg = TransferConfig(T=args.T, batch_size=args.batch_size, loader_batch_size=128, bn_samples=256,
                         solver=args.solver)
    t0 = time.perf_counter()
    result = transfer("fgmt", model, spec_for(model), source.linear(args.T), target, data, cfg, seed=1)
    wall = time.perf_counter() - t0
    record = {"device": args.device, "T": args.T, "width": args.width, "B": args.batch_size, "val": args.val,
              "params": layout.size, "threads": torch.get_num_threads(), "seconds": wall,
              "per_step": {k: v / args.T for k, v in result.profile.items()},
              "groups": len(spec_for(model).groups), "gradient_pairs": result.gradient_pairs,
              "date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()[0]}
    print(json.dumps(record))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
