"""Learning transfer (paper Sec. 3-4): theta2^t = theta2^0 + pi_t(theta1^t - theta1^0).

A method is a small generator that yields pi_1..pi_T, choosing which pairs to feed the one `Matcher`:
  naive  - the identity;
  oracle - one pair (theta2^T - theta2^0, theta1^T - theta1^0), with theta2^T actually trained;
  gmt    - Algorithm 1: at step s, fresh gradients at theta1^{t-1}, theta2^{t-1} for t = 1..s (O(T^2));
  fgmt   - Algorithm 2: one new gradient pair per step, older pairs cached (O(T)).
`transfer` drives a method, evaluating every step's theta2^t on the validation split.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import METHODS, TransferConfig, check_names
from ..data import DataBundle, batches
from ..errors import LtrayError
from ..models import has_batchnorm
from .first_layer import FirstLayerCache
from .functional import evaluate, gradient, reset_bn_stats
from .matching import Matcher
from .symmetry import Permutation, PermutationSpec, apply_permutation, identity_permutation
from .trajectory import State


class Profile(defaultdict):
    """Seconds per part of the work (gradients, cost products, solves, evaluation, ...)."""

    def __init__(self):
        super().__init__(float)

    @contextmanager
    def time(self, part: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[part] += time.perf_counter() - t0


def check_gradient_batch(cfg: TransferConfig, data: DataBundle) -> None:
    """A one-line error when a gradient batch B is larger than the training split (only whole batches are used)."""
    if cfg.batch_size > len(data.train):
        raise LtrayError(f"the gradient batch size B={cfg.batch_size} exceeds the {len(data.train)} training samples;"
                         f" lower --batch-size")


@dataclass
class TransferContext:
    model: nn.Module
    spec: PermutationSpec
    source: Sequence[State]           # theta1^0..theta1^T
    theta2_0: State
    data: DataBundle
    cfg: TransferConfig
    seed: int
    target_final: State | None = None
    profile: Profile = field(default_factory=Profile)

    def __post_init__(self):
        check_gradient_batch(self.cfg, self.data)   # else drop_last leaves no batch and the stream spins
        self.gradient_pairs = 0          # (g2, g1) pairs computed: T for FGMT, T(T+1)/2 for GMT
        self.device = next(iter(self.theta2_0.values())).device
        self.delta0 = self.source[0]
        self._stream = self._batch_stream()

    def transferred(self, perm: Permutation, t: int, delta_only: bool = False) -> State:
        """theta2^0 + pi (theta1^t - theta1^0) (or just pi (theta1^t - theta1^0) with `delta_only`);
        integer buffers (BN counters) stay theta2^0's."""
        delta = {k: (v - self.delta0[k]).to(self.device) for k, v in self.source[t].items()
                 if v.is_floating_point()}
        moved = apply_permutation(self.spec, perm, delta)
        if delta_only:
            return moved
        return {k: v + moved[k] if k in moved else v for k, v in self.theta2_0.items()}

    def _batch_stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            yield from batches(self.data.train, self.cfg.batch_size, gen, drop_last=True)

    def next_batch(self):
        return next(self._stream)

    def prepared(self, state: State) -> State:
        """BatchNorm statistics recomputed over B' training samples (no-op for models without BN): a transferred
        theta2^t is a new point whose running statistics come from nowhere, so they are reset before it is
        evaluated or returned (paper B.3.3, after REPAIR, Jordan et al. 2023)."""
        if not has_batchnorm(self.model):
            return state
        with self.profile.time("bn_reset"):
            gen = torch.Generator().manual_seed(self.seed + 1)
            return reset_bn_stats(self.model, state, self.data.train, self.cfg.bn_samples, gen)

    def gradient_pair(self, theta1: State, theta2: State) -> tuple[State, State]:
        """(g2, g1) on the same mini-batch. Gradients are taken in train mode, where BatchNorm normalises with the
        batch's own statistics: the running statistics (and so B') play no part in them."""
        x, y = self.next_batch()
        self.gradient_pairs += 1
        with self.profile.time("gradients"):
            chunk = self.cfg.loader_batch_size
            theta1 = {k: v.to(self.device) for k, v in theta1.items()}   # the source's states live on the CPU
            return (gradient(self.model, theta2, x, y, chunk, factored=True),
                    gradient(self.model, theta1, x, y, chunk, factored=True))

    def matcher(self, warm: dict | None = None) -> Matcher:
        return Matcher(self.spec, self.cfg.solver, warm=warm)

    def solve(self, matcher: Matcher, init: Permutation, seed: int) -> Permutation:
        with self.profile.time("solves"):
            return matcher.solve(init=init, seed=seed, max_iter=self.cfg.max_iter)

    def add_pair(self, matcher: Matcher, target: State, source: State) -> None:
        with self.profile.time("cost_products"):
            matcher.add_pair(target, source)


def naive(ctx: TransferContext) -> Iterator[Permutation]:
    identity = identity_permutation(ctx.spec)
    for _ in range(ctx.cfg.T):
        yield identity


def oracle(ctx: TransferContext) -> Iterator[Permutation]:
    if ctx.target_final is None:
        raise LtrayError("the oracle method needs the actually trained target theta2^T")
    matcher = ctx.matcher()
    theta1_T = ctx.source[ctx.cfg.T]
    params = dict(ctx.model.named_parameters())
    d2 = {k: ctx.target_final[k].to(ctx.device) - ctx.theta2_0[k] for k in params}
    d1 = {k: (theta1_T[k] - ctx.delta0[k]).to(ctx.device) for k in params}
    ctx.add_pair(matcher, d2, d1)
    perm = ctx.solve(matcher, identity_permutation(ctx.spec), ctx.seed)
    for _ in range(ctx.cfg.T):
        yield perm


def fgmt(ctx: TransferContext) -> Iterator[Permutation]:
    matcher, perm = ctx.matcher(), identity_permutation(ctx.spec)
    for s in range(1, ctx.cfg.T + 1):
        g2, g1 = ctx.gradient_pair(ctx.source[s - 1], ctx.transferred(perm, s - 1))
        ctx.add_pair(matcher, g2, g1)
        perm = ctx.solve(matcher, perm, ctx.seed + s)
        yield perm


def gmt(ctx: TransferContext) -> Iterator[Permutation]:
    perm, warm = identity_permutation(ctx.spec), {}  # step s's problem is close to step s-1's: warm-start it
    for s in range(1, ctx.cfg.T + 1):
        matcher = ctx.matcher(warm)
        for t in range(1, s + 1):  # recompute every gradient under the latest permutation pi_{s-1}
            g2, g1 = ctx.gradient_pair(ctx.source[t - 1], ctx.transferred(perm, t - 1))
            ctx.add_pair(matcher, g2, g1)
        perm = ctx.solve(matcher, perm, ctx.seed + s)
        yield perm


METHOD_FNS: dict[str, Callable[[TransferContext], Iterator[Permutation]]] = {
    "naive": naive, "oracle": oracle, "gmt": gmt, "fgmt": fgmt}
assert tuple(METHOD_FNS) == METHODS, "ltray.config.METHODS names the methods defined here"


@dataclass
class TransferResult:
    method: str
    lambdas: np.ndarray            # lambda_0..lambda_T of the source trajectory used
    val_loss: list[float]          # t = 0..T (t = 0 is theta2^0 itself)
    val_acc: list[float]
    seconds: list[float]           # wall time of the transfer up to and including step t
    perms: list[Permutation]       # pi_1..pi_T
    final: State                   # theta2^T
    best: State                    # theta2^t at the best validation accuracy (t >= 1)
    best_step: int
    profile: dict[str, float]
    gradient_pairs: int = 0        # gradient pairs the method computed

    def rows(self) -> list[dict]:
        return [{"method": self.method, "t": t, "lambda": float(self.lambdas[t]), "val_acc": self.val_acc[t],
                 "val_loss": self.val_loss[t], "seconds": self.seconds[t]} for t in range(len(self.val_acc))]


def transfer(method: str, model: nn.Module, spec: PermutationSpec, source: Sequence[State], theta2_0: State,
             data: DataBundle, cfg: TransferConfig, seed: int = 0, target_final: State | None = None,
             extra_seconds: float = 0.0, progress: bool = False) -> TransferResult:
    """Transfer `source` (theta1^0..theta1^T, T = cfg.T) onto theta2_0 with `method`, evaluating each step.

    `seed` fixes the gradient mini-batches and the coordinate-descent order; `extra_seconds` is work spent
    before the transfer that belongs to its cost (the oracle's target training) and is added to `seconds`.
    """
    check_names(methods=(method,))
    if len(source) != cfg.T + 1:
        raise LtrayError(f"source trajectory has {len(source) - 1} steps but T={cfg.T}")
    ctx = TransferContext(model, spec, source, theta2_0, data, cfg, seed, target_final)
    t0 = time.perf_counter() - extra_seconds
    cache = None
    if FirstLayerCache.applies(model, source):
        with ctx.profile.time("evaluation"):
            cache = FirstLayerCache(model, spec, theta2_0, ctx.transferred(identity_permutation(spec), cfg.T,
                                                                            delta_only=True), data.val)

    def evaluated(state: State, perm: Permutation | None = None, t: int = 0) -> tuple[float, float]:
        with ctx.profile.time("evaluation"):
            if cache is not None and perm is not None:
                return cache.evaluate(state, perm, float(source.lambdas[t]))
            return evaluate(model, ctx.prepared(state), data.val)

    lambdas = getattr(source, "lambdas", np.linspace(0, 1, cfg.T + 1))
    # theta2^0 is the cached pre-activations themselves (lambda_0 = 0): no forward pass
    loss, acc = evaluated(theta2_0, identity_permutation(spec) if lambdas[0] == 0 else None, 0)
    losses, accs, seconds, perms = [loss], [acc], [extra_seconds], []
    best_acc, best_step, best, final = -1.0, 0, theta2_0, theta2_0
    steps = METHOD_FNS[method](ctx)
    for t in tqdm(range(1, cfg.T + 1), desc=method, disable=not progress, leave=False):
        perm = next(steps)
        state = ctx.transferred(perm, t)
        loss, acc = evaluated(state, perm, t)
        seconds.append(time.perf_counter() - t0)
        losses.append(loss); accs.append(acc); perms.append(perm)
        if acc > best_acc:
            best_acc, best_step, best = acc, t, state
        final = state
    return TransferResult(method, lambdas, losses, accs, seconds, perms, ctx.prepared(final), ctx.prepared(best),
                          best_step, dict(ctx.profile), ctx.gradient_pairs)
