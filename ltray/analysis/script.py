"""Plumbing shared by the thin scripts in experiments/: the MNIST (paper) and smoke presets of each scenario,
one argument parser, seed pairs, and publishing Parquet + PNG atomically with a printed summary.

A script is: parse -> for each seed pair, run the library function -> publish rows and a figure.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from ..config import METHODS, DataConfig, ModelConfig, TrainConfig, TransferConfig
from ..errors import LtrayError
from .scenarios import Data, PairRun, Scenario, load_data, pair_trajectories, run_id, transfer_all

SOURCE_CLASSES, TARGET_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)

# Fine-tuning on MNIST 5-9 (pre-trained scenario): SGD with momentum 0.9, cosine annealing and weight decay 1e-4
# as in the paper's fine-tuning rows of B.3.2 (Cars/CUB/CIFAR-100); lr 0.01 is the paper's MNIST lr, which also
# fine-tunes the 2-MLP to ~99% on 5-9 within a few epochs (docs/analyses.md).
MNIST_FINETUNE = TrainConfig(epochs=10, lr=0.01, weight_decay=1e-4, cosine=True)


def preset(kind: str, smoke: bool, data_root: str | None = None, width: int | None = None,
           T: int | None = None, solver: str = "auto", lr: float | None = None, model: str = "mlp",
           dataset: str = "mnist", task_pixels: str | None = None) -> Scenario:
    """The scenario of the full runs (MNIST 2-MLP, paper B.3) or of --smoke (digits, width 64, seconds).
    `lr` replaces the learning rate of the source trajectory's training (the fine-tuning, if pre-trained);
    `model` (mlp, conv8, conv8bn, resnet18) and `dataset` (mnist, or the bundled digits) change what the full
    runs train, with the same recipe; `task_pixels` ("permuted") the pre-trained scenario's task."""
    from ..models import DEFAULT_WIDTH, check_model

    if kind not in ("random", "pretrained"):
        raise LtrayError(f"unknown scenario {kind!r}; known: random, pretrained")
    check_model(model, external=False)
    if dataset not in ("mnist", "digits"):
        raise LtrayError(f"the analyses run on mnist or digits, not {dataset!r}")
    width = width or (64 if smoke and model == "mlp" else DEFAULT_WIDTH[model])
    if smoke:
        name, root, model_cfg = "digits", None, ModelConfig(model, width)
        source_train, finetune, pretrain, T = TrainConfig(epochs=5, lr=0.1), \
            TrainConfig(epochs=5, lr=0.05, cosine=True), TrainConfig(epochs=8, lr=0.1), T or 4
    else:
        if data_root is None and dataset == "mnist":
            raise LtrayError("the MNIST runs need --data-root (the folder holding MNIST/raw)")
        name, root, model_cfg = dataset, (data_root if dataset == "mnist" else None), ModelConfig(model, width)
        source_train, finetune, pretrain, T = TrainConfig(epochs=10, lr=0.01), MNIST_FINETUNE, \
            TrainConfig(epochs=10, lr=0.01), T or 10
    transfer = TransferConfig(T=T, schedule="cosine", trajectory="linear", solver=solver)
    if lr is not None:
        source_train, finetune = replace(source_train, lr=lr), replace(finetune, lr=lr)
    if kind == "random":
        if task_pixels:
            raise LtrayError("--task-pixels applies to the pre-trained scenario (whose task differs from its "
                             "pre-training)")
        return Scenario(DataConfig(name, root), model_cfg, source_train, transfer)
    return Scenario(DataConfig(name, root, classes=TARGET_CLASSES), model_cfg, finetune, transfer,
                    DataConfig(name, root, classes=SOURCE_CLASSES), pretrain, task_pixels)


def parser(description: str, scenario: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="bundled digits, width 64, a few epochs: seconds")
    if scenario:
        p.add_argument("--scenario", default="random", help="random or pretrained (default random)")
    p.add_argument("--seeds", type=int, default=None, help="seed pairs (source k, target 1000+k); default 3, "
                   "smoke 2")
    p.add_argument("--data-root", default=None, help="folder holding MNIST/raw (full runs)")
    p.add_argument("--width", type=int, default=None, help="hidden width (mlp: default 4096, smoke 64) or base "
                   "channels (conv8, resnet18: default 64)")
    p.add_argument("--model", default="mlp", help="mlp (default), conv8, conv8bn (Conv8 with BatchNorm) or resnet18")
    p.add_argument("--dataset", default="mnist", help="mnist (default) or digits (bundled) for the full runs")
    p.add_argument("--task-pixels", default=None, help="pre-trained scenario: 'permuted' shuffles the pixel positions "
                   "of the fine-tuning task's images (one seeded permutation), a task far from the pre-training")
    p.add_argument("--T", type=int, default=None, help="trajectory length (default 10, smoke 4)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of the source training / fine-tuning "
                   "(default: the preset's); results get an _lr<lr> suffix")
    p.add_argument("--solver", default="auto", help="assignment solver (ltray.lap.SOLVERS; default auto)")
    p.add_argument("--cache", default=None, help="folder to keep trained trajectories in, keyed by config hash")
    p.add_argument("--device", default="cpu")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.add_argument("--out", required=True, help="output folder for Parquet and PNG")
    return p


class Experiment:
    """Parsed arguments, the scenario, its data and the seed pairs of one script run."""

    def __init__(self, args: argparse.Namespace, name: str):
        if args.seeds is not None and args.seeds < 1:
            raise LtrayError(f"--seeds must be >= 1, got {args.seeds}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise LtrayError(f"--out {out} exists and is not a directory")
        self.args, self.name, self.out = args, name, out
        self.scenario = preset(getattr(args, "scenario", "random"), args.smoke, args.data_root, args.width,
                               args.T, args.solver, args.lr, args.model, args.dataset, args.task_pixels)
        self.seeds = [(k, 1000 + k) for k in range(args.seeds or (2 if args.smoke else 3))]
        self.cache = Path(args.cache) if args.cache else None
        self.t0 = time.perf_counter()
        self.data: Data = load_data(self.scenario)

    @property
    def prefix(self) -> str:
        """<scenario>[_<model>]_w<width>[_lr<lr>][_digits]: results of several models, widths, learning rates and
        datasets can sit side by side (the 2-MLP on MNIST keeps the short names)."""
        lr = f"_lr{self.args.lr:g}" if self.args.lr is not None else ""
        model = "" if self.scenario.model.name == "mlp" else f"_{self.scenario.model.name}"
        data = "_digits" if self.args.dataset == "digits" and not self.args.smoke else ""
        pixels = f"_{self.scenario.task_pixels}" if self.scenario.task_pixels else ""
        return f"{self.scenario.kind}{pixels}{model}_w{self.scenario.model.width}{lr}{data}"

    def run_id(self, *extra) -> str:
        return run_id(self.scenario, self.name, *extra)

    def log(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {text}", flush=True)

    def trajectories(self) -> Iterator[tuple[int, int, object, object]]:
        for s1, s2 in self.seeds:
            self.log(f"seed pair ({s1}, {s2}): source and target training")
            source, target = pair_trajectories(self.scenario, self.data, s1, s2, self.cache, self.args.progress,
                                               self.args.device)
            yield s1, s2, source, target

    def runs(self, methods: tuple[str, ...] = METHODS, scenario: Scenario | None = None) -> Iterator[PairRun]:
        """Each seed pair's transfer with every method (trajectories from the cache when there is one)."""
        for _, _, source, target in self.trajectories():
            yield self.transfer(source, target, methods, scenario)

    def transfer(self, source, target, methods: tuple[str, ...] = METHODS, scenario: Scenario | None = None) -> PairRun:
        scenario = scenario or self.scenario
        run = transfer_all(scenario, self.data, source, target, methods, self.args.device, self.args.progress,
                           self.cache)
        self.log("transfer " + ", ".join(f"{m} {r.val_acc[-1]:.2f} (best {max(r.val_acc[1:]):.2f} at t="
                                         f"{r.best_step})" for m, r in run.results.items()))
        return run

    def publish(self, what: str, rows: list[dict], schema: pa.Schema, fig) -> tuple[Path, Path]:
        """Write <out>/<scenario>_w<width>_<what>.parquet and .png: the figure is rendered to a temp file first, then
        both are published, so a failure leaves neither half-written."""
        from ..core.trajectory import atomic_path
        from ..results import write_parquet
        from .plots import save_figure

        # names are built as strings: with_suffix would take the ".2_transfer" of "..._lr0.2_transfer"
        parquet, final_png = (self.out / f"{self.prefix}_{what}.{ext}" for ext in ("parquet", "png"))
        png = atomic_path(final_png)
        try:
            save_figure(fig, png)
            write_parquet(rows, schema, parquet)
            os.replace(png, final_png)
        finally:
            png.unlink(missing_ok=True)
        self.log(f"wrote {parquet} and {final_png} ({len(rows)} rows)")
        return parquet, final_png


def main(body: Callable[[argparse.Namespace], None], description: str, name: str, scenario: bool | str = True,
         argv: list[str] | None = None) -> int:
    """Run a script body; bad input is one line on stderr and exit status 2 (as in the `ltray` command).
    `scenario`: True offers --scenario; False runs the random one; "pretrained" runs that one only."""
    args = parser(description, scenario is True).parse_args(argv)
    if isinstance(scenario, str):
        args.scenario = scenario
    try:
        body(Experiment(args, name))
    except LtrayError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2
    return 0
