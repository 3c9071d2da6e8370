"""The epsilon-scaling forward auction (see the package docstring): the torch backend (any device) and the
driver of the compiled one (`_auction_jit`, CPU); its result is certified exact by `certificate`."""
from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch

from ..errors import LtrayError
from .base import CHUNK_ELEMS, Assignment, AuctionState
from .certificate import dual_gap, fallback, sparse_finish

_F64_EPS = float(np.finfo(np.float64).eps)
_JITTER_ROWS = 512                     # distinct rows of the tie-breaking jitter pattern

# tuning (see benchmarks/bench_lap.py)
AUCTION_K = {"jit": 31, "torch": 32}   # candidate columns kept per row (jit: K + 1 <= its 32 scan lanes)
AUCTION_THETA = 8.0                    # eps reduction factor between phases
AUCTION_GS_BELOW = 48                  # switch from Jacobi rounds to sequential bids below this many bidders
SPARSE_MAX_EDGES_PER_ROW = 32          # exact finish: sparse LAPJV up to this many edges per row, else dense
EXACT_EPS_REL = {"jit": 1e-4, "torch": 1e-2}   # exact mode: final eps = this * (max - min) / n
WARM_QUANTILE = 0.95                   # warm start: first eps = this quantile of the rows' eps-CS violations
APPROX_EPS_REL = 1e-6                  # auction-eps default: eps = APPROX_EPS_REL * (max - min) / n


class _AuctionFailed(Exception):
    pass


@functools.lru_cache(maxsize=4)
def _jitter(m: int, n: int) -> torch.Tensor:
    """The fixed pseudo-random tie-breaking pattern J in [0, 1), (m, n) float64 on the CPU (read-only)."""
    g = torch.Generator(device="cpu").manual_seed(0x5EED)
    return torch.rand(m, n, generator=g, dtype=torch.float64)


class _Auction:
    """Epsilon-scaling forward auction on A' = A + delta * J, J in [0, 1) a fixed pseudo-random
    pattern that breaks exact ties (identical rows would otherwise all chase the same column in a
    Jacobi round).  A' differs from A by at most delta per entry, i.e. n * delta in objective.

    Candidate lists: each row keeps the K columns with the largest a'_ij - p_j at the time the list
    was computed, plus beta_i, the (K+1)-th largest value then.  Prices only rise, so beta_i stays an
    upper bound on a'_ij - p_j for every non-candidate j.  If the best candidate is >= beta_i it is
    the row's true best column, and bidding p_j + w1 - max(w2_candidates, beta_i) + eps (a possibly
    smaller bid than the textbook one, since that second value is >= the true second best) keeps
    eps-CS for the bidder; otherwise the row's list is recomputed from the full row first.
    """

    def __init__(self, A: torch.Tensor, delta: float, K: int, max_bids: int):
        n = A.shape[0]
        self.A, self.n, self.dev = A, n, A.device
        self.delta = float(delta)
        self.K = max(1, min(K, n - 1))
        self.max_bids = max_bids
        self.rounds = 0          # Jacobi rounds
        self.bids = 0            # bids placed (Jacobi bidders + sequential bids)
        self.seq_bids = 0
        self.refreshed = 0       # full-row candidate recomputations
        m = min(n, _JITTER_ROWS)
        self.jrows = m
        if self.delta > 0:
            self.J = _jitter(m, n).to(self.dev)
        else:
            self.J = None
        self.arange = torch.arange(n, device=self.dev)
        self._A_np = A.numpy() if self.dev.type == "cpu" else None
        self._J_np = self.J.numpy() if (self.J is not None and self.dev.type == "cpu") else None

    # -- full-row passes ------------------------------------------------------------------------
    def aprime(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        v = self.A[rows, cols]
        if self.J is not None:
            v = v + self.delta * self.J[rows % self.jrows, cols]
        return v

    def topk_rows(self, rows: torch.Tensor | None, p: torch.Tensor, k1: int):
        """Top-k1 of a'_ij - p_j over all j for the given rows (None: all rows), in row blocks."""
        A, n = self.A, self.n
        m = n if rows is None else rows.numel()
        step = max(1, CHUNK_ELEMS // n)
        vals = torch.empty(m, k1, dtype=A.dtype, device=self.dev)
        idx = torch.empty(m, k1, dtype=torch.long, device=self.dev)
        buf = torch.empty(min(step, m), n, dtype=A.dtype, device=self.dev)
        for s in range(0, m, step):
            e = min(m, s + step)
            b = buf[: e - s]
            if rows is None:
                torch.sub(A[s:e], p, out=b)
                jr = torch.arange(s, e, device=self.dev) % self.jrows if self.J is not None else None
            else:
                rr = rows[s:e]
                torch.sub(A[rr], p, out=b)
                jr = rr % self.jrows if self.J is not None else None
            if jr is not None:
                b.add_(self.J[jr], alpha=self.delta)
            v, i = b.topk(k1, dim=1)
            vals[s:e] = v
            idx[s:e] = i
        return vals, idx

    def init_candidates(self, p: torch.Tensor) -> torch.Tensor:
        """Candidate lists for all rows; returns max_j a'_ij - p_j per row."""
        K = self.K
        vals, idx = self.topk_rows(None, p, K + 1)
        self.cand = idx[:, :K].contiguous()
        self.candv = (vals[:, :K] + p[self.cand]).contiguous()   # a' values of the candidates
        self.beta = vals[:, K].contiguous()
        self.refreshed += self.n
        return vals[:, 0]

    def init_candidates_jit(self, jit, p: torch.Tensor) -> torch.Tensor:
        K, n = self.K, self.n
        self.cand = torch.empty(n, K, dtype=torch.long)
        self.candv = torch.empty(n, K, dtype=torch.float64)
        self.beta = torch.empty(n, dtype=torch.float64)
        top1 = torch.empty(n, dtype=torch.float64)
        jit.init_candidates(self._A_np, p.numpy(), self.cand.numpy(), self.candv.numpy(),
                            self.beta.numpy(), top1.numpy())
        self.refreshed += n
        return top1

    def run_phases_jit(self, jit, eps_list, p, row_col, col_row) -> None:
        bids, refreshed, ok = jit.run_phases(self._A_np, np.asarray(eps_list, dtype=np.float64),
                                             p.numpy(), row_col.numpy(), col_row.numpy(), self.cand.numpy(),
                                             self.candv.numpy(), self.beta.numpy(), self.max_bids - self.bids)
        self.bids += bids
        self.seq_bids += bids
        self.refreshed += refreshed
        if not ok:
            raise _AuctionFailed("auction bid limit reached")

    def refresh(self, rows: torch.Tensor, p: torch.Tensor):
        K = self.K
        vals, idx = self.topk_rows(rows, p, K + 1)
        c = idx[:, :K]
        self.cand[rows] = c
        self.candv[rows] = vals[:, :K] + p[c]
        self.beta[rows] = vals[:, K]
        self.refreshed += rows.numel()
        return vals, idx

    def upper_values(self, p: torch.Tensor) -> torch.Tensor:
        """Upper bound on max_j a'_ij - p_j per row (exact where the best candidate >= beta)."""
        return torch.maximum((self.candv - p[self.cand]).max(dim=1).values, self.beta)

    # -- bidding --------------------------------------------------------------------------------
    def unassign_violators(self, eps: torch.Tensor, p, row_col, col_row) -> None:
        """Start of a phase: unassign rows whose assignment may violate eps-CS."""
        rows = (row_col >= 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        cols = row_col[rows]
        val = self.aprime(rows, cols) - p[cols]
        bad = val < self.upper_values(p)[rows] - eps[rows]
        br = rows[bad]
        if br.numel():
            col_row[row_col[br]] = -1
            row_col[br] = -1

    def jacobi_round(self, U: torch.Tensor, eps: torch.Tensor, p, row_col, col_row, best, winner) -> None:
        K = self.K
        cidx = self.cand[U]
        cv = self.candv[U] - p[cidx]
        if K >= 2:
            tv, tp = cv.topk(2, dim=1)
            w1, w2 = tv[:, 0], tv[:, 1]
        else:
            w1, tp = cv.max(dim=1, keepdim=True)
            w1 = w1[:, 0]
            w2 = torch.full_like(w1, -math.inf)
        j1 = cidx.gather(1, tp[:, :1]).squeeze(1)
        bU = self.beta[U]
        stale = (w1 < bU).nonzero().squeeze(1)
        if stale.numel():
            vals, idx = self.refresh(U[stale], p)
            w1 = w1.index_put((stale,), vals[:, 0])
            w2 = w2.index_put((stale,), vals[:, 1])
            j1 = j1.index_put((stale,), idx[:, 0])
            bU = bU.index_put((stale,), vals[:, K])
        bid = p[j1] + (w1 - torch.maximum(w2, bU)) + eps[U]
        best.fill_(-math.inf).scatter_reduce_(0, j1, bid, "amax")
        top = bid >= best[j1]
        winner.fill_(-1).scatter_reduce_(0, j1[top], U[top], "amax")
        won = winner[j1] == U
        wj = j1[won]
        wi = U[won]
        old = col_row[wj]
        row_col[old[old >= 0]] = -1
        col_row[wj] = wi
        row_col[wi] = wj
        p[wj] = best[wj]
        self.rounds += 1
        self.bids += U.numel()

    def sequential_bids(self, eps: torch.Tensor, p, row_col, col_row) -> None:
        """Gauss-Seidel bidding of the few remaining free rows, on CPU numpy arrays."""
        on_cpu = self.dev.type == "cpu"
        K = self.K
        if on_cpu:
            cand, candv, beta = self.cand.numpy(), self.candv.numpy(), self.beta.numpy()
            pn, rc, cr = p.numpy(), row_col.numpy(), col_row.numpy()
        else:
            cand, candv, beta = self.cand.cpu().numpy(), self.candv.cpu().numpy(), self.beta.cpu().numpy()
            pn, rc, cr = p.cpu().numpy(), row_col.cpu().numpy(), col_row.cpu().numpy()
            p_dev = p
        A_np, J_np, delta, jrows = self._A_np, self._J_np, self.delta, self.jrows
        eps_np = eps.cpu().numpy()
        free = np.nonzero(rc < 0)[0].tolist()
        neg_inf = -math.inf
        bids = 0
        limit = self.max_bids - self.bids
        while free:
            i = free.pop()
            c = cand[i]
            v = candv[i] - pn[c]
            k1 = int(v.argmax())
            w1 = float(v[k1])
            if w1 < beta[i]:
                # stale list: recompute the row's K+1 best columns
                if on_cpu:
                    row = A_np[i] - pn
                    if J_np is not None:
                        row += delta * J_np[i % jrows]
                    top = np.argpartition(row, -(K + 1))[-(K + 1):]
                    order = np.argsort(-row[top])
                    top = top[order]
                    tv = row[top]
                else:
                    p_dev.copy_(torch.from_numpy(pn))
                    tvv, tii = self.topk_rows(torch.tensor([i], device=self.dev), p_dev, K + 1)
                    tv, top = tvv[0].cpu().numpy(), tii[0].cpu().numpy()
                cand[i] = top[:K]
                candv[i] = tv[:K] + pn[top[:K]]
                beta[i] = tv[K]
                self.refreshed += 1
                col, w1, w2 = int(top[0]), float(tv[0]), float(tv[1])
            else:
                v[k1] = neg_inf
                w2 = float(v.max()) if K >= 2 else neg_inf
                col = int(c[k1])
            b = float(beta[i])
            if w2 < b:
                w2 = b
            pn[col] += (w1 - w2) + eps_np[i]
            old = int(cr[col])
            cr[col] = i
            rc[i] = col
            if old >= 0:
                rc[old] = -1
                free.append(old)
            bids += 1
            if bids > limit:
                break
        self.bids += bids
        self.seq_bids += bids
        if not on_cpu:
            self.cand.copy_(torch.from_numpy(cand))
            self.candv.copy_(torch.from_numpy(candv))
            self.beta.copy_(torch.from_numpy(beta))
            p.copy_(torch.from_numpy(pn))
            row_col.copy_(torch.from_numpy(rc))
            col_row.copy_(torch.from_numpy(cr))
        if bids > limit:
            raise _AuctionFailed("auction bid limit reached")

    def run_phase(self, eps: torch.Tensor, p, row_col, col_row, gs_below: int) -> None:
        """One eps phase: bid until every row is assigned (eps-CS holds for all of them after)."""
        n = self.n
        self.unassign_violators(eps, p, row_col, col_row)
        best = torch.empty(n, dtype=p.dtype, device=self.dev)
        winner = torch.empty(n, dtype=torch.long, device=self.dev)
        while True:
            U = (row_col < 0).nonzero().squeeze(1)
            m = U.numel()
            if m == 0:
                return
            if m < gs_below:
                self.sequential_bids(eps, p, row_col, col_row)
                return
            if self.bids > self.max_bids:
                raise _AuctionFailed("auction bid limit reached")
            self.jacobi_round(U, eps, p, row_col, col_row, best, winner)


def _auction_solve(score: torch.Tensor, warm: Assignment | None, exact: bool,
                   eps: float | None = None, max_bids: int | None = None,
                   sparse_edges_per_row: int | None = None, backend: str | None = None) -> Assignment:
    """`backend`: "jit" (compiled sequential bidding, CPU only) or "torch" (any device); default: "jit" on
    the CPU, "torch" elsewhere."""
    t_start = time.perf_counter()
    n = score.shape[0]
    dev = score.device
    backend = backend or ("jit" if dev.type == "cpu" else "torch")
    if backend not in ("jit", "torch") or (backend == "jit" and dev.type != "cpu"):
        raise LtrayError(f"auction backend {backend!r} does not run on {dev.type}")
    if n == 0:
        return Assignment(torch.zeros(0, dtype=torch.long, device=dev), method="trivial")
    jit = _jit_kernels() if backend == "jit" else None
    # the compiled kernels read float32 scores as they are (exactly representable in float64)
    keep = jit is not None and score.dtype in (torch.float32, torch.float64)
    A = score.detach().to(score.dtype if keep else torch.float64).contiguous()
    amin, amax = (float(v) for v in torch.aminmax(A))
    if not (math.isfinite(amin) and math.isfinite(amax)):      # min/max propagate NaN
        raise LtrayError("assignment score matrix has NaN or infinite entries")
    C = amax - amin
    if n == 1 or C == 0.0:
        # every permutation is optimal
        st = AuctionState(torch.zeros(n, dtype=torch.float64, device=dev), 0.0)
        return Assignment(torch.arange(n, device=dev), st, 0.0, method="trivial")
    scale = max(abs(amax), abs(amin))
    # eps must stay far above the rounding of prices (O(scale + C) in practice)
    eps_floor = 1e3 * _F64_EPS * (scale + C)
    if exact:
        eps_final = max(EXACT_EPS_REL[backend] * C / n, eps_floor)
    else:
        eps_target = eps if eps is not None else APPROX_EPS_REL * C / n
        if not eps_target > 0:
            raise LtrayError(f"auction eps must be positive, got {eps_target}")
        eps_final = max(eps_target / 2, eps_floor)
    # jitter size: eps-CS at eps_final on A' gives objective >= optimum - n * (eps_final + delta)
    delta = 0.0 if jit is not None else eps_final    # sequential bidding needs no tie-breaking
    theta = AUCTION_THETA
    au = _Auction(A, delta, AUCTION_K[backend], max_bids=150 * n + 50_000 if max_bids is None else max_bids)

    row_col = torch.full((n,), -1, dtype=torch.long, device=dev)
    col_row = torch.full((n,), -1, dtype=torch.long, device=dev)
    eps_start = C / theta
    use_warm = (warm is not None and isinstance(warm.state, AuctionState)
                and tuple(warm.state.prices.shape) == (n,) and tuple(warm.perm.shape) == (n,))
    if use_warm:
        p = warm.state.prices.detach().to(dev, torch.float64).clone()
        p -= p.min()
    else:
        p = torch.zeros(n, dtype=torch.float64, device=dev)
    if jit is not None:
        top1 = au.init_candidates_jit(jit, p)
    else:
        top1 = au.init_candidates(p)
    warm_used = False
    if use_warm:
        wp = warm.perm.detach().to(dev, torch.long)
        if bool(((wp >= 0) & (wp < n)).all()) and bool((torch.bincount(wp, minlength=n) == 1).all()):
            row_col.copy_(wp)
            col_row[wp] = au.arange
            slack = top1 - (au.aprime(au.arange, wp) - p[wp])
            # start where most (not all: a few outliers would force a cold start) warm rows satisfy eps-CS
            eps_start = min(eps_start, max(float(torch.quantile(slack, WARM_QUANTILE)), eps_final))
            warm_used = True

    eps_list = []
    e = max(eps_start, eps_final)
    while e > eps_final * theta:
        eps_list.append(e)
        e /= theta
    eps_list.append(eps_final)
    info = {"n": n, "phases": len(eps_list), "warm": warm_used}
    try:
        if jit is not None:
            au.run_phases_jit(jit, eps_list, p, row_col, col_row)
        else:
            for e in eps_list:
                au.run_phase(torch.full((n,), e, dtype=torch.float64, device=dev), p, row_col, col_row,
                             AUCTION_GS_BELOW)
    except _AuctionFailed as err:
        info.update(_auction_info(au, t_start), failed=str(err))
        return fallback(score, A, p, exact, info)
    info.update(_auction_info(au, t_start))
    state = AuctionState(p, eps_list[-1])
    perm = row_col
    G, u, exact_rows = dual_gap(au, A, p, perm)
    slack = 64 * n * _F64_EPS * (scale + float(p.abs().max()))
    info["dual_gap"] = G
    if not exact:
        bound = min(n * (eps_list[-1] + delta), G) + slack
        return Assignment(perm, state, bound, method="auction-eps", info=info)
    if G <= slack:
        return Assignment(perm, state, 0.0, method="auction(certified)", info=info)
    res = sparse_finish(au, A, p, perm, u, exact_rows, G + slack, info,
                         SPARSE_MAX_EDGES_PER_ROW if sparse_edges_per_row is None else sparse_edges_per_row)
    if res is None:
        return fallback(score, A, p, exact, info, state)
    info["t_total"] = time.perf_counter() - t_start
    return Assignment(res, state, 0.0, method="auction+sparse", info=info)


def _jit_kernels():
    """The compiled kernels (imported on first use: numba takes ~0.5 s to import)."""
    from . import _auction_jit

    return _auction_jit


def _auction_info(au: _Auction, t_start: float) -> dict:
    return {"rounds": au.rounds, "bids": au.bids, "seq_bids": au.seq_bids, "refreshed": au.refreshed,
            "t_auction": time.perf_counter() - t_start}
