"""Labels and permutation groups: the machinery behind the rules of ltray.core.oprules.

Every axis of every tensor of a recorded forward pass gets a label: segments (var, block) laid end to end, each
covering size(var) * block entries, vars being candidate permutation groups in a union-find (`Groups`). Two labels
of one axis are unified var by var (`Labels.unify`); where their segments do not line up, both are cut at every
edge of either and the side that moves smaller blocks is coarsened (`Labels.align`). A group can be refined into a
subgroup: cut into parts that are permuted on their own (`Labels.split`, for chunk, split and GroupNorm), or
restricted to whole blocks of its units (`Labels.blocks`, for a view into heads or a grouped convolution); a refined
group is replaced by its parts wherever it appears (`Groups.expand`), so earlier labels stay valid. A var is frozen
(identity) where it meets the model's input or output, or an op without a rule (`Labels.freeze` warns naming the
call: FrozenAxesWarning). `Labels.spec` reads the PermutationSpec off the parameters' labels.
"""
from __future__ import annotations

import itertools
import math
import warnings

import torch
from torch import nn

from .symmetry import PermutationSpec

Label = list[tuple[int, int]]   # one tensor axis: segments (var, block)


class FrozenAxesWarning(UserWarning):
    """An op without a permutation rule fixed the permutation groups it touched: `where` names the call,
    `why` says what it does, `groups` are the groups it fixed (as data, for ltray.core.spec_report)."""

    def __init__(self, message: str, where: str = "", why: str = "", groups: tuple[str, ...] = ()):
        super().__init__(message)
        self.where, self.why, self.groups = where, why, groups


class NoRule(Exception):
    """Raised by a rule that does not apply to this call (the reason goes into the warning)."""


def arg(args, kwargs, i: int, name: str, default=None):
    """Argument `name` of a torch call, passed by keyword or as positional argument i."""
    return kwargs[name] if name in kwargs else args[i] if len(args) > i else default


def tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    return [t for item in obj for t in tensors(item)] if isinstance(obj, (list, tuple)) else []


class Groups:
    """Union-find over vars (candidate permutation groups). A merged group is named by its oldest layer output
    (else its oldest parameter axis); frozen spreads. A group can be refined into a subgroup: cut into parts that
    each keep their own entries (`cut`), or restricted to whole blocks of its units (`coarsen`); it is then
    replaced by new vars wherever it appears (`expand`), which is sound because the permutations of the parts
    are permutations of the whole."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str | None] = []   # None: born frozen (input, kernel and spatial axes)
        self.frozen: list[bool] = []
        self.rank: list[tuple[int, ...]] = []   # (0 for a layer's output axis, else 1; creation order; part, ...)
        self.parts: dict[int, list[tuple[int, int]]] = {}   # refined root -> its replacement (var, block factor)

    def new(self, size: int, name: str | None = None, layer: bool = True) -> int:
        return self._add(size, name, name is None, (0 if layer else 1, len(self.rank)))

    def _add(self, size: int, name: str | None, frozen: bool, rank: tuple[int, ...]) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        self.frozen.append(frozen)
        self.rank.append(rank)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = v = self.parent[self.parent[v]]
        return v

    def expand(self, label: Label) -> Label:
        """`label` in unrefined roots."""
        out = []
        for v, block in label:
            r = self.find(v)
            out += self.expand([(p, block * m) for p, m in self.parts[r]]) if r in self.parts else [(r, block)]
        return out

    def _refine(self, v: int, sizes: list[int], factor: int) -> list[int]:
        """Replace root v by parts of these sizes, each moving blocks of `factor` of v's units. Part 0 keeps the
        name, part i is named name[i]."""
        name = self.name[v]
        parts = [self._add(n, name if i == 0 or name is None else f"{name}[{i}]", self.frozen[v],
                           self.rank[v] + (i,)) for i, n in enumerate(sizes)]
        self.parts[v] = [(p, factor) for p in parts]
        return parts

    def cut(self, v: int, at: list[int]) -> None:
        """Cut root v's units at these offsets: each part is permuted on its own."""
        edges = [0, *sorted(set(at)), self.size[v]]
        self._refine(v, [b - a for a, b in zip(edges, edges[1:])], 1)

    def coarsen(self, v: int, k: int) -> None:
        """Let root v move only whole blocks of k consecutive units."""
        self._refine(v, [self.size[v] // k], k)

    def union(self, a: int, b: int) -> None:   # a and b unrefined
        a, b = sorted((self.find(a), self.find(b)), key=self.rank.__getitem__)
        if a != b:
            self.parent[b] = a
            self.frozen[a] = self.frozen[a] or self.frozen[b]

    def fixed(self, v: int) -> bool:
        return all(self.frozen[r] or self.size[r] == 1 for r, _ in self.expand([(v, 1)]))

    def freeze(self, v: int) -> list[str]:
        """Freeze v's group(s); the names of those that could move."""
        names = []
        for r, _ in self.expand([(v, 1)]):
            if not (self.frozen[r] or self.size[r] == 1):
                names.append(self.name[r])
            self.frozen[r] = True
        return names


class Labels:
    """The labels of the tensors of one forward pass and the groups behind them; the rules that set them are
    ltray.core.oprules.Labeller's."""

    def __init__(self, model: nn.Module):
        self.g = Groups()
        self.labels: dict[int, list[Label]] = {}   # id(tensor) -> one label per axis
        self.alive: list[torch.Tensor] = []         # recorded tensors stay alive so that ids are not reused
        self.keys: dict[int, str] = {}              # id(parameter or buffer) -> its first state_dict key
        for key, value in model.state_dict(keep_vars=True).items():
            self.keys.setdefault(id(value), key)
        self.params: dict[str, list[Label]] = {}    # state_dict key -> one label per axis
        self.scope, self.where = [type(model).__name__], ""   # module path of the running call, for messages

    # ---- labels ----
    def fixed(self, n: int) -> Label:
        return [(self.g.new(n), 1)]

    def of(self, t: torch.Tensor) -> list[Label]:
        key = self.keys.get(id(t))
        if key is not None:   # a parameter read by an op without a dedicated rule: one free var per axis
            if key not in self.params:
                names = [f"P_{key}" + (f":{i}" if t.ndim > 1 else "") for i in range(t.ndim)]
                self.params[key] = [[(self.g.new(n, name, layer=False), 1)] for n, name in zip(t.shape, names)]
            return [self.g.expand(label) for label in self.params[key]]
        if id(t) not in self.labels:   # the model's input, or a tensor made inside forward
            self.set(t, [self.fixed(n) for n in t.shape])
        return [self.g.expand(label) for label in self.labels[id(t)]]

    def set(self, t: torch.Tensor, labels: list[Label]) -> None:
        self.labels[id(t)] = labels
        self.alive.append(t)

    def bind(self, t: torch.Tensor | None, labels: list[Label]) -> None:
        """A weight's axes are these labels (its first use sets them, a later one must agree)."""
        key = None if t is None else self.keys.get(id(t))
        if key is not None and key not in self.params:
            self.params[key] = labels
        elif t is not None:
            for have, want in zip(self.of(t), labels):
                self.unify(have, want)

    def unify(self, a: Label, b: Label) -> None:
        size, a, b = self.g.size, self.g.expand(a), self.g.expand(b)
        if len(a) == len(b) and all(ba == bb and size[va] == size[vb] for (va, ba), (vb, bb) in zip(a, b)):
            for (va, _), (vb, _) in zip(a, b):
                self.g.union(va, vb)
        elif all(self.g.fixed(v) for v, _ in a) or all(self.g.fixed(v) for v, _ in b):
            for v, _ in a + b:   # meeting an unpermuted axis fixes the other one, as a union would
                self.g.freeze(v)
        else:
            try:
                self.align(a, b)
            except NoRule:
                self.freeze([a, b], "joins axes whose segments do not line up")

    def align(self, a: Label, b: Label) -> None:
        """Unify two labels of one axis whose segments do not line up (a residual stream that a GroupNorm cut into
        its groups, added to a layer's output): cut both at every segment edge of either, coarsen the side that
        moves smaller blocks, then unite segment by segment."""
        edges = sorted({e for L in (a, b) for e in itertools.accumulate(self.g.size[v] * k for v, k in L)})
        lengths = [e - s for s, e in zip([0, *edges], edges)]
        pieces = [self.split(a, lengths), self.split(b, lengths)]
        if any(len(p) != 1 for side in pieces for p in side):
            raise NoRule("segments do not line up")
        for [(va, ba)], [(vb, bb)] in zip(*pieces):
            if self.g.fixed(va) or self.g.fixed(vb):
                self.g.freeze(va), self.g.freeze(vb)
                continue
            (vs, bs), (vl, bl) = sorted([(va, ba), (vb, bb)], key=lambda seg: seg[1])
            if bl % bs:
                raise NoRule("blocks do not nest")
            if bl > bs:
                self.g.coarsen(vs, bl // bs)
                [(vs, bs)] = self.g.expand([(vs, bs)])
            self.g.union(vs, vl)

    def freeze(self, labels: list[Label], why: str) -> None:
        names = sorted({n for label in labels for v, _ in label for n in self.g.freeze(v)})
        if names:
            warnings.warn(FrozenAxesWarning(f"autospec: {self.where} {why}; froze {', '.join(names)}", self.where,
                                            why, tuple(names)))

    def name_for(self, weight: torch.Tensor) -> str:
        key = self.keys.get(id(weight))
        return "P_" + (key.removesuffix(".weight") if key else self.scope[-1])

    # ---- refining labels: a group restricted to a subgroup (Groups.cut, Groups.coarsen) ----
    def split(self, label: Label, lengths: list[int]) -> list[Label]:
        """The labels of consecutive pieces of `lengths` entries of an axis labelled `label`. A group whose
        entries a piece's edge falls among is cut there, each side then permuted on its own; an edge inside a
        block of entries that move together has no rule."""
        bounds = [0, *itertools.accumulate(lengths)]
        cuts: dict[int, list[int]] = {}
        start = 0
        for v, b in self.g.expand(label):
            n = self.g.size[v] * b
            for e in bounds[1:-1]:
                if start < e < start + n and not self.g.fixed(v):
                    if (e - start) % b:
                        raise NoRule("splits blocks of entries that move together")
                    cuts.setdefault(v, []).append((e - start) // b)
            start += n
        for v, at in cuts.items():
            self.g.cut(v, at)
        pieces: list[Label] = [[] for _ in lengths]
        start = 0
        for v, b in self.g.expand(label):
            end = start + self.g.size[v] * b
            hit = [i for i in range(len(lengths)) if bounds[i] < min(end, bounds[i + 1]) and start < bounds[i + 1]]
            if len(hit) == 1:
                pieces[hit[0]].append((v, b))
            else:   # a fixed segment across an edge: its entries stay in both pieces
                for i in hit:
                    pieces[i].append((self.g.new(min(end, bounds[i + 1]) - max(start, bounds[i])), 1))
            start = end
        return pieces

    def blocks(self, label: Label, m: int) -> Label:
        """The label of the outer axis when an axis labelled `label` is viewed as (n / m, m) with the inner axis
        unpermuted: each group moves whole blocks of m entries (coarsened where it moved smaller ones). A group
        that starts inside a block, or cannot be coarsened to whole blocks, has no rule."""
        factor: dict[int, int] = {}
        start = 0
        for v, b in self.g.expand(label):
            if not self.g.fixed(v):
                k = m // math.gcd(b, m)   # units of v per block of m entries (or per multiple of m)
                factor[v] = math.lcm(factor.get(v, 1), k)
                if start % m or self.g.size[v] % factor[v]:
                    raise NoRule(f"moves entries across blocks of {m}")
            start += self.g.size[v] * b
        for v, k in factor.items():
            if k > 1:
                self.g.coarsen(v, k)
        out, run = [], 0
        for v, b in self.g.expand(label) + [(None, 0)]:
            if v is not None and self.g.fixed(v):
                run += self.g.size[v] * b
                continue
            if run:
                out.append((self.g.new(run // m), 1))
                run = 0
            if v is not None:
                out.append((v, b // m))
        return out

    def broadcast(self, operands: list[tuple[list[Label], tuple]], shape: tuple) -> list[Label]:
        """Broadcasting (labels, shape) operands to `shape`: equal-sized axes aligned from the right share groups."""
        labels = []
        for i in range(1, len(shape) + 1):
            here = [L[-i] for L, s in operands if len(s) >= i and s[-i] == shape[-i]]
            for other in here[1:]:
                self.unify(here[0], other)
            labels.insert(0, here[0] if here else self.fixed(shape[-i]))
        return labels

    # ---- the spec ----
    def freeze_output(self, out) -> None:
        """Logits, like the input, are never permuted."""
        for t in tensors(out):
            for label in self.of(t):
                for v, _ in label:
                    self.g.freeze(v)

    def spec(self, model: nn.Module) -> PermutationSpec:
        names: dict[int, str] = {}

        def entry(label: Label):
            segments: list = []
            for v, block in self.g.expand(label):
                r = self.g.find(v)
                if self.g.fixed(r):
                    n = self.g.size[r] * block
                    if segments and segments[-1][0] is None:
                        n += segments.pop()[1]
                    segments.append((None, n))
                else:
                    if r not in names:   # the group's root names it; a repeated name gets a suffix
                        base = self.g.name[r]
                        names[r] = base if base not in names.values() else f"{base}#{r}"
                    segments.append((names[r], block))
            if len(segments) == 1 and (segments[0][0] is None or segments[0][1] == 1):
                return segments[0][0]
            return tuple(segments)

        axes = {}
        for key, value in model.state_dict(keep_vars=True).items():
            labels = self.params.get(self.keys[id(value)])
            axes[key] = tuple(entry(label) for label in labels) if labels else (None,) * value.ndim
        return PermutationSpec(axes, {g: self.g.size[r] for r, g in names.items()}).with_sizes(model.state_dict())
