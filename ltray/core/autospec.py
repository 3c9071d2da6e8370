"""Permutation specs for any PyTorch model: derived from one recorded forward pass, then verified.

`derive_spec` runs one eval-mode forward under a TorchFunctionMode that sees every top-level torch call
(F.linear, F.conv2d, F.batch_norm, Tensor.add_, torch.cat, ...) with its arguments and result, and hands each to
the rules of ltray.core.oprules (attention's in ltray.core.attention_rules, the labels and groups they
move in ltray.core.labels). Parameters and buffers enter those calls as themselves, so each call says which
state_dict tensors it reads. We record a real forward rather than trace with torch.fx: it follows data-dependent
control flow and functional calls on parameters that symbolic tracing cannot, and it gives every tensor's
shape. The spec then describes the path this input takes, one more reason `verify_spec` checks invariance
before `spec_for` hands a spec out.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from ..errors import LtrayError
from .labels import FrozenAxesWarning, tensors  # noqa: F401  (FrozenAxesWarning is public here)
from .oprules import Labeller
from .symmetry import PermutationSpec, apply_permutation, random_permutation


class _Recorder(TorchFunctionMode):
    def __init__(self, labeller: Labeller):
        super().__init__()
        self.labeller = labeller

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)   # runs with this mode off: calls inside func are not recorded
        self.labeller.record(getattr(func, "__name__", repr(func)).strip("_"), args, kwargs, out)
        return out


@contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def example_input_for(model: nn.Module) -> torch.Tensor:
    """A random batch of two inputs shaped for the model's first Linear or Conv layer (32 x 32 images)."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            x = torch.randn(2, m.in_features, generator=gen)
        elif isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
            dims = len(m.kernel_size)
            x = torch.randn(2, m.in_channels, *[32 if dims < 3 else 16] * dims, generator=gen)
        else:
            continue
        return x.to(next(model.parameters()).device)
    raise LtrayError(f"cannot guess an input for {type(model).__name__}: pass example_input")


def _inputs(model: nn.Module, example_input) -> tuple:
    x = example_input_for(model) if example_input is None else example_input
    return x if isinstance(x, tuple) else (x,)


def derive_spec(model: nn.Module, example_input: torch.Tensor | tuple | None = None) -> PermutationSpec:
    """The permutation spec of `model` from one eval-mode forward pass on `example_input` (a tensor or a tuple
    of positional arguments; default: `example_input_for(model)`), with group sizes. Ops without a rule fix
    the groups they touch and warn (FrozenAxesWarning); the model's output axes are never permuted."""
    labeller = Labeller(model)

    def leave(module, args, out):   # returns None: a forward hook's result would replace the output
        labeller.scope.pop()

    hooks = []
    for name, m in model.named_modules():   # the module path of each call, for messages and group names
        enter = lambda m, a, name=name or type(model).__name__: labeller.scope.append(name)  # noqa: E731
        hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with torch.no_grad(), _eval_mode(model), _Recorder(labeller):
            out = model(*_inputs(model, example_input))
    except (LtrayError, Warning):   # a FrozenAxesWarning turned into an error by a warnings filter
        raise
    except Exception as e:
        raise LtrayError(f"autospec: the forward pass of {type(model).__name__} failed ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); pass a fitting example_input") from e
    finally:
        for h in hooks:
            h.remove()
    labeller.freeze_output(out)
    return labeller.spec(model)


def verify_spec(model: nn.Module, spec: PermutationSpec, example_input: torch.Tensor | tuple | None = None,
                seed: int = 0, rtol: float = 1e-4) -> None:
    """Raise a one-line LtrayError unless f(x; pi theta) == f(x; theta) in eval mode for a random pi (from
    `seed`), up to `rtol` times the output's largest magnitude. The check runs on the model's state with every
    constant tensor (fresh BatchNorm statistics, zero biases) jittered, so a mis-permuted one would show. On a
    failure it permutes one group at a time, in state_dict order, and names the first that breaks invariance."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point() and v.numel() > 1 and bool((v == v.flatten()[0]).all()):
            jitter = (torch.rand(v.shape, generator=gen) - 0.5) * 0.2 * max(1.0, abs(float(v.flatten()[0])))
            v = v + jitter.to(v)
        state[k] = v
    spec = spec.with_sizes(state)
    perm = random_permutation(spec, seed)
    args = _inputs(model, example_input)

    def gap(p) -> float:   # the largest output change relative to the output's magnitude
        with torch.no_grad(), _eval_mode(model):
            got = tensors(functional_call(model, apply_permutation(spec, p, state), args))
        return max(float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(got, expected))

    with torch.no_grad(), _eval_mode(model):
        expected = [t.double() for t in tensors(functional_call(model, state, args))]
    if (err := gap(perm)) <= rtol:
        return
    keys = list(state)
    for g, members in sorted(spec.groups.items(), key=lambda item: min(keys.index(k) for k, _ in item[1])):
        alone = {h: p if h == g else torch.arange(len(p)) for h, p in perm.items()}
        if (err := gap(alone)) > rtol:
            key, axis = min(members, key=lambda m: keys.index(m[0]))
            raise LtrayError(f"permutation spec of {type(model).__name__} breaks invariance at tensor {key!r} "
                             f"(axis {axis}, group {g!r}): permuting that group changes the output by {err:.2g}")
    raise LtrayError(f"permutation spec of {type(model).__name__} breaks invariance only when all groups move "
                     f"together: the output changes by {err:.2g}")
