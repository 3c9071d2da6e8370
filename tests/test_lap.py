"""Assignment solvers against scipy's optimum: exact modes match it, approximate modes stay within their
reported bound, warm starts reach the new optimum, and every result is a permutation."""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ltray.errors import LtrayError
from ltray.lap import AUTO_AUCTION_MIN_N, SOLVERS, Assignment, AuctionState, _auction_solve, solve_assignment

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
EXACT = ["scipy", "auction"]     # "auto" is scipy at these sizes: tested where it chooses the auction, below
N_AUTO = AUTO_AUCTION_MIN_N["cpu"]       # the size from which "auto" is the auction on the CPU
# the auction's backends: compiled sequential bidding (CPU) and torch (any device; the default off the CPU)
BACKENDS = [("cpu", "jit"), ("cpu", "torch")] + ([("cuda", "torch")] if torch.cuda.is_available() else [])


def _solve(a, solver, backend=None, warm=None, eps=None):
    """solve_assignment, or the auction with an explicit backend."""
    if backend is None or solver not in ("auction", "auction-eps"):
        return solve_assignment(a, solver, warm=warm, eps=eps)
    return _auction_solve(a, warm, exact=solver == "auction", eps=eps, backend=backend)


def _gen(kind: str, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    if kind == "random":
        return torch.randn(n, n, generator=g, dtype=f64)
    if kind == "int-ties":                      # few distinct values: many ties and many optima
        return torch.randint(0, 4, (n, n), generator=g).to(f64)
    if kind.startswith("rank"):
        r = int(kind[4:])
        return torch.randn(n, r, generator=g, dtype=f64) @ torch.randn(r, n, generator=g, dtype=f64)
    if kind == "hetero":                        # low rank with log-normal row/column scales (gradient-like)
        s = torch.exp(torch.randn(n, 1, generator=g, dtype=f64))
        t = torch.exp(torch.randn(1, n, generator=g, dtype=f64))
        return (s * torch.randn(n, 20, generator=g, dtype=f64)) @ (torch.randn(20, n, generator=g, dtype=f64) * t)
    if kind == "constant":
        return torch.full((n, n), 3.25, dtype=f64)
    if kind == "dup-rows":                      # blocks of identical rows, incl. a block of zero rows
        base = torch.randn(n // 4, n, generator=g, dtype=f64)
        m = base.repeat_interleave(4, dim=0)[:n].clone()
        m[: n // 8] = 0.0
        return m
    if kind == "tiny-scale":                    # values ~1e-9 around an offset of 1e3
        return 1e3 + 1e-9 * torch.randn(n, n, generator=g, dtype=f64)
    raise ValueError(kind)


def _opt(a: torch.Tensor) -> float:
    a64 = a.detach().cpu().double().numpy()
    r, c = linear_sum_assignment(a64, maximize=True)
    return float(a64[r, c].sum())


def _objective(a: torch.Tensor, perm: torch.Tensor) -> float:
    a64 = a.detach().cpu().double()
    return float(a64[torch.arange(a.shape[0]), perm.cpu()].sum())


def _scale(a: torch.Tensor) -> float:
    return max(float(a.abs().sum(dim=1).max()), 1e-300) * 1.0


def _check_perm(res: Assignment, n: int, device: str) -> None:
    assert isinstance(res, Assignment)
    assert res.perm.dtype == torch.int64 and tuple(res.perm.shape) == (n,)
    assert res.perm.device.type == torch.device(device).type
    assert torch.equal(torch.sort(res.perm.cpu()).values, torch.arange(n))


CASES = [("random", 200), ("random", 512), ("int-ties", 300), ("rank5", 256), ("rank50", 384),
         ("rank1", 128), ("hetero", 320), ("constant", 64), ("dup-rows", 160), ("tiny-scale", 96),
         ("random", 1), ("random", 2), ("random", 3), ("int-ties", 3), ("constant", 2)]


@pytest.mark.parametrize("device,solver,backend",
                         [(d, s, None) for d in DEVICES for s in EXACT] + [(d, "auction", b) for d, b in BACKENDS])
@pytest.mark.parametrize("kind,n", CASES)
def test_exact_solvers_reach_scipy_optimum(kind, n, solver, device, backend):
    a = _gen(kind, n, seed=n).to(device)
    res = _solve(a, solver, backend)
    _check_perm(res, n, device)
    opt = _opt(a)
    got = _objective(a, res.perm)
    # relative to the objective's magnitude (sum of |row| maxima bounds every objective)
    assert opt - got <= 1e-9 * max(abs(opt), _scale(a)), (kind, n, solver, opt, got, res.method)
    assert res.gap_bound == 0.0


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("kind,n", [("random", 256), ("int-ties", 200), ("rank5", 256), ("hetero", 256),
                                    ("dup-rows", 128), ("random", 2)])
@pytest.mark.parametrize("rel", [1e-1, 1e-4])
def test_auction_eps_gap_within_reported_bound(kind, n, rel, device, backend):
    a = _gen(kind, n, seed=7 + n).to(device)
    C = float(a.max() - a.min())
    eps = rel * max(C, 1e-12) / max(n, 1)
    res = _solve(a, "auction-eps", backend, eps=eps)
    _check_perm(res, n, device)
    gap = _opt(a) - _objective(a, res.perm)
    assert res.gap_bound >= 0.0
    assert res.gap_bound <= n * eps * 1.0001 + 1e-9 * _scale(a)      # the a priori n * eps bound
    assert gap <= res.gap_bound + 1e-12 * _scale(a), (gap, res.gap_bound)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("kind", ["random", "rank50", "hetero", "int-ties"])
@pytest.mark.parametrize("solver", ["auction", "auction-eps"])
def test_warm_start_from_perturbed_matrix(kind, solver, device, backend):
    n = 256
    a0 = _gen(kind, n, seed=11).to(device)
    g = torch.Generator().manual_seed(12)
    if kind == "int-ties":
        a1 = a0 + torch.randint(0, 2, (n, n), generator=g).to(a0)
    else:   # FGMT-like step: one more low-rank term
        a1 = a0 + 0.3 * (torch.randn(n, 8, generator=g, dtype=torch.float64)
                         @ torch.randn(8, n, generator=g, dtype=torch.float64)).to(device) * a0.std()
    first = _solve(a0, solver, backend)
    assert isinstance(first.state, AuctionState) and first.state.prices.shape == (n,)
    second = _solve(a1, solver, backend, warm=first)
    _check_perm(second, n, device)
    assert second.info.get("warm") is True
    gap = _opt(a1) - _objective(a1, second.perm)
    if solver == "auction":
        assert gap <= 1e-9 * max(abs(_opt(a1)), _scale(a1))
    else:
        assert gap <= second.gap_bound + 1e-12 * _scale(a1)


def test_warm_start_ignores_unusable_state():
    a = _gen("random", 64, seed=3)
    other = solve_assignment(_gen("random", 32, seed=4), "auction")             # wrong size
    res = solve_assignment(a, "auction", warm=other)
    assert _objective(a, res.perm) >= _opt(a) - 1e-9 * _scale(a)
    scipy_res = solve_assignment(a, "scipy")                                     # no auction state
    res = solve_assignment(a, "auction", warm=scipy_res)
    assert _objective(a, res.perm) >= _opt(a) - 1e-9 * _scale(a)


@pytest.mark.parametrize("backend", ["jit", "torch"])
def test_bid_limit_falls_back_to_exact_scipy(backend):
    a = _gen("hetero", 200, seed=5)
    res = _auction_solve(a, None, exact=True, max_bids=10, backend=backend)
    assert res.method == "auction->scipy" and "failed" in res.info
    _check_perm(res, 200, "cpu")
    assert _objective(a, res.perm) >= _opt(a) - 1e-9 * _scale(a)


@pytest.mark.parametrize("backend", ["jit", "torch"])
def test_dense_finish_when_threshold_graph_is_large(backend):
    """No edge allowed to the sparse finish: an uncertified auction result must go through the dense finish on
    the reduced costs (not the bid-limit fallback), and that finish is exact."""
    a = _gen("rank5", 200, seed=6)
    res = _auction_solve(a, None, exact=True, sparse_edges_per_row=0, backend=backend)
    assert res.method == "auction->scipy" and "failed" not in res.info and "t_fallback" in res.info, res.info
    assert res.info["dual_gap"] > 0 and res.info["nnz"] > 0      # the auction alone was not certified optimal
    assert _objective(a, res.perm) >= _opt(a) - 1e-9 * _scale(a)


@pytest.mark.parametrize("backend", ["jit", "torch"])
def test_sparse_finish_makes_an_uncertified_auction_exact(backend):
    a = _gen("rank5", 200, seed=6)
    res = _auction_solve(a, None, exact=True, backend=backend)
    assert res.method == "auction+sparse" and "t_sparse" in res.info and res.info["dual_gap"] > 0, res.info
    assert 0 < res.info["nnz"] <= 32 * 200
    assert _objective(a, res.perm) >= _opt(a) - 1e-9 * _scale(a)


def test_a_planted_assignment_is_certified_by_the_duality_gap_alone():
    """A permutation matrix: the torch backend's prices close the duality gap exactly, no finish runs."""
    planted = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    a = torch.eye(300, dtype=torch.float64)[planted]
    res = _auction_solve(a, None, exact=True, backend="torch")
    assert res.method == "auction(certified)" and res.info["dual_gap"] == 0.0
    assert "t_sparse" not in res.info and "t_fallback" not in res.info
    assert torch.equal(res.perm, planted)


@pytest.mark.parametrize("backend", ["jit", "torch"])
def test_float32_and_integer_inputs(backend):
    a = _gen("random", 100, seed=8)
    for x in (a.float(), (a * 10).round().to(torch.int64)):
        res = _solve(x, "auction", backend)
        _check_perm(res, 100, "cpu")
        assert _objective(x, res.perm) >= _opt(x) - 1e-9 * _scale(x.double())


def test_empty_matrix():
    for solver in ("auction", "auction-eps"):
        res = solve_assignment(torch.zeros(0, 0), solver)
        assert res.perm.shape == (0,)


def test_bad_input_is_a_user_error():
    with pytest.raises(LtrayError):
        solve_assignment(torch.zeros(3, 4), "auction")
    with pytest.raises(LtrayError):
        solve_assignment(torch.zeros(3), "scipy")
    with pytest.raises(LtrayError):
        solve_assignment(torch.zeros(3, 3), "hungarian-magic")
    bad = torch.zeros(4, 4)
    bad[1, 2] = float("nan")
    for solver in SOLVERS:
        with pytest.raises(LtrayError):
            solve_assignment(bad, solver)
    with pytest.raises(LtrayError):
        solve_assignment(torch.eye(3), "auction-eps", eps=-1.0)
    with pytest.raises(LtrayError):
        solve_assignment(torch.eye(3), "scipy", eps=1e-3)
    with pytest.raises(LtrayError, match="backend"):
        _auction_solve(torch.eye(3), None, exact=True, backend="fortran")


def test_solver_registry_and_default():
    assert {"scipy", "auction", "auction-eps", "auto"} <= set(SOLVERS)
    a = _gen("rank5", 128, seed=9)
    res = solve_assignment(a)           # default: "auto", exact
    assert res.gap_bound == 0.0
    assert abs(_objective(a, res.perm) - _opt(a)) <= 1e-9 * _scale(a)


@pytest.mark.parametrize("kind,n", CASES)
def test_fastlap_auction_reaches_scipy_optimum(kind, n):
    """The optional Rust auction (ltray[fast]) is exact on the same degenerate cases (CPU only)."""
    pytest.importorskip("fastlap")
    a = _gen(kind, n, seed=n)
    res = solve_assignment(a, "fastlap")
    _check_perm(res, n, "cpu")
    assert _opt(a) - _objective(a, res.perm) <= 1e-9 * max(abs(_opt(a)), _scale(a)), (kind, n)


@pytest.fixture(scope="module")
def recorded_gradient_matrix():
    """A real FGMT score matrix: 4 steps of gradient pairs of a digits 2-MLP (width 256), recorded here."""
    import ltray
    from ltray.models import state_of
    from ltray.config import DataConfig, ModelConfig, TransferConfig
    from ltray.core.transfer import TransferContext
    from ltray.runs import train_source

    data = ltray.load_dataset("digits")
    src = train_source(data, DataConfig("digits"), ModelConfig("mlp", 256), ltray.TrainConfig(epochs=3, lr=0.1),
                       seed=0, progress=False)
    model = ModelConfig("mlp", 256).build(data, 1)
    spec = ltray.spec_for(model)
    ctx = TransferContext(model, spec, src.linear(4), state_of(model), data, TransferConfig(T=4), seed=0)
    matcher = ltray.Matcher(spec)
    for t in range(4):
        matcher.add_pair(*ctx.gradient_pair(ctx.source[t], ctx.transferred(ltray.identity_permutation(spec), t)))
    return matcher.static["P_fc1"]


@pytest.mark.parametrize("solver", ["auction", "auction-torch", "fastlap"])    # n = 256: "auto" would be scipy
def test_exact_solvers_on_a_recorded_gradient_matching_matrix(recorded_gradient_matrix, solver):
    if solver == "fastlap":
        pytest.importorskip("fastlap")
    a = recorded_gradient_matrix
    res = solve_assignment(a, solver)
    _check_perm(res, a.shape[0], "cpu")
    assert _opt(a) - _objective(a, res.perm) <= 1e-9 * max(abs(_opt(a)), _scale(a))


@pytest.mark.parametrize("kind,n", [("random", N_AUTO), ("int-ties", N_AUTO), ("hetero", N_AUTO),
                                    ("dup-rows", N_AUTO), ("tiny-scale", N_AUTO), ("rank50", N_AUTO + 37)])
def test_auto_is_the_exact_auction_from_its_cpu_size(kind, n):
    a = _gen(kind, n, seed=n + 1)
    res = solve_assignment(a, "auto")
    _check_perm(res, n, "cpu")
    assert res.method.startswith("auction") and isinstance(res.state, AuctionState) and res.gap_bound == 0.0
    opt = _opt(a)
    assert opt - _objective(a, res.perm) <= 1e-9 * max(abs(opt), _scale(a)), (kind, n, res.method)


def test_auto_switches_at_its_cpu_size_and_warm_starts_there():
    assert solve_assignment(_gen("rank5", N_AUTO - 1, seed=5), "auto").method == "scipy"
    a = _gen("rank5", N_AUTO, seed=3)
    res = solve_assignment(a, "auto")
    assert res.method.startswith("auction") and abs(_objective(a, res.perm) - _opt(a)) <= 1e-9 * _scale(a)
    b = a + 0.01 * _gen("random", N_AUTO, seed=4)       # the next FGMT step: a small change of the same matrix
    again = solve_assignment(b, "auto", warm=res)
    assert again.info["warm"] and abs(_objective(b, again.perm) - _opt(b)) <= 1e-9 * _scale(b)


def test_compiled_candidate_lists_do_not_depend_on_the_thread_count():
    """The one parallel kernel (candidate lists of all rows) splits rows across torch's thread count."""
    from ltray.lap import _auction_jit

    a = _gen("hetero", 301, seed=13).float().numpy()
    p = np.random.default_rng(0).random(301)
    saved, out = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            arrays = (np.empty((301, 8), np.int64), np.empty((301, 8)), np.empty(301), np.empty(301))
            _auction_jit.init_candidates(a, p, *arrays)
            out.append(arrays)
    finally:
        torch.set_num_threads(saved)
    for arrays in out[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(out[0], arrays))
    top = np.sort(a - p, axis=1)[:, ::-1]
    assert np.allclose(out[0][3], top[:, 0]) and np.allclose(out[0][2], top[:, 8])   # max and beta = 9th best


def test_the_compiled_auction_leaves_torch_thread_count_alone():
    """numba's OpenMP layer resets OpenMP's thread count when it starts; a one-thread Ray task must stay at one."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1); from ltray.lap import solve_assignment; "
            "solve_assignment(torch.rand(300, 300), 'auction'); print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"


@pytest.mark.parametrize("n,k1", [(n, k1) for n in (3, 5, 63, 64, 100, 1000) for k1 in (2, 3, 17, 32, 33, 40)
                                  if k1 <= n])          # the solver never asks for more columns than a row has
@pytest.mark.parametrize("ties", [False, True])
def test_compiled_row_scan_finds_the_k_largest(n, k1, ties):
    """_row_top (lane maxima threshold, compaction, quickselect; a plain scan when k1 > 32 or n < 64) returns
    the k1 largest a_ij - p_j: largest first, second largest next, k1-th largest last, distinct columns."""
    from ltray.lap import _auction_jit

    rng = np.random.default_rng(n * 100 + k1)
    a = rng.integers(0, 3, (8, n)).astype(np.float32) if ties else rng.standard_normal((8, n)).astype(np.float32)
    p = np.zeros(n) if ties else rng.random(n)
    s = _auction_jit._scratch(n, k1)
    for i in range(8):
        _auction_jit._row_top(a, p, i, s)
        topv, topi = s[0], s[1]
        row = a[i].astype(np.float64) - p
        best = np.sort(row)[::-1][:k1]
        assert len(set(topi.tolist())) == k1 and np.array_equal(row[topi], topv)
        assert np.array_equal(np.sort(topv)[::-1], best)
        assert topv[0] == best[0] and topv[1] == best[1] and topv[k1 - 1] == best[k1 - 1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "rank50", "hetero", "int-ties"])
@pytest.mark.parametrize("backend", ["jit", "torch"])
def test_auction_is_exact_at_4096(kind, backend):
    """The issue's largest size, against scipy (seconds per solve; run with -m slow)."""
    a = _gen(kind, 4096, seed=21)
    res = _solve(a, "auction", backend)
    _check_perm(res, 4096, "cpu")
    opt = _opt(a)
    assert opt - _objective(a, res.perm) <= 1e-9 * max(abs(opt), _scale(a)), res.method
