"""Functional evaluation of a network: `model` is a template, the parameters always come from an explicit
state dict and go through `torch.func.functional_call`, so nothing here changes a module behind the caller's
back. Evaluation, mean-batch gradients (optionally factored for Linear layers) and BatchNorm statistics."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data import Split, batches
from .trajectory import State


def param_names(model: nn.Module) -> list[str]:
    return [k for k, _ in model.named_parameters()]


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def reset_bn_stats(model: nn.Module, state: State, split: Split, num_samples: int,
                   generator: torch.Generator | None = None, batch_size: int = 256) -> State:
    """Recompute BatchNorm running statistics from `num_samples` training samples in batches of `batch_size`,
    in train mode with momentum=None (PyTorch's cumulative average over batches, as in
    torch.optim.swa_utils.update_bn). What that gives, per layer and channel: running_mean is the average of the
    per-batch means of the layer's inputs (their exact mean when the batches have equal sizes) and running_var
    the average of the per-batch unbiased variances, which leaves out the spread of the batch means; with one
    batch (num_samples <= batch_size) both are exact. Returns a new state; without BatchNorm, `state` itself."""
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
    With `factored`, the weight gradient of each nn.Linear called once per forward on a (batch, in) input comes
    back as `LinearFactors` instead of a tensor. The others stay dense: one whose forward never runs
    (nn.MultiheadAttention reads out_proj's weight itself) or runs more than once, and one on tokens (batch, L, in),
    whose B * L rows would make the B x B kernel route dearer than the dense gradient."""
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
    chunk, factor = chunk or len(x), list(linears)
    was_training = model.training
    model.train()
    try:
        for i in range(0, len(x), chunk):
            xb, yb = x[i:i + chunk].to(device), y[i:i + chunk].to(device)
            for k in seen:
                seen[k].clear()
            loss = F.cross_entropy(functional_call(model, (params, buffers), (xb,)), yb) * (len(xb) / len(x))
            if i == 0:
                factor = [k for k in linears if len(seen[k]) == 1 and seen[k][0][0].ndim == 2]
            outs = [seen[k][0][1] for k in factor]
            result = torch.autograd.grad(loss, list(params.values()) + outs)
            for k, g in zip(names, result):
                grads[k] += g
            for k, d in zip(factor, result[len(names):]):
                xs[k].append(seen[k][0][0].detach())
                ds[k].append(d)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for k in factor:
        grads[k] = LinearFactors(torch.cat(xs[k]), torch.cat(ds[k]))
    return grads
