"""The auction's certificate of optimality: the duality gap on the original matrix, an exact sparse finish on
the few edges that can still be in an optimal assignment, and the dense fallback (Jonker-Volgenant on the
reduced costs)."""
from __future__ import annotations

import time

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from .base import CHUNK_ELEMS, Assignment, scipy_perm


def fallback(score, A, p, exact, info, state=None) -> Assignment:
    """Exact dense solve; with prices, on the (equivalent, better conditioned) reduced costs."""
    t0 = time.perf_counter()
    C = float(A.max() - A.min())
    if p is not None and float(p.abs().max()) <= 1e3 * (C + float(A.abs().max())):
        R = A - p
        R = R.max(dim=1, keepdim=True).values - R          # u_i + p_j - a_ij >= 0
        perm = scipy_perm(R.cpu().numpy(), maximize=False)
    else:
        perm = scipy_perm(A.cpu().numpy())
    info["t_fallback"] = time.perf_counter() - t0
    return Assignment(torch.from_numpy(perm).to(score.device), state, 0.0, method="auction->scipy", info=info)


def dual_gap(au, A: torch.Tensor, p: torch.Tensor, perm: torch.Tensor):
    """u_i = max_j a_ij - p_j on the original A, and G = sum u + sum p - objective (>= 0)."""
    cv = A.gather(1, au.cand) - p[au.cand]
    u = cv.max(dim=1).values
    # non-candidates: a_ij - p_j <= a'_ij - p_j <= beta_i, so u is exact where u >= beta
    exact_rows = u >= au.beta
    rows = (~exact_rows).nonzero().squeeze(1)
    if rows.numel():
        step = max(1, CHUNK_ELEMS // au.n)
        for s in range(0, rows.numel(), step):
            rr = rows[s:s + step]
            u[rr] = (A[rr] - p).max(dim=1).values
    prim = A[au.arange, perm] - p[perm]
    G = float((u - prim).clamp_min(0).sum())
    return G, u, exact_rows


def sparse_finish(au, A, p, perm, u, exact_rows, T: float, info: dict, max_per_row: int):
    """Solve exactly the assignment restricted to edges of reduced cost u_i + p_j - a_ij <= T."""
    t0 = time.perf_counter()
    n = au.n
    cand = au.cand
    rc = u[:, None] - (A.gather(1, cand) - p[cand])
    # rows whose non-candidates might be within T as well need a full-row pass
    full = (~exact_rows) | (u - au.beta <= T)
    keep = (rc <= T) & ~full[:, None]
    r1, k1 = keep.nonzero(as_tuple=True)
    rows_l, cols_l, w_l = [r1], [cand[r1, k1]], [rc[r1, k1]]
    fr = full.nonzero().squeeze(1)
    if fr.numel() > n // 8:
        # many rows need full-row scans: count first (with early exit) before building edge lists
        cnt = int(keep.sum())
        step = max(1, CHUNK_ELEMS // n)
        for s in range(0, fr.numel(), step):
            rr = fr[s:s + step]
            cnt += int(((u[rr, None] - (A[rr] - p)) <= T).sum())
            if cnt > max_per_row * n:
                info.update(nnz=cnt, full_rows=int(fr.numel()))
                return None
    if fr.numel():
        step = max(1, CHUNK_ELEMS // n)
        for s in range(0, fr.numel(), step):
            rr = fr[s:s + step]
            rcf = u[rr, None] - (A[rr] - p)
            a, b = (rcf <= T).nonzero(as_tuple=True)
            rows_l.append(rr[a])
            cols_l.append(b)
            w_l.append(rcf[a, b])
    rows = torch.cat(rows_l)
    cols = torch.cat(cols_l)
    nnz = rows.numel()
    info.update(nnz=nnz, full_rows=int(fr.numel()))
    if nnz > max_per_row * n:
        return None
    # LAPJVsp treats every stored entry as an edge but needs non-zero weights: shift all by T
    w = (torch.cat(w_l).clamp_min(0) + max(T, 1e-300)).cpu().numpy()
    g = csr_matrix((w, (rows.cpu().numpy(), cols.cpu().numpy())), shape=(n, n))
    try:
        ri, ci = min_weight_full_bipartite_matching(g)
    except ValueError:
        return None
    out = np.empty(n, dtype=np.int64)
    out[ri] = ci
    info["t_sparse"] = time.perf_counter() - t0
    return torch.from_numpy(out).to(A.device)
