"""fastlap's Rust auction (optional dependency, `pip install 'ltray[fast]'`), kept for comparison."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import LtrayError
from .base import Assignment, check_finite, solve_scipy


def has_fastlap() -> bool:
    """Whether the optional fastlap package is installed (solver "fastlap" runs only then)."""
    import importlib.util

    return importlib.util.find_spec("fastlap") is not None


def _fastlap(score: torch.Tensor, warm: Assignment | None) -> Assignment:
    """fastlap's auction (Rust; optional dependency, `pip install ltray[fast]`)."""
    check_finite(score)
    try:
        import fastlap
    except ImportError:
        raise LtrayError("solver 'fastlap' needs the fastlap package: pip install 'ltray[fast]'") from None
    a64 = np.ascontiguousarray(score.detach().to("cpu", torch.float64).numpy())
    if a64.shape[0] == 0:
        return Assignment(torch.empty(0, dtype=torch.long, device=score.device), method="fastlap")
    _, rows, _ = fastlap.solve_lap(a64, algorithm="auction", maximize=True)
    perm = np.asarray(rows, dtype=np.int64)
    if len(np.unique(perm)) != len(perm):  # never seen; keep the matcher's contract regardless
        return solve_scipy(score, warm)
    return Assignment(torch.from_numpy(perm).to(score.device), method="fastlap")
