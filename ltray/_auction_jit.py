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


@njit(cache=True, nogil=True)
def _row_top(A, p, i, topv, topi, buf):
    """The K+1 largest a_ij - p_j of row i, sorted descending, into topv/topi (length K+1)."""
    n = A.shape[1]
    for j in range(n):
        buf[j] = A[i, j] - p[j]
    k1 = topv.shape[0]
    for k in range(k1):
        topv[k] = -np.inf
        topi[k] = -1
    thr = -np.inf
    for j in range(n):
        v = buf[j]
        if v > thr:
            k = k1 - 1
            while k > 0 and topv[k - 1] < v:
                topv[k] = topv[k - 1]
                topi[k] = topi[k - 1]
                k -= 1
            topv[k] = v
            topi[k] = j
            thr = topv[k1 - 1]


@njit(cache=True, nogil=True)
def _refresh(A, p, i, cand, candv, beta, topv, topi, buf):
    _row_top(A, p, i, topv, topi, buf)
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
        topv = np.empty(K + 1)
        topi = np.empty(K + 1, dtype=np.int64)
        buf = np.empty(A.shape[1])
        for i in range(t * step, min(n, (t + 1) * step)):
            _refresh(A, p, i, cand, candv, beta, topv, topi, buf)
            top1[i] = topv[0]


def init_candidates(A, p, cand, candv, beta, top1) -> None:
    """Candidate lists of every row at prices p; top1[i] = max_j a_ij - p_j.  Uses as many threads as torch
    may (a Ray task with one CPU gets one), the only parallel step of the auction: 2x on two cores."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    _init_candidates(A, p, cand, candv, beta, top1, threads)


@njit(cache=True, nogil=True)
def run_phases(A, eps_list, p, row_col, col_row, cand, candv, beta, max_bids):
    """The eps phases of the auction.  Returns (bids, refreshed rows, finished within max_bids)."""
    n = A.shape[0]
    K = cand.shape[1]
    topv = np.empty(K + 1)
    topi = np.empty(K + 1, dtype=np.int64)
    buf = np.empty(A.shape[1])
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
                _refresh(A, p, i, cand, candv, beta, topv, topi, buf)
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
