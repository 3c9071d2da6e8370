"""Compiled (numba) kernels of the CPU auction in `ltray.lap`: Gauss-Seidel bidding and candidate lists.

The algorithm and its invariants are `ltray.lap._Auction`'s (see its docstring): a forward auction with
per-row candidate lists of the K best columns and the bound beta_i on every other column.  Here every bid
is sequential (Gauss-Seidel), which compiled costs O(K) per bid and O(n) per candidate refresh; the torch
version needs vectorised Jacobi rounds (and a tie-breaking jitter for them) to amortise Python's
overhead.  A is the score matrix as given (float32 or float64); prices are float64.  All arrays are numpy
views of the torch tensors and are updated in place.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange


_LANES = 32


@njit(cache=True, nogil=True)
def _scratch(n, k1):
    """Work arrays of one row scan: top values and columns (k1), row values and columns (n), lane maxima."""
    return (np.empty(k1), np.empty(k1, dtype=np.int64), np.empty(n), np.empty(n, dtype=np.int64),
            np.empty(_LANES))


@njit(cache=True, nogil=True)
def _swap(v, idx, a, b):
    v[a], v[b] = v[b], v[a]
    idx[a], idx[b] = idx[b], idx[a]


@njit(cache=True, nogil=True)
def _select_top(v, idx, c, k1):
    """Reorder v/idx[:c] so that v[:k1] hold the k1 largest (quickselect), with the largest at 0, the
    second largest at 1 and the k1-th largest at k1 - 1 (the rest unordered)."""
    lo, hi, k = 0, c - 1, k1 - 1
    while lo < hi:
        a, b, d = v[lo], v[(lo + hi) // 2], v[hi]
        pivot = max(min(a, b), min(max(a, b), d))          # median of three
        i, j = lo, hi
        while i <= j:                                       # Hoare partition, descending
            while v[i] > pivot:
                i += 1
            while v[j] < pivot:
                j -= 1
            if i <= j:
                _swap(v, idx, i, j)
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    m = 0
    for q in range(1, k1):
        if v[q] < v[m]:
            m = q
    _swap(v, idx, m, k1 - 1)
    for pos in range(min(2, k1 - 1)):
        m = pos
        for q in range(pos + 1, k1 - 1):
            if v[q] > v[m]:
                m = q
        _swap(v, idx, m, pos)


@njit(cache=True, nogil=True)
def _row_top(A, p, i, s):
    """The k1 largest a_ij - p_j of row i into s[0] (values) and s[1] (columns), k1 = len(s[0]): the largest
    first, then the second largest, the k1-th largest last.

    A row is one vectorised pass that also keeps the maxima of the 32 strided subsets j = b (mod 32): they are
    distinct entries, so when k1 <= 32 the k1 largest are all >= their minimum.  Only the entries above it
    (~130 of 4096 on MNIST FGMT scores) are compacted and go through a quickselect."""
    topv, topi, v, idx, lanes = s
    n = A.shape[1]
    k1 = topv.shape[0]
    thr = -np.inf
    if k1 <= _LANES and n >= 2 * _LANES:
        for b in range(_LANES):
            lanes[b] = -np.inf
        nb = n // _LANES
        for c in range(nb):
            base = c * _LANES
            for b in range(_LANES):
                x = A[i, base + b] - p[base + b]
                v[base + b] = x
                lanes[b] = x if x > lanes[b] else lanes[b]
        for j in range(nb * _LANES, n):
            x = A[i, j] - p[j]
            v[j] = x
            b = j - nb * _LANES
            lanes[b] = x if x > lanes[b] else lanes[b]
        thr = lanes.min()
    else:
        for j in range(n):
            v[j] = A[i, j] - p[j]
    c = 0
    for j in range(n):                                      # branch-free compaction, in place (c <= j)
        x = v[j]
        v[c] = x
        idx[c] = j
        c += x >= thr
    _select_top(v, idx, c, k1)
    for k in range(k1):
        topv[k] = v[k]
        topi[k] = idx[k]


@njit(cache=True, nogil=True)
def _refresh(A, p, i, cand, candv, beta, s):
    _row_top(A, p, i, s)
    topv, topi = s[0], s[1]
    K = cand.shape[1]
    for k in range(K):
        c = topi[k]
        cand[i, k] = c
        candv[i, k] = topv[k] + p[c]
    beta[i] = topv[K]


@njit(cache=True, nogil=True, parallel=True)
def _init_candidates(A, p, cand, candv, beta, top1, parts):
    K = cand.shape[1]
    n = A.shape[0]
    step = (n + parts - 1) // parts
    for t in prange(parts):                     # rows are independent: one block of rows per thread
        s = _scratch(A.shape[1], K + 1)
        for i in range(t * step, min(n, (t + 1) * step)):
            _refresh(A, p, i, cand, candv, beta, s)
            top1[i] = s[0][0]


def init_candidates(A, p, cand, candv, beta, top1) -> None:
    """Candidate lists of every row at prices p; top1[i] = max_j a_ij - p_j.  Uses as many threads as torch
    may (a Ray task with one CPU gets one), the only parallel step of the auction: 2x on two cores.

    numba's OpenMP threading layer sets OpenMP's thread count to NUMBA_NUM_THREADS (all cores) when it first
    starts, and torch shares that setting: torch's count is put back afterwards, or a one-CPU Ray task would go
    on with every core's worth of threads (two such tasks fine-tuning at once then ran 4x slower)."""
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    _init_candidates(A, p, cand, candv, beta, top1, threads)
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


@njit(cache=True, nogil=True)
def run_phases(A, eps_list, p, row_col, col_row, cand, candv, beta, max_bids):
    """The eps phases of the auction.  Returns (bids, refreshed rows, finished within max_bids)."""
    n = A.shape[0]
    K = cand.shape[1]
    s = _scratch(A.shape[1], K + 1)
    topv, topi = s[0], s[1]
    stack = np.empty(n, dtype=np.int64)
    bids = 0
    refreshed = 0
    for e in eps_list:
        # a phase starts by unassigning rows whose assignment may violate eps-CS
        top = 0
        for i in range(n):
            j = row_col[i]
            if j >= 0:
                ub = beta[i]
                for k in range(K):
                    v = candv[i, k] - p[cand[i, k]]
                    if v > ub:
                        ub = v
                if A[i, j] - p[j] < ub - e:
                    col_row[j] = -1
                    row_col[i] = -1
            if row_col[i] < 0:
                stack[top] = i
                top += 1
        while top > 0:
            top -= 1
            i = stack[top]
            w1 = -np.inf
            w2 = -np.inf
            j1 = -1
            for k in range(K):
                c = cand[i, k]
                v = candv[i, k] - p[c]
                if v > w1:
                    w2 = w1
                    w1 = v
                    j1 = c
                elif v > w2:
                    w2 = v
            if w1 < beta[i]:
                # stale list (prices rose): recompute the row's K+1 best columns
                _refresh(A, p, i, cand, candv, beta, s)
                refreshed += 1
                w1 = topv[0]
                w2 = topv[1]
                j1 = topi[0]
            if w2 < beta[i]:
                w2 = beta[i]
            p[j1] += (w1 - w2) + e
            old = col_row[j1]
            col_row[j1] = i
            row_col[i] = j1
            if old >= 0:
                row_col[old] = -1
                stack[top] = old
                top += 1
            bids += 1
            if bids > max_bids:
                return bids, refreshed, False
    return bids, refreshed, True
