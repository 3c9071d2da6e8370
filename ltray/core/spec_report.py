"""What a model's permutation spec leaves to transfer (`ltray spec MODEL`): its groups and their sizes, the share
of parameters they move, and each op that froze groups (from its FrozenAxesWarning).

A parameter entry moves when one of its axes is permuted at that entry: for a tensor whose axes keep f_a of their
entries fixed (all of an unpermuted axis, none of a permuted one, the unpermuted segments of a segmented one),
prod_a f_a entries stay and the rest move. A 2-MLP moves everything but its output layer's bias.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .labels import FrozenAxesWarning
from .symmetry import Axes, PermutationSpec


@dataclass(frozen=True)
class FrozenOp:
    where: str                 # the call, e.g. "call 'chunk' in 'GLUMLP'"
    why: str                   # what it does that no rule covers
    groups: tuple[str, ...]    # the groups it fixed (named after their first layer)


@dataclass(frozen=True)
class SpecReport:
    model: str
    groups: dict[str, int]     # group -> size
    parameters: int            # entries of the model's parameters (buffers not counted)
    moved: int                 # of those, entries some group moves
    tensors: int               # parameter tensors
    moved_tensors: int         # parameter tensors with at least one moved entry
    frozen: tuple[FrozenOp, ...]

    @property
    def moved_share(self) -> float:
        return self.moved / self.parameters if self.parameters else 0.0

    def lines(self) -> list[str]:
        """The report as text, a line per group and per freezing op."""
        out = [f"{self.model}: {len(self.groups)} permutation group(s); {self.moved:,} of {self.parameters:,} "
               f"parameters move ({100 * self.moved_share:.1f} %), {self.parameters - self.moved:,} stay; "
               f"{self.moved_tensors} of {self.tensors} parameter tensors move"]
        width = max((len(g) for g in self.groups), default=0)
        out += [f"  {g:<{width}}  size {n}" for g, n in self.groups.items()]
        out.append("frozen by ops: " + ("none" if not self.frozen else f"{len(self.frozen)}"))
        out += [f"  {op.where} {op.why}; froze {', '.join(op.groups)}" for op in self.frozen]
        return out


def fixed_entries(axes: Axes, shape: torch.Size, sizes: dict[str, int]) -> int:
    """How many entries of a tensor of `shape` with spec `axes` no group moves (a group of size 1 moves none)."""
    fixed = 1
    for entry, n in zip(axes, shape):
        if entry is None or (isinstance(entry, str) and sizes[entry] == 1):
            fixed *= n
        elif isinstance(entry, str):
            return 0
        else:
            fixed *= sum(block if g is None else sizes[g] * block for g, block in entry if g is None or sizes[g] == 1)
    return fixed


def spec_report(model: nn.Module, example_input: torch.Tensor | tuple | None = None) -> SpecReport:
    """The report of spec_for(model, example_input): the spec a transfer of `model` uses."""
    from .specs import spec_for

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FrozenAxesWarning)
        spec = spec_for(model, example_input)
    frozen = []
    for w in caught:
        if isinstance(w.message, FrozenAxesWarning):
            frozen.append(FrozenOp(w.message.where, w.message.why, w.message.groups))
        else:   # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return report_of(spec, model, tuple(frozen))


def report_of(spec: PermutationSpec, model: nn.Module, frozen: tuple[FrozenOp, ...] = ()) -> SpecReport:
    """The numbers of a spec with sizes for `model`'s parameters."""
    params = dict(model.named_parameters())
    moved = {k: v.numel() - fixed_entries(spec.axes[k], v.shape, spec.sizes) for k, v in params.items()}
    order = {k: i for i, k in enumerate(spec.axes)}   # groups in the order of the first tensor they act on
    groups = dict(sorted(spec.sizes.items(), key=lambda item: min(order[k] for k, _ in spec.groups[item[0]])))
    return SpecReport(type(model).__name__, groups, sum(v.numel() for v in params.values()), sum(moved.values()),
                      len(params), sum(1 for n in moved.values() if n), frozen)
