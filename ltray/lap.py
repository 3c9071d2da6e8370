"""Linear assignment solvers behind the matcher: maximise sum_i score[i, perm[i]] over permutations.

Every solver takes a square score matrix (torch, any device) and returns an `Assignment`; the matcher
passes the previous `Assignment` of the same group back as `warm`, so solvers that can reuse prices or
duals across calls (FGMT's accumulated matrix changes little between steps) may do so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .errors import LtrayError


@dataclass(frozen=True)
class Assignment:
    perm: torch.Tensor                 # int64 (n,): row i is assigned column perm[i]
    state: object | None = None        # solver-specific warm-start state (prices, duals)
    gap_bound: float = 0.0             # proven upper bound on optimum - achieved objective (0: exact)


def _scipy(score: torch.Tensor, warm: Assignment | None) -> Assignment:
    rows, cols = linear_sum_assignment(score.detach().to("cpu", torch.float64).numpy(), maximize=True)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return Assignment(torch.from_numpy(perm).to(score.device))


SOLVERS = {"scipy": _scipy}


def solve_assignment(score: torch.Tensor, solver: str = "scipy", warm: Assignment | None = None) -> Assignment:
    if score.ndim != 2 or score.shape[0] != score.shape[1]:
        raise LtrayError(f"assignment needs a square score matrix, got shape {tuple(score.shape)}")
    try:
        fn = SOLVERS[solver]
    except KeyError:
        raise LtrayError(f"unknown assignment solver {solver!r}; known: {', '.join(SOLVERS)}") from None
    return fn(score, warm)
