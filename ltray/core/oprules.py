"""How torch calls move permutation groups: the rules behind ltray.core.autospec.

Every axis of every tensor of a recorded forward pass gets a label: segments (var, block) laid end to end, each
covering size(var) * block entries, vars being candidate permutation groups in a union-find (`Groups`). A Linear
or Conv output axis is a new var named after its weight; a residual add unifies its operands' vars; torch.cat
lays segments end to end; flatten multiplies the blocks of the merged axis that moves by the size of the
unpermuted axes behind it. Some ops keep a symmetry only if a group is restricted to a subgroup: torch.chunk,
split and F.glu cut a group into parts (a gate's two halves, then united by the product: both halves move alike);
a view into (heads, head_dim), a grouped convolution and attention coarsen it into whole blocks (heads move as
blocks of head_dim, alike in q, k, v and the output projection); GroupNorm cuts channels into their groups. A
refined group is replaced by its parts wherever it appears (`Groups.expand`), so earlier labels stay valid.
A var is frozen (identity) where it meets the model's input or output, or an op without a rule:
that op freezes every var it touches and warns naming the call (FrozenAxesWarning), so an op we cannot reason
about costs symmetry, never correctness. Each rule returns the output's labels.
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


class _NoRule(Exception):
    """Raised by a rule that does not apply to this call (the reason goes into the warning)."""


def _arg(args, kwargs, i: int, name: str, default=None):
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


_SAME = {"relu", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "relu6", "leaky_relu", "elu", "selu", "celu", "mish",
         "softplus", "hardswish", "hardsigmoid", "softmax", "log_softmax", "dropout", "dropout1d", "dropout2d",
         "dropout3d", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous", "detach", "to", "float",
         "neg", "exp", "abs", "sqrt", "rsqrt", "square"}
_ELEMENTWISE = {"add", "iadd", "radd", "sub", "isub", "rsub", "mul", "imul", "rmul", "div", "truediv", "itruediv",
                "rtruediv", "true_divide", "maximum", "minimum", "pow", "where", "gt", "lt", "ge", "le", "eq", "ne",
                "clamp", "clip"}
_REDUCE = {"mean", "sum", "amax", "amin", "logsumexp", "nanmean", "nansum"}
_RESHAPE = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "unflatten"}
_QUERIES = {"size", "dim", "get", "numel", "ndimension", "nelement", "is_contiguous", "is_floating_point", "len",
            "stride", "element_size"}


class Labeller:
    """Labels every tensor of one forward pass, call by call (`record`), and reads the spec off the labels."""

    def __init__(self, model: nn.Module):
        self.g = Groups()
        self.labels: dict[int, list[Label]] = {}   # id(tensor) -> one label per axis
        self.alive: list[torch.Tensor] = []         # recorded tensors stay alive so that ids are not reused
        self.keys: dict[int, str] = {}              # id(parameter or buffer) -> its first state_dict key
        for key, value in model.state_dict(keep_vars=True).items():
            self.keys.setdefault(id(value), key)
        self.params: dict[str, list[Label]] = {}    # state_dict key -> one label per axis
        self.scope, self.where = [type(model).__name__], ""   # module path of the running call, for messages
        self.rules = {"linear": self.linear, "conv1d": self.conv, "conv2d": self.conv, "conv3d": self.conv,
                      "batch_norm": self.channelwise, "instance_norm": self.channelwise,
                      "layer_norm": self.layer_norm, "rms_norm": self.layer_norm, "group_norm": self.group_norm,
                      "cat": self.cat, "concat": self.cat, "concatenate": self.cat, "pad": self.pad,
                      "interpolate": self.resize, "permute": self.permute, "transpose": self.transpose,
                      "swapaxes": self.transpose, "t": self.transpose, "expand": self.expand,
                      "expand_as": self.expand, "broadcast_to": self.expand, "getitem": self.getitem,
                      "glu": self.glu, "matmul": self.matmul, "bmm": self.matmul, "mm": self.matmul,
                      "scaled_dot_product_attention": self.attention}
        self.splits = {"chunk": self.split_rule, "split": self.split_rule, "tensor_split": self.split_rule,
                       "unbind": self.unbind, "multi_head_attention_forward": self.multi_head_attention}
        for n in (1, 2, 3):
            for kind in ("max_pool", "avg_pool", "adaptive_max_pool", "adaptive_avg_pool", "lp_pool"):
                self.rules[f"{kind}{n}d"] = lambda args, kwargs, out, n=n: self.spatial(args, out, n)
        for names, rule in ((_SAME, self.same), (_ELEMENTWISE, self.elementwise), (_REDUCE, self.reduce),
                            (_RESHAPE, self.reshape)):
            self.rules |= dict.fromkeys(names, rule)

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
            except _NoRule:
                self.freeze([a, b], "joins axes whose segments do not line up")

    def align(self, a: Label, b: Label) -> None:
        """Unify two labels of one axis whose segments do not line up (a residual stream that a GroupNorm cut into
        its groups, added to a layer's output): cut both at every segment edge of either, coarsen the side that
        moves smaller blocks, then unite segment by segment."""
        edges = sorted({e for L in (a, b) for e in itertools.accumulate(self.g.size[v] * k for v, k in L)})
        lengths = [e - s for s, e in zip([0, *edges], edges)]
        pieces = [self.split(a, lengths), self.split(b, lengths)]
        if any(len(p) != 1 for side in pieces for p in side):
            raise _NoRule("segments do not line up")
        for [(va, ba)], [(vb, bb)] in zip(*pieces):
            if self.g.fixed(va) or self.g.fixed(vb):
                self.g.freeze(va), self.g.freeze(vb)
                continue
            (vs, bs), (vl, bl) = sorted([(va, ba), (vb, bb)], key=lambda seg: seg[1])
            if bl % bs:
                raise _NoRule("blocks do not nest")
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
                        raise _NoRule("splits blocks of entries that move together")
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
                    raise _NoRule(f"moves entries across blocks of {m}")
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

    # ---- recording ----
    def record(self, name: str, args: tuple, kwargs: dict, out) -> None:
        """One torch call (`name` without leading and trailing underscores: `__iadd__` and `add_` are `add`)."""
        self.where = f"call {name!r} in {self.scope[-1]!r}"
        several = isinstance(out, (tuple, list)) and name in self.splits and tensors(out)
        if isinstance(out, torch.Tensor) or several:
            try:
                if several:   # chunk, split, attention with its weights: one label list per tensor in `out`
                    for t, labels in zip(tensors(out), self.splits[name](args, kwargs, tensors(out))):
                        self.set(t, labels)
                elif name not in self.rules:
                    raise _NoRule("has no permutation rule")
                else:
                    self.set(out, self.rules[name](args, kwargs, out))
            except _NoRule as e:
                self.unknown(args, kwargs, out, str(e))
            except Warning:   # a FrozenAxesWarning a filter made an error: the caller asked to stop there
                raise
            except Exception as e:   # arguments a rule did not expect: fix what the call touches
                self.unknown(args, kwargs, out, f"does not fit its rule ({type(e).__name__}: {e})")
        elif name not in _QUERIES:   # tuples of tensors, Python numbers read off tensors, in-place setitem, ...
            self.unknown(args, kwargs, out, "has no permutation rule")

    def unknown(self, args, kwargs, out, why: str) -> None:
        self.freeze([label for t in tensors((args, kwargs)) for label in self.of(t)], why)
        for t in tensors(out):
            self.set(t, [self.fixed(n) for n in t.shape])

    # ---- rules: each returns the output's labels or raises _NoRule ----
    def same(self, args, kwargs, out):   # elementwise on one tensor, or equivariant along its axes (softmax)
        if not isinstance(args[0], torch.Tensor) or args[0].shape != out.shape:
            raise _NoRule("changes its input's shape")
        return self.of(args[0])

    def elementwise(self, args, kwargs, out):
        return self.broadcast([(self.of(t), t.shape) for t in tensors((args, kwargs))], out.shape)

    def broadcast(self, operands: list[tuple[list[Label], tuple]], shape: tuple) -> list[Label]:
        """Broadcasting (labels, shape) operands to `shape`: equal-sized axes aligned from the right share groups."""
        labels = []
        for i in range(1, len(shape) + 1):
            here = [L[-i] for L, s in operands if len(s) >= i and s[-i] == shape[-i]]
            for other in here[1:]:
                self.unify(here[0], other)
            labels.insert(0, here[0] if here else self.fixed(shape[-i]))
        return labels

    def linear(self, args, kwargs, out):
        x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        X = self.of(x)
        y = [(self.g.new(w.shape[0], self.name_for(w)), 1)]
        self.bind(w, [y, X[-1]])
        self.bind(b, [y])
        return X[:-1] + [y]

    def conv(self, args, kwargs, out):
        x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        groups = _arg(args, kwargs, 6, "groups", 1)
        X, c = self.of(x), x.ndim - w.ndim + 1   # channel axis: 1, or 0 for an unbatched input
        kernel = [self.fixed(n) for n in w.shape[2:]]
        if groups == 1:
            y = [(self.g.new(w.shape[0], self.name_for(w)), 1)]
            self.bind(w, [y, X[c]] + kernel)
        else:   # grouped: output group i (out/groups channels) reads input group i only, so the groups move as
            # blocks, alike on both sides; depthwise (one input channel per group) keeps the input's permutation
            G = self.blocks(X[c], x.shape[c] // groups)
            y = [(v, block * (w.shape[0] // groups)) for v, block in G]
            self.bind(w, [y, self.fixed(w.shape[1])] + kernel)
        self.bind(b, [y])
        self.freeze(X[c + 1:], "mixes spatial positions")
        return X[:c] + [y] + [self.fixed(n) for n in out.shape[c + 1:]]

    def channelwise(self, args, kwargs, out):   # batch/instance norm: running stats and affine per channel
        X = self.of(args[0])
        for t in tensors((args[1:], kwargs)):
            self.bind(t, [X[1]])
        return X

    def layer_norm(self, args, kwargs, out):    # statistics over the last k axes; weight and bias on them
        X, k = self.of(args[0]), len(_arg(args, kwargs, 1, "normalized_shape"))
        for t in tensors((args[2:], kwargs)):
            self.bind(t, X[-k:])
        return X

    def group_norm(self, args, kwargs, out):   # statistics over each group of consecutive channels
        groups, C = _arg(args, kwargs, 1, "num_groups"), args[0].shape[1]
        if 1 < groups < C:   # a channel may move only within its group (each group permuted on its own)
            self.split(self.of(args[0])[1], [C // groups] * groups)
        return self.channelwise(args, kwargs, out)

    def spatial(self, args, out, n: int):   # pooling, padding, resizing: the last n axes change, the rest pass
        x = args[0]
        if n > x.ndim - 1 or out.ndim != x.ndim or out.shape[:-n] != x.shape[:-n]:
            raise _NoRule("changes axes other than the spatial ones")
        X = self.of(x)
        self.freeze(X[-n:], "mixes spatial positions")
        return X[:-n] + [self.fixed(s) for s in out.shape[-n:]]

    def pad(self, args, kwargs, out):
        n = len(_arg(args, kwargs, 1, "pad")) // 2
        return self.spatial(args, out, n) if n else self.same(args, kwargs, out)

    def resize(self, args, kwargs, out):
        return self.spatial(args, out, args[0].ndim - 2)

    def reduce(self, args, kwargs, out):   # a sum or mean over a permuted axis does not see the permutation
        x, dim, keep = args[0], _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "keepdim", False)
        dims = range(x.ndim) if dim is None else [dim] if isinstance(dim, int) else dim
        if not isinstance(keep, bool) or not all(isinstance(d, int) for d in dims):
            raise _NoRule("has arguments this rule does not read")
        dims = {d % x.ndim for d in dims}
        labels = [self.fixed(1) if i in dims else label for i, label in enumerate(self.of(x)) if keep or i not in dims]
        if len(labels) != out.ndim:
            raise _NoRule("has arguments this rule does not read")
        return labels

    def reshape(self, args, kwargs, out):
        """Axes before and after the reshaped run keep their labels. A run merged into one axis (flatten) keeps
        the segments of its first axis that moves, blocks times the size of the axes behind it, repeated for each
        entry of the axes before it; other axes that move are frozen. An axis split into several (unflatten, a
        view into (heads, head_dim)) moves along one of them (`unflatten`)."""
        x, a, b = args[0], tuple(args[0].shape), tuple(out.shape)
        X = self.of(x)
        i = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        j = next((j for j in range(min(len(a), len(b)) - i) if a[-1 - j] != b[-1 - j]), min(len(a), len(b)) - i)
        run, sizes, new = X[i:len(a) - j], a[i:len(a) - j], b[i:len(b) - j]
        if len(new) == 1 and run:
            k = next((k for k, L in enumerate(run) if not all(self.g.fixed(v) for v, _ in L)), 0)
            self.freeze(run[:k] + run[k + 1:], "flattens a permuted axis behind another one")
            rest = math.prod(sizes[k + 1:])
            middle = [[(v, block * rest) for v, block in run[k]] * math.prod(sizes[:k])]
        elif len(run) == 1 and len(new) > 1:
            middle = self.unflatten(run[0], new)
        else:
            self.freeze(run, "reshapes a permuted axis")
            middle = [self.fixed(n) for n in new]
        return X[:i] + middle + X[len(a) - j:]

    def unflatten(self, label: Label, new: tuple) -> list[Label]:
        """One axis viewed as several: axis k of `new` takes the permutation, in blocks of the axes behind it,
        alike for every entry of the axes before it; the others are unpermuted. k is the outermost axis that
        needs no refinement of the groups (a flattened map unflattened), else the one before the last axis of
        size > 1: a fresh feature axis viewed as (heads, head_dim) or (3, heads, head_dim) moves its heads."""
        n, L = math.prod(new), self.g.expand(label)
        if all(self.g.fixed(v) for v, _ in L):
            return [self.fixed(s) for s in new]
        big = [k for k, s in enumerate(new) if s > 1]
        k = next((k for k in big if self._fits(L, n // math.prod(new[:k]), math.prod(new[k + 1:]))),
                 big[-2] if len(big) > 1 else big[0])
        try:
            parts = self.split(L, [n // math.prod(new[:k])] * math.prod(new[:k]))
            outer = [self.blocks(p, math.prod(new[k + 1:])) for p in parts]
        except _NoRule:
            self.freeze([L], "reshapes a permuted axis")
            return [self.fixed(s) for s in new]
        for other in outer[1:]:   # the same permutation for each entry of the axes before axis k
            self.unify(outer[0], other)
        return [outer[0] if i == k else self.fixed(s) for i, s in enumerate(new)]

    def _fits(self, label: Label, piece: int, m: int) -> bool:
        """Whether `label`, split into pieces of `piece` entries and viewed in blocks of m, needs no refinement."""
        start, moves = 0, False
        for v, b in label:
            n = self.g.size[v] * b
            if not self.g.fixed(v):
                moves = True
                if start % piece + n > piece or b % m or start % m:
                    return False
            start += n
        return moves

    def permute(self, args, kwargs, out):   # x.permute(*dims), torch.permute(x, dims)
        dims = _arg(args, kwargs, 1, "dims")
        dims = args[1:] if isinstance(dims, int) else dims
        return [self.of(args[0])[d] for d in dims]

    def transpose(self, args, kwargs, out):   # transpose / swapaxes (x, d0, d1), and x.t() (d0, d1 = 0, -1)
        if set(kwargs) - {"dim0", "dim1"}:
            raise _NoRule("has arguments this rule does not read")
        X, d0, d1 = list(self.of(args[0])), _arg(args, kwargs, 1, "dim0", 0), _arg(args, kwargs, 2, "dim1", -1)
        X[d0], X[d1] = X[d1], X[d0]
        return X

    def expand(self, args, kwargs, out):   # broadcast: axes that keep their size keep their labels
        x, X = args[0], self.of(args[0])
        lead = out.ndim - x.ndim
        kept = [label if n == m else self.fixed(m) for label, n, m in zip(X, x.shape, out.shape[lead:])]
        return [self.fixed(n) for n in out.shape[:lead]] + kept

    def getitem(self, args, kwargs, out):   # basic indexing: x[:, 0], x[..., :k, None]
        x, index = args
        index = index if isinstance(index, tuple) else (index,)
        if not all(i is None or i is Ellipsis or isinstance(i, slice) or type(i) is int for i in index):
            raise _NoRule("indexes with tensors or lists")
        if Ellipsis in index:
            k, used = index.index(Ellipsis), sum(i is not None and i is not Ellipsis for i in index)
            index = index[:k] + (slice(None),) * (x.ndim - used) + index[k + 1:]
        X, labels, axis = self.of(x), [], 0
        for i in index:
            if i is None:
                labels.append(self.fixed(1))
                continue
            if isinstance(i, slice) and range(*i.indices(x.shape[axis])) == range(x.shape[axis]):
                labels.append(X[axis])
            else:   # picking entries of an axis sees their order
                self.freeze([X[axis]], "picks entries of a permuted axis")
                if isinstance(i, slice):
                    labels.append(self.fixed(len(range(*i.indices(x.shape[axis])))))
            axis += 1
        return labels + X[axis:]

    def split_rule(self, args, kwargs, outs):   # chunk, split, tensor_split: consecutive pieces along dim
        x = args[0]
        d = _arg(args, kwargs, 2, "dim", 0) % x.ndim
        X = self.of(x)
        return [X[:d] + [piece] + X[d + 1:] for piece in self.split(X[d], [t.shape[d] for t in outs])]

    def unbind(self, args, kwargs, outs):
        X, d = self.of(args[0]), _arg(args, kwargs, 1, "dim", 0) % args[0].ndim
        self.freeze([X[d]], "picks entries of a permuted axis")
        return [X[:d] + X[d + 1:]] * len(outs)

    def glu(self, args, kwargs, out):   # a * sigmoid(b) for the halves a, b along dim: both halves move alike
        X, d = self.of(args[0]), _arg(args, kwargs, 1, "dim", -1) % args[0].ndim
        a, b = self.split(X[d], [out.shape[d]] * 2)
        self.unify(a, b)
        return X[:d] + [a] + X[d + 1:]

    def matmul(self, args, kwargs, out):   # (..., n, k) @ (..., k, m): k summed over, batch axes broadcast
        a, b = args[0], args[1]
        if a.ndim < 2 or b.ndim < 2:
            raise _NoRule("multiplies by a vector")
        A, B = self.of(a), self.of(b)
        self.unify(A[-1], B[-2])
        return self.broadcast([(A[:-2], a.shape[:-2]), (B[:-2], b.shape[:-2])], out.shape[:-2]) + [A[-2], B[-1]]

    def attention(self, args, kwargs, out):
        """F.scaled_dot_product_attention(q, k, v, attn_mask, ...): softmax(q k^T + mask) v. q and k alike along
        features, k and v alike along positions, the mask like the scores; batch axes (heads) broadcast."""
        (q, k, v), mask = [_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value"))], \
            _arg(args, kwargs, 3, "attn_mask")
        if any(s not in (1, n) for t in (k, v) for s, n in zip(t.shape[:-2], q.shape[:-2])):
            raise _NoRule("shares keys between heads (grouped-query attention)")
        Q, K, V = self.of(q), self.of(k), self.of(v)
        self.unify(Q[-1], K[-1])
        self.unify(K[-2], V[-2])
        batch = self.broadcast([(Q[:-2], q.shape[:-2]), (K[:-2], k.shape[:-2]), (V[:-2], v.shape[:-2])],
                               out.shape[:-2])
        if _arg(args, kwargs, 5, "is_causal", False):   # the mask follows the positions' order
            self.freeze([Q[-2], K[-2]], "masks by position")
        if isinstance(mask, torch.Tensor):
            scores = (*out.shape[:-1], k.shape[-2])
            self.broadcast([(batch + [Q[-2], K[-2]], scores), (self.of(mask), mask.shape)], scores)
        return batch + [Q[-2], V[-1]]

    def multi_head_attention(self, args, kwargs, outs):
        """F.multi_head_attention_forward (nn.MultiheadAttention): the heads move as blocks of head_dim, alike in
        the q, k and v projections and the output projection's input; the projections' inputs follow q, k and
        v's features, the output is a new group. Positions stay."""
        names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
                 "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
                 "k_proj_weight", "v_proj_weight", "static_k", "static_v")
        a = {n: _arg(args, kwargs, i, n) for i, n in enumerate(names)}
        if a["static_k"] is not None or a["static_v"] is not None:
            raise _NoRule("takes precomputed keys or values")
        Q, K, V = (self.of(a[n]) for n in ("query", "key", "value"))
        self.freeze(Q[:-1] + K[:-1] + V[:-1], "attends across positions")
        h, E = a["num_heads"], a["query"].shape[-1]
        H = [(self.g.new(h, f"P_{self.scope[-1]}.heads"), E // h)]
        mask = a["attn_mask"]
        if isinstance(mask, torch.Tensor) and mask.ndim == 3:   # one mask per (batch, head)
            self.freeze([H], "masks each head on its own")
        if a["use_separate_proj_weight"]:
            for w, X in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), (Q, K, V)):
                self.bind(a[w], [H, X[-1]])
        else:   # one weight projects q, k and v: their features move alike
            for X in (Q, K, V):
                self.bind(a["in_proj_weight"], [H * 3, X[-1]])
        self.bind(a["in_proj_bias"], [H * 3])
        for t in (a["bias_k"], a["bias_v"]):   # (1, 1, E): a key and value appended to each sequence
            if t is not None:
                self.bind(t, [self.fixed(1), self.fixed(1), H])
        w = a["out_proj_weight"]
        y = [(self.g.new(w.shape[0], self.name_for(w)), 1)]
        self.bind(w, [y, H])
        self.bind(a["out_proj_bias"], [y])
        labels = [Q[:-1] + [y]]
        if len(outs) > 1:   # the attention weights: (N, L, S), or (N, heads, L, S) when not averaged over heads
            labels.append([self.fixed(n) for n in outs[1].shape])
            if outs[1].ndim == a["query"].ndim + 1:
                labels[-1][-3] = [(H[0][0], 1)]
        return labels

    def cat(self, args, kwargs, out):   # segments laid end to end along `dim`; the other axes share groups
        parts = [t for t in _arg(args, kwargs, 0, "tensors") if t.ndim == out.ndim]
        d = _arg(args, kwargs, 1, "dim", 0) % out.ndim
        labels = [self.of(t) for t in parts]
        for other in labels[1:]:
            for i in range(out.ndim):
                if i != d:
                    self.unify(labels[0][i], other[i])
        return [labels[0][i] if i != d else [seg for L in labels for seg in L[d]] for i in range(out.ndim)]

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


