"""Linear assignment solvers behind the matcher: maximise sum_i score[i, perm[i]] over permutations.

Every solver takes a square score matrix (torch, any device) and returns an `Assignment`; the matcher
passes the previous `Assignment` of the same group back as `warm`, so solvers that can reuse prices or
duals across calls (FGMT's accumulated matrix changes little between steps) may do so.

Solvers (``SOLVERS``):

``"scipy"``
    Exact: ``scipy.optimize.linear_sum_assignment`` on a float64 CPU copy.  No warm start.
``"auction"``
    Exact, certified.  An epsilon-scaling forward auction (Bertsekas; bidders are rows) computes
    column prices ``p`` and an assignment satisfying eps-complementary slackness (eps-CS).  Then, on
    the ORIGINAL matrix, the duals ``u_i = max_j (a_ij - p_j)`` give the duality gap
    ``G = sum_i u_i + sum_j p_j - objective >= optimum - objective >= 0``.  Reduced costs
    ``u_i + p_j - a_ij`` are >= 0 and any assignment's reduced costs sum to ``dual - its objective``,
    so every optimal assignment only uses edges of reduced cost <= G.  Either G is at float-rounding
    level (the auction's assignment is certified optimal as is), or the problem restricted to those
    few edges is solved exactly by scipy's sparse Jonker-Volgenant (LAPJVsp,
    ``min_weight_full_bipartite_matching``), and its optimum is a global optimum.  If anything goes
    wrong (bid/round limit, too many edges, no full matching) it falls back to scipy's dense solver
    (on the reduced costs, which is the same problem and faster with good prices).
    ``gap_bound`` is 0.0: optimal up to float64 rounding.  The final eps of exact mode is
    ``EXACT_EPS_REL[backend] * (max - min) / n``: compiled phases are cheap, and a smaller eps leaves the
    sparse finish only a few edges per row.
``"auction-eps"``
    Approximate: the same auction stopped at a final ``eps`` (default ``1e-6 * (max - min) / n``;
    raised to a float floor of about 1e3 ulps of the scores' magnitude if smaller).  Standard eps-CS
    bound: ``objective >= optimum - n * eps`` (eps/2 of it is the auction's final eps, eps/2 the torch
    backend's tie-breaking jitter).  ``gap_bound`` reports
    ``min(n * eps, G) + float slack``, both proven upper bounds on ``optimum - objective``.
``"auto"``
    The recommended default: the fastest exact solver, as measured on the 2-core CPU of the project's
    development machine (``benchmarks/bench_lap.py`` on synthetic matrices, ``benchmarks/bench_recorded.py``
    on the recorded score matrices of an MNIST FGMT transfer, ``benchmarks/bench_transfer.py`` end to end).
    On the CPU from n = ``AUTO_AUCTION_MIN_N["cpu"]`` it is ``"auction"`` (compiled backend), below that
    scipy.  On the ten recorded 4096 x 4096 matrices of an MNIST FGMT transfer the compiled auction takes
    0.36-0.45 s cold and, warm-started along the chain, 2.0 s for all ten (torch backend 13.4 s, fastlap
    20.7 s, scipy 105.7 s), exact every time.  On CUDA ``"auto"`` does not pick the auction until a GPU benchmark
    says it should.
``"fastlap"``
    fastlap's Rust auction (optional dependency, ``pip install 'ltray[fast]'``).  Not certified by ltray;
    within 1e-9 (relative) of scipy's optimum on random, degenerate and recorded gradient-matching
    matrices, but not always equal to it (up to 3.5e-10 below it on recorded MNIST FGMT matrices).

The auction has two backends with the same phases, warm start and certificate.  ``"jit"`` (the CPU
default) bids sequentially (Gauss-Seidel) in numba-compiled code (`ltray.lap._auction_jit`), reading
float32 or float64 scores in place; a bid costs O(K) and a row's candidate refresh O(n).  ``"torch"``
(any device, the default off the CPU) runs vectorised Jacobi bidding rounds in float64 while many rows
are unassigned, then sequential bids on small CPU arrays; it breaks exact ties with a jitter, which
Jacobi rounds need and Gauss-Seidel bidding does not.  Each row keeps a candidate list of its K best
columns (see ``_Auction``).  The ``state`` of an auction `Assignment` is an `AuctionState` (prices,
final eps); passing the Assignment back as ``warm`` for the next, slightly changed, matrix of the same
shape restarts from those prices and that assignment at a smaller eps.
"""
from __future__ import annotations

import functools
import time

import torch

from ..errors import LtrayError
from .auction import _auction_solve
from .base import Assignment, AuctionState, solve_scipy  # noqa: F401  (the interface)
from .fastlap import _fastlap, has_fastlap  # noqa: F401  (has_fastlap: public, for the benchmarks)

class _CpuThreads:
    """Run the torch auction with one intra-op thread on the CPU.  Its rounds are many small tensor ops; with
    a multi-threaded pool each pays a fork/join, which on a busy machine (descheduled worker threads)
    made single small ops take milliseconds.  The previous setting is restored afterwards."""

    def __init__(self, device: torch.device, backend: str | None):
        self.active = device.type == "cpu" and backend == "torch" and torch.get_num_threads() > 1

    def __enter__(self):
        if self.active:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.active:
            torch.set_num_threads(self.saved)


def _auction(score: torch.Tensor, warm: Assignment | None, backend: str | None = None) -> Assignment:
    with _CpuThreads(score.device, backend):
        return _auction_solve(score, warm, exact=True, backend=backend)


def _auction_eps(score: torch.Tensor, warm: Assignment | None, eps: float | None = None,
                 backend: str | None = None) -> Assignment:
    with _CpuThreads(score.device, backend):
        return _auction_solve(score, warm, exact=False, eps=eps, backend=backend)


AUTO_AUCTION_MIN_N = {"cpu": 1024, "cuda": None}   # "auto": auction from this n on (None: never)


def _auto(score: torch.Tensor, warm: Assignment | None) -> Assignment:
    """The fastest exact solver for this device and size (see the module docstring)."""
    min_n = AUTO_AUCTION_MIN_N.get(score.device.type)
    if min_n is not None and score.shape[0] >= min_n:
        return _auction(score, warm)
    return solve_scipy(score, warm)


SOLVERS = {"scipy": solve_scipy, "auction": _auction, "auction-eps": _auction_eps, "fastlap": _fastlap,
           "auto": _auto,
           # the auction's torch backend, the CUDA path, forced on any device (for comparisons on the CPU)
           "auction-torch": functools.partial(_auction, backend="torch"),
           "auction-eps-torch": functools.partial(_auction_eps, backend="torch")}


def check_solver(solver: str) -> None:
    """The one check of a solver name (TransferConfig and solve_assignment call it)."""
    if solver not in SOLVERS:
        raise LtrayError(f"unknown assignment solver {solver!r}; known: {', '.join(SOLVERS)}")


def solve_assignment(score: torch.Tensor, solver: str = "auto", warm: Assignment | None = None,
                     *, eps: float | None = None) -> Assignment:
    """Maximise sum_i score[i, perm[i]].  ``eps`` is the final epsilon of ``"auction-eps"`` only."""
    if not isinstance(score, torch.Tensor) or score.ndim != 2 or score.shape[0] != score.shape[1]:
        shape = tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__
        raise LtrayError(f"assignment needs a square score matrix, got shape {shape}")
    check_solver(solver)
    fn = SOLVERS[solver]
    if eps is not None:
        if not solver.startswith("auction-eps"):
            raise LtrayError(f"eps only applies to the 'auction-eps' solvers, not {solver!r}")
        return fn(score, warm, eps=eps)
    return fn(score, warm)


def timed_solve(score: torch.Tensor, solver: str, warm: Assignment | None = None) -> tuple[Assignment, float]:
    """solve_assignment and its wall seconds (CUDA synchronised before and after), for the benchmarks."""
    if score.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = solve_assignment(score, solver, warm=warm)
    if score.is_cuda:
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0
