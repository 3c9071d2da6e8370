"""`ltray spec MODEL`: the permutation groups of a model, the share of its parameters they move, and the ops that
froze the rest (ltray.core.spec_report). Its arguments import nothing heavy; the command imports torch."""
from __future__ import annotations

import argparse

from .args import positive_int


def add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="mlp, conv8, conv8bn, resnet18, torchvision:NAME or package.module:factory (as "
                   "--model of the other commands)")
    g = p.add_argument_group("the data the model reads (default: CIFAR's shape)")
    g.add_argument("--in-channels", type=positive_int, default=3)
    g.add_argument("--image-size", type=positive_int, default=32)
    g.add_argument("--num-classes", type=positive_int, default=10)
    g.add_argument("--width", type=positive_int, default=None, help="hidden width (mlp) / base channels (conv8)")
    g.add_argument("--depth", type=positive_int, default=1, help="hidden layers of the mlp (default 1)")


def cmd_spec(args: argparse.Namespace) -> None:
    import torch

    from ..core.spec_report import spec_report
    from ..models import resolve_model

    model = resolve_model(args.model, args.num_classes, args.in_channels, args.image_size, args.width, seed=0,
                          depth=args.depth)
    gen = torch.Generator().manual_seed(0)   # one batch of the data's shape, for models whose spec is traced
    x = torch.randn(2, args.in_channels, args.image_size, args.image_size, generator=gen)
    print("\n".join(spec_report(model, x).lines()))
