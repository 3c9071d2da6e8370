"""Training loops: SGD source training with a checkpoint per epoch (a Trajectory) and fine-tuning (subsequent
training) of a transferred start. Both take a module template and a state dict and return new states; the
module is copied, never changed."""
from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import FinetuneConfig, TrainConfig
from .core.functional import evaluate, reset_bn_stats
from .core.trajectory import Layout, State, Trajectory
from .data import Split, batches
from .errors import LtrayError


def _lr_at(cfg: TrainConfig, epoch_float: float) -> float:
    """Linear warm-up over warmup_epochs, then cosine annealing (if enabled) over the remaining epochs."""
    if epoch_float < cfg.warmup_epochs:
        return cfg.lr * (epoch_float + 1e-8) / cfg.warmup_epochs
    if cfg.cycles > 1:
        span = cfg.epochs / cfg.cycles
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch_float % span) / span))
    if not cfg.cosine:
        return cfg.lr
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch_float - cfg.warmup_epochs) / span))


def train(model: nn.Module, state: State, train_split: Split, cfg: TrainConfig, seed: int,
          progress: bool = True, desc: str = "train") -> Trajectory:
    """SGD from `state` for cfg.epochs epochs; returns the trajectory with one checkpoint per epoch.
    `seed` fixes the data order; meta holds train_seconds (wall time of the training loop) and epoch_seconds
    (the wall time up to the end of each epoch)."""
    layout = Layout.of(state)
    device = next(iter(state.values())).device
    net = _module_with(model, state)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(train_split) / cfg.batch_size)
    checkpoints = [layout.flatten(net.state_dict())]
    epoch_seconds = []
    t0 = time.perf_counter()
    net.train()
    for epoch in tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False):
        for i, (x, y) in enumerate(batches(train_split, cfg.batch_size, gen)):
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, epoch + i / steps)
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        checkpoints.append(layout.flatten(net.state_dict()))
        epoch_seconds.append(time.perf_counter() - t0)
    if not np.isfinite(checkpoints[-1]).all():
        raise LtrayError(f"training diverged (NaN/Inf parameters) at lr={cfg.lr}; lower the learning rate")
    return Trajectory(layout, np.stack(checkpoints), {"train_seconds": epoch_seconds[-1], "seed": seed,
                                                      "epoch_seconds": epoch_seconds})


def finetune_epochs(model: nn.Module, state: State, train_split: Split, cfg: FinetuneConfig, seed: int = 0,
                    progress: bool = False, bn_samples: int = 0) -> Iterator[tuple[int, State, float]]:
    """Subsequent training from `state` with cfg's optimizer at a constant lr; yields (epoch, state, seconds)
    after each of cfg.epochs epochs, seconds being the training time so far (what the caller does between
    epochs, such as evaluating, is not counted). `seed` fixes the data order."""
    if bn_samples:
        state = reset_bn_stats(model, state, train_split, bn_samples, torch.Generator().manual_seed(seed))
    device = next(iter(state.values())).device
    net = _module_with(model, state)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr) if cfg.optimizer == "adam" else \
        torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    seconds = 0.0
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="finetune", disable=not progress, leave=False):
        t0 = time.perf_counter()
        net.train()
        for x, y in batches(train_split, cfg.batch_size, gen):
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds += time.perf_counter() - t0
        yield epoch, {k: v.detach().clone() for k, v in net.state_dict().items()}, seconds


def finetune(model: nn.Module, state: State, train_split: Split, val_split: Split, epochs: int = 10,
             lr: float = 1e-4, batch_size: int = 128, seed: int = 0, progress: bool = False,
             bn_samples: int = 0, optimizer: str = "adam") -> tuple[State, list[dict]]:
    """Subsequent training (paper Sec. 4.2): Adam (or SGD) at a fixed lr for `epochs` epochs from `state`.
    Returns the final state and per-epoch rows {epoch, val_loss, val_acc, seconds} (epoch 0 = the start;
    seconds of training, without the evaluations)."""
    cfg = FinetuneConfig(epochs, lr, batch_size, optimizer)
    loss, acc = evaluate(model, state, val_split)
    history = [{"epoch": 0, "val_loss": loss, "val_acc": acc, "seconds": 0.0}]
    for epoch, state, seconds in finetune_epochs(model, state, train_split, cfg, seed, progress, bn_samples):
        loss, acc = evaluate(model, state, val_split)
        history.append({"epoch": epoch, "val_loss": loss, "val_acc": acc, "seconds": seconds})
    return state, history


def _module_with(model: nn.Module, state: State) -> nn.Module:
    """A private copy of the template holding `state` (for the optimiser loops, which need a module)."""
    import copy

    net = copy.deepcopy(model)
    net.load_state_dict(state)
    return net.to(next(iter(state.values())).device)
