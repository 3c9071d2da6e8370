"""Time the assignment solvers of ltray.lap, cold and warm-started, against scipy's optimum.

Matrix kinds (each a sequence M_1..M_S, M_s = M_{s-1} + one more term, like FGMT's accumulated
gradient-matching score):
  random   uniform [0, 1) entries, then + 0.3 * std-scaled (n x 128)(128 x n) low-rank terms
  gm       sum of s products of Gaussian (n x 128) @ (128 x n) factors
  gm-het   as gm, with log-normal (sigma 1) per-unit scales on rows and columns: gradient norms differ
           across hidden units; this is what makes scipy slow (about 10 s at n = 4096, as in the issue)

cold: solve M_s from scratch.  warm: solve M_s with warm = the solver's result for M_{s-1}.
rel_gap = (scipy objective - objective) / |scipy objective|.

    python benchmarks/bench_lap.py --sizes 512 1024 2048 4096
    python benchmarks/bench_lap.py --quick
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from ltray import lap

RANK = 128


def sequence(kind: str, n: int, steps: int, seed: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def term() -> torch.Tensor:
        return torch.randn(n, RANK, generator=g, dtype=f64) @ torch.randn(RANK, n, generator=g, dtype=f64)

    out = []
    if kind == "random":
        m = torch.rand(n, n, generator=g, dtype=f64)
        out.append(m)
        for _ in range(steps - 1):
            t = term()
            m = m + 0.3 * m.std() * t / t.std()
            out.append(m)
    elif kind in ("gm", "gm-het"):
        if kind == "gm-het":
            rs = torch.exp(torch.randn(n, 1, generator=g, dtype=f64))
            cs = torch.exp(torch.randn(1, n, generator=g, dtype=f64))
        m = torch.zeros(n, n, dtype=f64)
        for _ in range(steps):
            t = term()
            m = m + (rs * t * cs if kind == "gm-het" else t)
            out.append(m)
    else:
        raise ValueError(kind)
    return [x.to(device) for x in out]


def objective(m: torch.Tensor, perm: torch.Tensor) -> float:
    return float(m[torch.arange(m.shape[0], device=m.device), perm].sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--kinds", nargs="+", default=["random", "gm", "gm-het"])
    ap.add_argument("--solvers", nargs="+", default=["scipy", "auction", "auction-torch", "auction-eps", "auto"])
    ap.add_argument("--steps", type=int, default=3, help="matrices per sequence (k = 1..steps terms)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="sizes 256 512, 2 steps")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_lap.csv"))
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.steps = [256, 512], 2
    if args.steps < 2:
        ap.error("--steps must be >= 2 (warm starts need a previous matrix)")

    rows = []
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, steps {args.steps}", flush=True)
    for n in args.sizes:
        for kind in args.kinds:
            mats = sequence(kind, n, args.steps, seed=1000 + n, device=args.device)
            ref = []
            for s, m in enumerate(mats, 1):
                res, dt = lap.timed_solve(m, "scipy")
                ref.append(objective(m, res.perm))
                rows.append(dict(n=n, kind=kind, solver="scipy", mode="cold", step=s, time_s=dt, rel_gap=0.0,
                                 gap_bound=0.0, method=res.method))
            for solver in args.solvers:
                if solver == "scipy":
                    continue
                prev = None
                for s, m in enumerate(mats, 1):
                    res, dt = lap.timed_solve(m, solver)
                    gap = (ref[s - 1] - objective(m, res.perm)) / abs(ref[s - 1])
                    rows.append(dict(n=n, kind=kind, solver=solver, mode="cold", step=s, time_s=dt, rel_gap=gap,
                                     gap_bound=res.gap_bound, method=res.method))
                    if prev is not None:
                        wres, wdt = lap.timed_solve(m, solver, warm=prev)
                        wgap = (ref[s - 1] - objective(m, wres.perm)) / abs(ref[s - 1])
                        rows.append(dict(n=n, kind=kind, solver=solver, mode="warm", step=s, time_s=wdt,
                                         rel_gap=wgap, gap_bound=wres.gap_bound, method=wres.method))
                    prev = res
            print_table([r for r in rows if r["n"] == n and r["kind"] == kind], header=not any(
                r["n"] < n or (r["n"] == n and args.kinds.index(r["kind"]) < args.kinds.index(kind)) for r in rows))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\nwrote {len(rows)} rows to {out}")
    print("\nsummary (mean time over the sequence's steps; warm: steps 2..S)")
    print_table(rows, header=True)
    return 0


def print_table(rows, header=True):
    groups = {}
    for r in rows:
        groups.setdefault((r["n"], r["kind"], r["solver"], r["mode"]), []).append(r)
    if header:
        print(f"{'n':>5} {'kind':<7} {'solver':<12} {'mode':<5} {'time_s':>8} {'max_rel_gap':>12} "
              f"{'max_gap_bound':>13}  methods")
    for (n, kind, solver, mode), rs in groups.items():
        t = sum(r["time_s"] for r in rs) / len(rs)
        gap = max(r["rel_gap"] for r in rs)
        gb = max(r["gap_bound"] for r in rs)
        methods = ",".join(sorted({r["method"] for r in rs}))
        print(f"{n:>5} {kind:<7} {solver:<12} {mode:<5} {t:>8.3f} {gap:>12.1e} {gb:>13.2e}  {methods}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
