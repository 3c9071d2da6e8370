"""The assignment solvers' common ground: what a solve returns, and the exact reference solver (scipy's
Jonker-Volgenant) that the others fall back to and are tested against."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import LtrayError

CHUNK_ELEMS = 1 << 20                  # elements per row block in full-row passes (8 MiB of float64)


@dataclass(frozen=True)
class Assignment:
    perm: torch.Tensor                 # int64 (n,): row i is assigned column perm[i]
    state: object | None = None        # solver-specific warm-start state (prices, duals)
    gap_bound: float = 0.0             # proven upper bound on optimum - achieved objective (0: exact)
    method: str = ""                   # what produced perm: "scipy", "auction+sparse", "auction->scipy", ...
    info: dict = field(default_factory=dict, compare=False, repr=False)   # solver statistics


@dataclass(frozen=True)
class AuctionState:
    prices: torch.Tensor               # float64 (n,) column prices, on the score's device
    eps: float                         # the final eps the prices were computed at


def scipy_perm(a64: np.ndarray, maximize: bool = True) -> np.ndarray:
    rows, cols = linear_sum_assignment(a64, maximize=maximize)
    perm = np.empty_like(cols)
    perm[rows] = cols
    return perm


def check_finite(score: torch.Tensor) -> None:
    if score.is_floating_point() and not bool(torch.isfinite(score).all()):
        raise LtrayError("assignment score matrix has NaN or infinite entries")


def solve_scipy(score: torch.Tensor, warm: Assignment | None) -> Assignment:
    check_finite(score)
    perm = scipy_perm(score.detach().to("cpu", torch.float64).numpy())
    return Assignment(torch.from_numpy(perm).to(score.device), method="scipy")
