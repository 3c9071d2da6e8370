"""Permutation symmetry as data (paper Sec. 2.2).

A `PermutationSpec` maps every state_dict key to one entry per tensor axis: the name of the permutation
group acting on that axis, or None. Axes follow PyTorch order (Linear.weight is (out, in), Conv2d.weight is
(out, in, kh, kw)). A permutation is a dict {group: LongTensor perm} with the convention

    permuted[..., i, ...] = original[..., perm[i], ...]      (on every axis the group acts on)

so `apply_permutation(spec, perm, theta)` is the paper's pi theta and leaves f(x; theta) unchanged.

An axis may also be *segmented*: a tuple of pieces laid end to end. A piece (group, block) covers
size(group) * block entries and moves them in blocks of `block` consecutive entries; a piece (None, n) covers n
entries no group moves. Flattening C permuted channels of H x W maps into C*H*W features gives
(("P_conv", H*W),); concatenating two feature maps along channels gives (("P_a", 1), ("P_b", 1)), and
concatenating the raw 3-channel input in front of them ((None, 3), ("P_a", 1)).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ..errors import LtrayError

Segment = tuple[str | None, int]        # (group, block) or (None, number of fixed entries)
Axes = tuple[str | None | tuple[Segment, ...], ...]
Permutation = dict[str, torch.Tensor]
Piece = tuple[int, str, int, int, int]  # (axis, group, start, n, block): entries start .. start + n*block


@dataclass(frozen=True)
class PermutationSpec:
    axes: dict[str, Axes]
    sizes: dict[str, int] | None = None   # group -> size; filled in by spec_for(model) / with_sizes(state)
    # group -> [(key, axis)], derived from `axes`
    groups: dict[str, list[tuple[str, int]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for key, axes in self.axes.items():
            for axis, entry in enumerate(axes):
                names = [entry] if isinstance(entry, str) else [g for g, _ in entry or () if g is not None]
                for g in names:
                    if (key, axis) not in groups[g]:   # a group twice on one segmented axis is one member
                        groups[g].append((key, axis))
        object.__setattr__(self, "groups", dict(groups))

    def with_sizes(self, state: dict[str, torch.Tensor]) -> "PermutationSpec":
        """This spec with group sizes read off `state`, after checking that it covers `state` exactly."""
        return PermutationSpec(self.axes, check_spec(self, state))


def check_spec(spec: PermutationSpec, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Raise a one-line LtrayError unless `spec` covers every tensor of `state` with consistent sizes; return
    the group sizes. A group's size is read off the whole axes it acts on, else off a segmented axis where it
    is the only group, else taken from `spec.sizes` (a stream cut into GroupNorm's groups acts only on axes
    shared with the other groups); every segmented axis must then add up."""
    missing = [k for k in state if k not in spec.axes]
    if missing:
        raise LtrayError(f"permutation spec does not cover tensor(s) {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    for k, v in state.items():
        if v.ndim != len(spec.axes[k]):
            raise LtrayError(f"tensor {k!r} has {v.ndim} axes but its spec lists {len(spec.axes[k])}")
    sizes: dict[str, int] = {}
    for g, members in spec.groups.items():
        whole = {state[k].shape[a] for k, a in members if k in state and isinstance(spec.axes[k][a], str)}
        if not whole:   # a group seen only inside segmented axes
            whole = {n for k, a in members if k in state
                     for n in [_lone_piece_size(spec.axes[k][a], state[k].shape[a])] if n is not None}
        if not whole and spec.sizes and g in spec.sizes:
            whole = {spec.sizes[g]}
        if len(whole) > 1:
            raise LtrayError(f"permutation group {g!r} acts on axes of different sizes {sorted(whole)}")
        if not whole and any(k in state for k, _ in members):
            raise LtrayError(f"permutation group {g!r}: no tensor of the state gives its size")
        if whole:
            sizes[g] = whole.pop()
    for k, v in state.items():
        for axis, entry in enumerate(spec.axes[k]):
            if isinstance(entry, tuple):
                covered = sum(n if g is None else sizes[g] * n for g, n in entry)
                if covered != v.shape[axis]:
                    raise LtrayError(f"axis {axis} of {k!r} has {v.shape[axis]} entries but its segments "
                                     f"cover {covered}")
    return sizes


def _lone_piece_size(entry: tuple[Segment, ...], length: int) -> int | None:
    """The group size of a segmented axis of `length` entries where a single group acts, in one piece or several
    (the two halves of a GLU's input, q, k and v of a fused projection), else None."""
    blocks = [block for g, block in entry if g is not None]
    fixed = sum(n for g, n in entry if g is None)
    return (length - fixed) // sum(blocks) if len({g for g, _ in entry if g is not None}) == 1 else None


# ---- the group action ----------------------------------------------------------------------------------

def pieces(axes: Axes, sizes: dict[str, int]) -> list[Piece]:
    """Where groups act on one tensor whose spec is `axes`: (axis, group, start, n, block) per piece, meaning
    entries start .. start + n*block of `axis` move in n blocks of `block`. A whole axis is (axis, g, 0, n, 1)."""
    out = []
    for axis, entry in enumerate(axes):
        if isinstance(entry, str):
            out.append((axis, entry, 0, sizes[entry], 1))
        elif entry is not None:
            start = 0
            for g, n in entry:
                if g is not None:
                    out.append((axis, g, start, sizes[g], n))
                start += n if g is None else sizes[g] * n
    return out


def _axis_index(entry, perm: Permutation, key: str, axis: int, length: int) -> torch.Tensor:
    """The index that permutes one axis: permuted[..., i, ...] = original[..., index[i], ...]."""
    if isinstance(entry, str):
        index = perm[entry]
    else:
        parts, start = [], 0
        for g, n in entry:
            if g is None:
                parts.append(torch.arange(start, start + n))
                start += n
            else:   # block i of the piece is filled by block perm[i]
                p = perm[g].cpu()
                parts.append((start + p[:, None] * n + torch.arange(n)).flatten())
                start += p.numel() * n
        index = torch.cat(parts)
    if index.numel() != length:
        raise LtrayError(f"permutation {entry!r} has size {index.numel()} but axis {axis} of {key!r} has size "
                         f"{length}")
    return index


def permute_axes_except(spec: PermutationSpec, perm: Permutation, key: str, value: torch.Tensor,
                        skip_axis: int) -> torch.Tensor:
    """Permute every permuted axis of one tensor but `skip_axis` (the matcher's building block)."""
    for axis, entry in enumerate(spec.axes[key]):
        if entry is not None and axis != skip_axis:
            index = _axis_index(entry, perm, key, axis, value.shape[axis])
            value = torch.index_select(value, axis, index.to(value.device))
    return value


def apply_permutation(spec: PermutationSpec, perm: Permutation, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pi theta: a new dict; keys absent from the spec are an error, keys absent from `state` are skipped."""
    out = {}
    for key, value in state.items():
        if key not in spec.axes:
            raise LtrayError(f"permutation spec does not cover tensor {key!r}")
        out[key] = permute_axes_except(spec, perm, key, value, skip_axis=-1)
    return out


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
