"""Permutation symmetry as data (paper Sec. 2.2).

A `PermutationSpec` maps every state_dict key to one entry per tensor axis: the name of the permutation
group acting on that axis, or None. Axes follow PyTorch order (Linear.weight is (out, in), Conv2d.weight is
(out, in, kh, kw)). A permutation is a dict {group: LongTensor perm} with the convention

    permuted[..., i, ...] = original[..., perm[i], ...]      (on every axis the group acts on)

so `apply_permutation(spec, perm, theta)` is the paper's pi theta and leaves f(x; theta) unchanged.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LtrayError

Axes = tuple[str | None, ...]
Permutation = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PermutationSpec:
    axes: dict[str, Axes]
    sizes: dict[str, int] | None = None   # group -> size; filled in by spec_for(model) / with_sizes(state)
    # group -> [(key, axis)], derived from `axes`
    groups: dict[str, list[tuple[str, int]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for key, axes in self.axes.items():
            for axis, g in enumerate(axes):
                if g is not None:
                    groups[g].append((key, axis))
        object.__setattr__(self, "groups", dict(groups))

    def with_sizes(self, state: dict[str, torch.Tensor]) -> "PermutationSpec":
        """This spec with group sizes read off `state`, after checking that it covers `state` exactly."""
        check_spec(self, state)
        return PermutationSpec(self.axes, {g: state[k].shape[a] for g, ((k, a), *_) in self.groups.items()})


def check_spec(spec: PermutationSpec, state: dict[str, torch.Tensor]) -> None:
    """Raise a one-line LtrayError unless `spec` covers every tensor of `state` with consistent sizes."""
    missing = [k for k in state if k not in spec.axes]
    if missing:
        raise LtrayError(f"permutation spec does not cover tensor(s) {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    for g, members in spec.groups.items():
        sizes = {state[k].shape[a] for k, a in members if k in state}
        if len(sizes) > 1:
            raise LtrayError(f"permutation group {g!r} acts on axes of different sizes {sorted(sizes)}")
    for k, v in state.items():
        if v.ndim != len(spec.axes[k]):
            raise LtrayError(f"tensor {k!r} has {v.ndim} axes but its spec lists {len(spec.axes[k])}")


# ---- specs, built from small helpers so they read like the architecture --------------------------------

def _linear(name: str, p_out: str | None, p_in: str | None) -> dict[str, Axes]:
    return {f"{name}.weight": (p_out, p_in), f"{name}.bias": (p_out,)}


def _conv(name: str, p_out: str | None, p_in: str | None, bias: bool = True) -> dict[str, Axes]:
    spec = {f"{name}.weight": (p_out, p_in, None, None)}
    if bias:
        spec[f"{name}.bias"] = (p_out,)
    return spec


def _norm(name: str, p: str) -> dict[str, Axes]:
    return {f"{name}.weight": (p,), f"{name}.bias": (p,), f"{name}.running_mean": (p,),
            f"{name}.running_var": (p,), f"{name}.num_batches_tracked": ()}


def mlp_spec(depth: int = 1) -> PermutationSpec:
    axes: dict[str, Axes] = {}
    p_in = None
    for i in range(1, depth + 1):
        axes |= _linear(f"fc{i}", f"P_fc{i}", p_in)
        p_in = f"P_fc{i}"
    axes |= _linear(f"fc{depth + 1}", None, p_in)
    return PermutationSpec(axes)


def conv8_spec() -> PermutationSpec:
    axes: dict[str, Axes] = {}
    p_in = None
    for i in range(9):
        axes |= _conv(f"convs.{i}", f"P_conv{i}", p_in)
        p_in = f"P_conv{i}"
    axes |= _linear("fc1", "P_fc1", p_in) | _linear("fc2", "P_fc2", "P_fc1") | _linear("fc3", None, "P_fc2")
    return PermutationSpec(axes)


def resnet18_spec() -> PermutationSpec:
    """torchvision resnet18: each stage's residual stream shares one group (P_res1..P_res4)."""
    axes = _conv("conv1", "P_res1", None, bias=False) | _norm("bn1", "P_res1")
    p_prev = "P_res1"
    for stage in range(1, 5):
        p_res = f"P_res{stage}"
        for b in range(2):
            blk, inner = f"layer{stage}.{b}", f"P_l{stage}_{b}"
            p_in = p_prev if b == 0 else p_res
            axes |= _conv(f"{blk}.conv1", inner, p_in, bias=False) | _norm(f"{blk}.bn1", inner)
            axes |= _conv(f"{blk}.conv2", p_res, inner, bias=False) | _norm(f"{blk}.bn2", p_res)
            if b == 0 and stage > 1:  # projection shortcut joins the previous stream to the new one
                axes |= _conv(f"{blk}.downsample.0", p_res, p_prev, bias=False) | _norm(f"{blk}.downsample.1", p_res)
        p_prev = p_res
    return PermutationSpec(axes | _linear("fc", None, "P_res4"))


def spec_for(model: nn.Module) -> PermutationSpec:
    """The spec of an ltray model (see ltray.models.build_model), checked against its state_dict."""
    from .models import MLP, Conv8

    if isinstance(model, MLP):
        spec = mlp_spec(model.depth)
    elif isinstance(model, Conv8):
        spec = conv8_spec()
    elif type(model).__name__ == "ResNet" and len(getattr(model, "layer1", [])) == 2:
        spec = resnet18_spec()
    else:
        raise LtrayError(f"no permutation spec for model type {type(model).__name__}")
    return spec.with_sizes(model.state_dict())


# ---- the group action ----------------------------------------------------------------------------------

def apply_permutation(spec: PermutationSpec, perm: Permutation, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pi theta: a new dict; keys absent from the spec are an error, keys absent from `state` are skipped."""
    out = {}
    for key, value in state.items():
        if key not in spec.axes:
            raise LtrayError(f"permutation spec does not cover tensor {key!r}")
        for axis, g in enumerate(spec.axes[key]):
            if g is not None:
                if perm[g].numel() != value.shape[axis]:
                    raise LtrayError(f"permutation {g!r} has size {perm[g].numel()} but axis {axis} of "
                                     f"{key!r} has size {value.shape[axis]}")
                value = torch.index_select(value, axis, perm[g].to(value.device))
        out[key] = value
    return out


def permute_axes_except(spec: PermutationSpec, perm: Permutation, key: str, value: torch.Tensor,
                        skip_axis: int) -> torch.Tensor:
    """Permute every permuted axis of one tensor but `skip_axis` (the matcher's building block)."""
    for axis, g in enumerate(spec.axes[key]):
        if g is not None and axis != skip_axis:
            value = torch.index_select(value, axis, perm[g].to(value.device))
    return value


def _sizes(spec: PermutationSpec) -> dict[str, int]:
    if spec.sizes is None:
        raise LtrayError("this permutation spec has no group sizes: build it with spec_for(model) or .with_sizes(state)")
    return spec.sizes


def identity_permutation(spec: PermutationSpec) -> Permutation:
    return {g: torch.arange(n) for g, n in _sizes(spec).items()}


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Permutation:
    """A uniformly random group element, drawn from `seed` (groups visited in sorted order)."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in sorted(_sizes(spec).items())}


def invert_permutation(perm: Permutation) -> Permutation:
    return {g: torch.argsort(p) for g, p in perm.items()}


def compose_permutations(outer: Permutation, inner: Permutation) -> Permutation:
    """The permutation that applies `inner` first, then `outer`."""
    return {g: inner[g][outer[g].to(inner[g].device)] for g in inner}
