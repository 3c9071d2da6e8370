"""How torch calls move permutation groups: the rules behind ltray.core.autospec.

Each rule reads a call's arguments' labels (ltray.core.labels) and returns its output's. A Linear or Conv output
axis is a new var named after its weight; a residual add unifies its operands' vars; torch.cat lays segments end
to end; flatten multiplies the blocks of the merged axis that moves by the size of the unpermuted axes behind it.
Some ops keep a symmetry only if a group is restricted to a subgroup: torch.chunk, split and F.glu cut a group
into parts (a gate's two halves, then united by the product: both halves move alike); a view into (heads,
head_dim) and a grouped convolution coarsen it into whole blocks; GroupNorm cuts channels into their groups.
Attention's rules (heads as blocks of head_dim, alike in q, k, v and the output projection) are in
ltray.core.attention_rules. An op without a rule freezes every var it touches and warns naming the call
(FrozenAxesWarning), so an op we cannot reason about costs symmetry, never correctness.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .attention_rules import AttentionRules
from .labels import FrozenAxesWarning, Label, NoRule, arg, tensors  # noqa: F401  (re-exported: the old home)

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


class Labeller(AttentionRules):
    """Labels every tensor of one forward pass, call by call (`record`), and reads the spec off the labels."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
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
                    raise NoRule("has no permutation rule")
                else:
                    self.set(out, self.rules[name](args, kwargs, out))
            except NoRule as e:
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

    # ---- rules: each returns the output's labels or raises NoRule ----
    def same(self, args, kwargs, out):   # elementwise on one tensor, or equivariant along its axes (softmax)
        if not isinstance(args[0], torch.Tensor) or args[0].shape != out.shape:
            raise NoRule("changes its input's shape")
        return self.of(args[0])

    def elementwise(self, args, kwargs, out):
        return self.broadcast([(self.of(t), t.shape) for t in tensors((args, kwargs))], out.shape)

    def linear(self, args, kwargs, out):
        x, w, b = args[0], arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
        X = self.of(x)
        y = [(self.g.new(w.shape[0], self.name_for(w)), 1)]
        self.bind(w, [y, X[-1]])
        self.bind(b, [y])
        return X[:-1] + [y]

    def conv(self, args, kwargs, out):
        x, w, b = args[0], arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
        groups = arg(args, kwargs, 6, "groups", 1)
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
        X, k = self.of(args[0]), len(arg(args, kwargs, 1, "normalized_shape"))
        for t in tensors((args[2:], kwargs)):
            self.bind(t, X[-k:])
        return X

    def group_norm(self, args, kwargs, out):   # statistics over each group of consecutive channels
        groups, C = arg(args, kwargs, 1, "num_groups"), args[0].shape[1]
        if 1 < groups < C:   # a channel may move only within its group (each group permuted on its own)
            self.split(self.of(args[0])[1], [C // groups] * groups)
        return self.channelwise(args, kwargs, out)

    def spatial(self, args, out, n: int):   # pooling, padding, resizing: the last n axes change, the rest pass
        x = args[0]
        if n > x.ndim - 1 or out.ndim != x.ndim or out.shape[:-n] != x.shape[:-n]:
            raise NoRule("changes axes other than the spatial ones")
        X = self.of(x)
        self.freeze(X[-n:], "mixes spatial positions")
        return X[:-n] + [self.fixed(s) for s in out.shape[-n:]]

    def pad(self, args, kwargs, out):
        n = len(arg(args, kwargs, 1, "pad")) // 2
        return self.spatial(args, out, n) if n else self.same(args, kwargs, out)

    def resize(self, args, kwargs, out):
        return self.spatial(args, out, args[0].ndim - 2)

    def reduce(self, args, kwargs, out):   # a sum or mean over a permuted axis does not see the permutation
        x, dim, keep = args[0], arg(args, kwargs, 1, "dim"), arg(args, kwargs, 2, "keepdim", False)
        dims = range(x.ndim) if dim is None else [dim] if isinstance(dim, int) else dim
        if not isinstance(keep, bool) or not all(isinstance(d, int) for d in dims):
            raise NoRule("has arguments this rule does not read")
        dims = {d % x.ndim for d in dims}
        labels = [self.fixed(1) if i in dims else label for i, label in enumerate(self.of(x)) if keep or i not in dims]
        if len(labels) != out.ndim:
            raise NoRule("has arguments this rule does not read")
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
        except NoRule:
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
        dims = arg(args, kwargs, 1, "dims")
        dims = args[1:] if isinstance(dims, int) else dims
        return [self.of(args[0])[d] for d in dims]

    def transpose(self, args, kwargs, out):   # transpose / swapaxes (x, d0, d1), and x.t() (d0, d1 = 0, -1)
        if set(kwargs) - {"dim0", "dim1"}:
            raise NoRule("has arguments this rule does not read")
        X, d0, d1 = list(self.of(args[0])), arg(args, kwargs, 1, "dim0", 0), arg(args, kwargs, 2, "dim1", -1)
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
            raise NoRule("indexes with tensors or lists")
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
        d = arg(args, kwargs, 2, "dim", 0) % x.ndim
        X = self.of(x)
        return [X[:d] + [piece] + X[d + 1:] for piece in self.split(X[d], [t.shape[d] for t in outs])]

    def unbind(self, args, kwargs, outs):
        X, d = self.of(args[0]), arg(args, kwargs, 1, "dim", 0) % args[0].ndim
        self.freeze([X[d]], "picks entries of a permuted axis")
        return [X[:d] + X[d + 1:]] * len(outs)

    def glu(self, args, kwargs, out):   # a * sigmoid(b) for the halves a, b along dim: both halves move alike
        X, d = self.of(args[0]), arg(args, kwargs, 1, "dim", -1) % args[0].ndim
        a, b = self.split(X[d], [out.shape[d]] * 2)
        self.unify(a, b)
        return X[:d] + [a] + X[d + 1:]

    def cat(self, args, kwargs, out):   # segments laid end to end along `dim`; the other axes share groups
        parts = [t for t in arg(args, kwargs, 0, "tensors") if t.ndim == out.ndim]
        d = arg(args, kwargs, 1, "dim", 0) % out.ndim
        labels = [self.of(t) for t in parts]
        for other in labels[1:]:
            for i in range(out.ndim):
                if i != d:
                    self.unify(labels[0][i], other[i])
        return [labels[0][i] if i != d else [seg for L in labels for seg in L[d]] for i in range(out.ndim)]
