"""Training, gradients and evaluation as functions of (module template, state dict).

The module passed around is only a template: parameters always come from an explicit state dict and are
evaluated with `torch.func.functional_call`, so no function here changes a model behind the caller's back.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from .data import Split, batches
from .errors import LtrayError
from .trajectory import Layout, State, Trajectory


@dataclass(frozen=True)
class TrainConfig:
    """Source training (paper B.3.2): SGD with momentum; optional cosine annealing and linear warm-up.

    cycles > 1 is a snapshot-ensemble run (Huang et al. 2017): the learning rate is cosine-annealed from lr
    to 0 over each of `cycles` equal spans of epochs, restarting at lr; the checkpoints at the end of the spans
    are the snapshots."""
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    cosine: bool = False
    warmup_epochs: int = 0
    cycles: int = 1

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise LtrayError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise LtrayError(f"learning rate must be > 0, got {self.lr}")
        if self.cycles < 1 or self.epochs % self.cycles:
            raise LtrayError(f"a cyclic schedule needs epochs divisible by cycles >= 1, got {self.epochs} epochs "
                             f"and {self.cycles} cycles")
        if self.cycles > 1 and self.warmup_epochs:
            raise LtrayError("a cyclic (snapshot) schedule has no warm-up; set warmup_epochs to 0")


@dataclass(frozen=True)
class FinetuneConfig:
    """Subsequent training from a transferred start (paper Sec. 4.2: Adam at lr 1e-4 for 10 epochs).
    optimizer "sgd" uses momentum 0.9; the learning rate is constant, so the state after e epochs does not
    depend on how many epochs follow."""
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 128
    optimizer: str = "adam"

    def __post_init__(self):
        if self.epochs < 0 or not self.lr > 0 or self.batch_size < 1:
            raise LtrayError(f"fine-tuning needs epochs >= 0, lr > 0 and batch size >= 1, got {self.epochs}, "
                             f"{self.lr} and {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise LtrayError(f"unknown fine-tuning optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


OPTIMIZERS = ("adam", "sgd")


def param_names(model: nn.Module) -> list[str]:
    return [k for k, _ in model.named_parameters()]


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def reset_bn_stats(model: nn.Module, state: State, split: Split, num_samples: int,
                   generator: torch.Generator | None = None, batch_size: int = 256) -> State:
    """Recompute BatchNorm running statistics as the exact mean over `num_samples` training samples
    (momentum=None: a cumulative average). Returns a new state; models without BatchNorm get `state` back."""
    bns = _bn_modules(model)
    if not bns:
        return state
    device = next(iter(state.values())).device
    new = {k: v.clone() for k, v in state.items()}
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    try:
        model.train()
        prefix = {m: n for n, m in model.named_modules()}
        for m in bns:  # start every statistic from scratch in the copy we pass in
            p = prefix[m]
            new[f"{p}.running_mean"].zero_(); new[f"{p}.running_var"].fill_(1.0)
            new[f"{p}.num_batches_tracked"].zero_()
            m.momentum = None
        seen = 0
        with torch.no_grad():
            for x, _ in batches(split, batch_size, generator):
                functional_call(model, new, (x[: num_samples - seen].to(device),))
                seen += min(len(x), num_samples - seen)
                if seen >= num_samples:
                    break
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)
    return new


def evaluate(model: nn.Module, state: State, split: Split, batch_size: int = 2000) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy in %) of `state` on `split`, in eval mode."""
    device = next(iter(state.values())).device
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in batches(split, batch_size, None, shuffle=False):
            out = functional_call(model, state, (x.to(device),))
            y = y.to(device)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
    model.train(was_training)
    return loss / len(split), 100.0 * correct / len(split)


@dataclass(frozen=True)
class LinearFactors:
    """A Linear layer's mean-batch weight gradient kept in factored form: grad W = d.T @ x, with x the layer's
    inputs (B, in) and d the loss gradient w.r.t. its outputs (B, out), already scaled by 1/B.

    Score terms between two such gradients go through a B x B kernel (d2.T (x2 x1.T) d1), which is far
    cheaper than the full (out x in) products when B is smaller than the layer's other dimension."""
    x: torch.Tensor
    d: torch.Tensor

    def dense(self) -> torch.Tensor:
        return self.d.T @ self.x


def gradient(model: nn.Module, state: State, x: torch.Tensor, y: torch.Tensor, chunk: int | None = None,
             factored: bool = False) -> dict[str, torch.Tensor | LinearFactors]:
    """Mean cross-entropy gradient over (x, y) w.r.t. the parameters (train mode), computed in chunks of
    `chunk` samples (the loader batch) and averaged, so a gradient batch may be a multiple of it.
    With `factored`, each nn.Linear weight's gradient comes back as `LinearFactors` instead of a tensor."""
    device = next(iter(state.values())).device
    names = param_names(model)
    params = {k: state[k].detach().requires_grad_(True) for k in names}
    buffers = {k: v.clone() for k, v in state.items() if k not in params}  # train-mode BN would update them
    grads = {k: torch.zeros_like(v) for k, v in params.items()}
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)} if factored else {}
    seen: dict[str, list] = {k: [] for k in linears}           # per layer: (input, output) of each chunk
    xs: dict[str, list] = {k: [] for k in linears}
    ds: dict[str, list] = {k: [] for k in linears}
    hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: seen[k].append((inp[0], out)))
             for k, m in linears.items()]
    chunk = chunk or len(x)
    was_training = model.training
    model.train()
    try:
        for i in range(0, len(x), chunk):
            xb, yb = x[i:i + chunk].to(device), y[i:i + chunk].to(device)
            for k in seen:
                seen[k].clear()
            loss = F.cross_entropy(functional_call(model, (params, buffers), (xb,)), yb) * (len(xb) / len(x))
            outs = [seen[k][0][1] for k in linears]
            result = torch.autograd.grad(loss, list(params.values()) + outs)
            for k, g in zip(names, result):
                grads[k] += g
            for k, d in zip(linears, result[len(names):]):
                xs[k].append(seen[k][0][0].detach())
                ds[k].append(d)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for k in linears:
        grads[k] = LinearFactors(torch.cat(xs[k]), torch.cat(ds[k]))
    return grads


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
