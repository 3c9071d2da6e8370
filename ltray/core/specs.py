"""The permutation specs of architectures: written by hand for ltray's own models (they read like the
architecture, after git-re-basin's `weight_matching.py`), derived by tracing and verified for any other module
(ltray.core.autospec), behind one entry point, `spec_for`."""
from __future__ import annotations

import torch
from torch import nn

from .symmetry import Axes, PermutationSpec

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


def conv8_spec(batchnorm: bool = False) -> PermutationSpec:
    """Conv8 (and "conv8bn": a BatchNorm after each conv, permuted with that conv's output channels)."""
    axes: dict[str, Axes] = {}
    p_in = None
    for i in range(9):
        axes |= _conv(f"convs.{i}", f"P_conv{i}", p_in) | (_norm(f"norms.{i}", f"P_conv{i}") if batchnorm else {})
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


def spec_for(model: nn.Module, example_input: torch.Tensor | tuple | None = None) -> PermutationSpec:
    """The permutation spec of `model`, checked against its state_dict. ltray's own models (build_model) use
    the hand-written specs above; any other module gets one derived from a recorded forward pass on
    `example_input` (default: a random input of the model's shape) and verified for invariance
    (ltray.core.autospec)."""
    from ..models import MLP, Conv8

    if isinstance(model, MLP):
        spec = mlp_spec(model.depth)
    elif isinstance(model, Conv8):
        spec = conv8_spec(model.norms is not None)
    elif type(model).__name__ == "ResNet" and set(resnet18_spec().axes) == set(model.state_dict()):
        spec = resnet18_spec()
    else:
        from .autospec import derive_spec, verify_spec  # imported on first use: it is the larger part

        spec = derive_spec(model, example_input)
        verify_spec(model, spec, example_input)
        return spec
    return spec.with_sizes(model.state_dict())
