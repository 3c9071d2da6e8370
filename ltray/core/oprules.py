"""How torch calls move permutation groups: the rules behind ltray.core.autospec.

Every axis of every tensor of a recorded forward pass gets a label: segments (var, block) laid end to end, each
covering size(var) * block entries, vars being candidate permutation groups in a union-find (`Groups`). A Linear
or Conv output axis is a new var named after its weight; a residual add unifies its operands' vars; torch.cat
lays segments end to end; flatten multiplies the blocks of the first merged axis by the size of the unpermuted
axes behind it. A var is frozen (identity) where it meets the model's input or output, or an op without a rule:
that op freezes every var it touches and warns naming the call (FrozenAxesWarning), so an op we cannot reason
about costs symmetry, never correctness. Each rule returns the output's labels.
"""
from __future__ import annotations

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
    (else its oldest parameter axis); frozen spreads."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str | None] = []   # None: born frozen (input, kernel and spatial axes)
        self.frozen: list[bool] = []
        self.rank: list[tuple[int, int]] = []   # (0 for a layer's output axis, else 1; creation order)

    def new(self, size: int, name: str | None = None, layer: bool = True) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        self.frozen.append(name is None)
        self.rank.append((0 if layer else 1, len(self.rank)))
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = v = self.parent[self.parent[v]]
        return v

    def union(self, a: int, b: int) -> None:
        a, b = sorted((self.find(a), self.find(b)), key=self.rank.__getitem__)
        if a != b:
            self.parent[b] = a
            self.frozen[a] = self.frozen[a] or self.frozen[b]

    def fixed(self, v: int) -> bool:
        r = self.find(v)
        return self.frozen[r] or self.size[r] == 1

    def freeze(self, v: int) -> str | None:
        """Freeze v's group; its name if that fixed a group that could move."""
        r, moved = self.find(v), not self.fixed(v)
        self.frozen[r] = True
        return self.name[r] if moved else None


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
                      "expand_as": self.expand, "broadcast_to": self.expand, "getitem": self.getitem}
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
            return self.params[key]
        if id(t) not in self.labels:   # the model's input, or a tensor made inside forward
            self.set(t, [self.fixed(n) for n in t.shape])
        return self.labels[id(t)]

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
        size = self.g.size
        if len(a) == len(b) and all(ba == bb and size[va] == size[vb] for (va, ba), (vb, bb) in zip(a, b)):
            for (va, _), (vb, _) in zip(a, b):
                self.g.union(va, vb)
        elif all(self.g.fixed(v) for v, _ in a) or all(self.g.fixed(v) for v, _ in b):
            for v, _ in a + b:   # meeting an unpermuted axis fixes the other one, as a union would
                self.g.freeze(v)
        else:
            self.freeze([a, b], "joins axes whose segments do not line up")

    def freeze(self, labels: list[Label], why: str) -> None:
        names = sorted({n for label in labels for v, _ in label if (n := self.g.freeze(v))})
        if names:
            warnings.warn(FrozenAxesWarning(f"autospec: {self.where} {why}; froze {', '.join(names)}", self.where,
                                            why, tuple(names)))

    def name_for(self, weight: torch.Tensor) -> str:
        key = self.keys.get(id(weight))
        return "P_" + (key.removesuffix(".weight") if key else self.scope[-1])

    # ---- recording ----
    def record(self, name: str, args: tuple, kwargs: dict, out) -> None:
        """One torch call (`name` without leading and trailing underscores: `__iadd__` and `add_` are `add`)."""
        self.where = f"call {name!r} in {self.scope[-1]!r}"
        if isinstance(out, torch.Tensor):
            try:
                if name not in self.rules:
                    raise _NoRule("has no permutation rule")
                self.set(out, self.rules[name](args, kwargs, out))
            except _NoRule as e:
                self.unknown(args, kwargs, out, str(e))
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

    def elementwise(self, args, kwargs, out):   # broadcasting: equal-sized axes aligned from the right share groups
        operands, labels = tensors((args, kwargs)), []
        for i in range(1, out.ndim + 1):
            here = [self.of(t)[-i] for t in operands if t.ndim >= i and t.shape[-i] == out.shape[-i]]
            for other in here[1:]:
                self.unify(here[0], other)
            labels.insert(0, here[0] if here else self.fixed(out.shape[-i]))
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
        elif groups == x.shape[c]:   # depthwise: output channels c*m .. c*m + m-1 read input channel c only
            y = [(v, block * (w.shape[0] // groups)) for v, block in X[c]]
            self.bind(w, [y, self.fixed(1)] + kernel)
        else:
            raise _NoRule(f"is a grouped convolution (groups={groups}), whose channels may move only within groups")
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

    def group_norm(self, args, kwargs, out):   # one group (statistics over all channels) or one per channel
        groups = _arg(args, kwargs, 1, "num_groups")
        if groups not in (1, args[0].shape[1]):
            raise _NoRule(f"normalises {groups} groups of channels, so channels may move only within groups")
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
        """Axes before and after the reshaped run keep their labels; a run merged into one axis (flatten) keeps
        its first axis's segments with blocks times the size of the rest, which must be unpermuted."""
        x, a, b = args[0], tuple(args[0].shape), tuple(out.shape)
        X = self.of(x)
        i = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        j = next((j for j in range(min(len(a), len(b)) - i) if a[-1 - j] != b[-1 - j]), min(len(a), len(b)) - i)
        run, new = X[i:len(a) - j], b[i:len(b) - j]
        if len(new) == 1 and run:
            self.freeze(run[1:], "flattens a permuted axis behind another one")
            rest = math.prod(a[i + 1:len(a) - j])
            middle = [[(v, block * rest) for v, block in run[0]]]
        else:
            self.freeze(run, "reshapes a permuted axis")
            middle = [self.fixed(n) for n in new]
        return X[:i] + middle + X[len(a) - j:]

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
                    self.g.frozen[self.g.find(v)] = True

    def spec(self, model: nn.Module) -> PermutationSpec:
        names: dict[int, str] = {}

        def entry(label: Label):
            segments: list = []
            for v, block in label:
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
        return PermutationSpec(axes).with_sizes(model.state_dict())


