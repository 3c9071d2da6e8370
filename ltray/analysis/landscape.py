"""Mode connectivity (paper Sec. 4.3), behind `ltray landscape` and the analyses: paths, barriers, planes.

1-D: loss and accuracy along the linear path (1 - alpha) a + alpha b, and its loss barrier
     max_alpha [L(alpha) - ((1 - alpha) L(0) + alpha L(1))]  (Frankle et al. 2020; >= 0 up to noise).
2-D: the loss surface on the plane through three parameters (Garipov et al. 2018): origin w0,
     u = (w1 - w0)/|w1 - w0|, v = the part of w2 - w0 orthogonal to u, normalised; a grid over the
     bounding box of the three points in (u, v) coordinates, widened by `margin` times its span each side.

Points are state dicts; only floating tensors move (integer buffers, e.g. BatchNorm counters, are the first
point's). BatchNorm statistics are recomputed at every evaluated point, since averaged running statistics do
not describe the averaged network (REPAIR, Jordan et al. 2023).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.functional import evaluate, reset_bn_stats
from ..core.trajectory import Layout, State
from ..data import Split
from ..errors import LtrayError
from ..models import has_batchnorm


# ---- pure functions over state dicts -------------------------------------------------------------------

def check_same_architecture(points: Mapping[str, State]) -> None:
    """A one-line LtrayError unless every point holds the same tensor names and shapes as the first."""
    (first, ref), *rest = points.items()
    for name, state in rest:
        problem = Layout.of(ref).describe_mismatch(Layout.of(state), f"in {first}", f"in {name}")
        if problem:
            raise LtrayError(f"points {first} and {name} are different architectures ({problem})")


def interpolate(a: State, b: State, alpha: float) -> State:
    """(1 - alpha) a + alpha b on floating tensors (alpha outside [0, 1] extrapolates); others are a's."""
    return {k: torch.lerp(v, b[k].to(v), alpha) if v.is_floating_point() else v for k, v in a.items()}


def loss_barrier(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """max over the path of loss minus the straight line between the end losses (alphas must start at 0
    and end at 1)."""
    a, loss = np.asarray(alphas, float), np.asarray(losses, float)
    if len(a) < 2 or a[0] != 0.0 or a[-1] != 1.0:
        raise LtrayError("a loss barrier needs a path from alpha = 0 to alpha = 1")
    return float(np.max(loss - ((1 - a) * loss[0] + a * loss[-1])))


def barriers(alphas: Sequence[float], losses: Sequence[float], accs: Sequence[float]) -> dict[str, float]:
    """The path's loss barrier; the same divided by the mean of the two end losses (barrier_rel); and its
    accuracy barrier, the largest drop of accuracy below the straight line between the end accuracies
    (acc_barrier, in points). A loss barrier measured against the line between the end losses cannot tell
    paths apart when one end is bad (the line is high there); the relative and accuracy barriers say more."""
    a, acc = np.asarray(alphas, float), np.asarray(accs, float)
    loss = loss_barrier(a, losses)
    ends = (float(losses[0]) + float(losses[-1])) / 2
    return {"barrier": loss, "barrier_rel": loss / ends if ends > 0 else float("nan"),
            "acc_barrier": float(np.max(((1 - a) * acc[0] + a * acc[-1]) - acc))}


@dataclass
class Evaluator:
    """Loss and accuracy of a point on `split`, with BatchNorm statistics reset over `bn_samples` samples of
    `bn_split` (the same samples at every point: the generator is re-seeded) for models that have BN."""
    model: nn.Module
    split: Split
    bn_split: Split | None = None
    bn_samples: int = 256
    seed: int = 0

    def __call__(self, state: State) -> tuple[float, float]:
        if has_batchnorm(self.model):
            if self.bn_split is None:
                raise LtrayError("this model has BatchNorm: the landscape needs training data to reset statistics")
            state = reset_bn_stats(self.model, state, self.bn_split, self.bn_samples,
                                   torch.Generator().manual_seed(self.seed))
        return evaluate(self.model, state, self.split)


def linear_path(evaluator: Evaluator, a: State, b: State, num_points: int = 25) -> list[dict]:
    """Rows {alpha, loss, acc} at num_points evenly spaced alphas in [0, 1], plus the path's barriers."""
    if num_points < 2:
        raise LtrayError(f"a path needs at least 2 points, got {num_points}")
    check_same_architecture({"a": a, "b": b})
    alphas = np.linspace(0.0, 1.0, num_points)
    rows = []
    for alpha in alphas:
        loss, acc = evaluator(interpolate(a, b, float(alpha)))
        rows.append({"alpha": float(alpha), "loss": loss, "acc": acc})
    found = barriers(alphas, [r["loss"] for r in rows], [r["acc"] for r in rows])
    return [dict(r, **found) for r in rows]


def _floating(state: State) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def _flat(state: State, keys: list[str]) -> torch.Tensor:
    return torch.cat([state[k].detach().reshape(-1).double().cpu() for k in keys])


@dataclass
class Plane:
    """The plane through three points: origin w0 and orthonormal directions u, v (flat float64 vectors over
    the origin's floating tensors). `coords[i]` are the (u, v) coordinates of the i-th point."""
    origin: State
    keys: list[str]
    u: torch.Tensor
    v: torch.Tensor
    coords: list[tuple[float, float]]

    def point(self, cu: float, cv: float) -> State:
        flat = _flat(self.origin, self.keys) + cu * self.u + cv * self.v
        out, i = dict(self.origin), 0
        for k in self.keys:
            n = self.origin[k].numel()
            out[k] = flat[i:i + n].reshape(self.origin[k].shape).to(self.origin[k])
            i += n
        return out


def plane(w0: State, w1: State, w2: State) -> Plane:
    """Garipov et al.'s basis: u along w1 - w0, v along the part of w2 - w0 orthogonal to u."""
    check_same_architecture({"w0": w0, "w1": w1, "w2": w2})
    keys = _floating(w0)
    x0 = _flat(w0, keys)
    d1, d2 = _flat(w1, keys) - x0, _flat(w2, keys) - x0
    dx = float(d1.norm())
    if dx == 0.0:
        raise LtrayError("the first two points of the plane coincide")
    u = d1 / dx
    along = float(d2 @ u)
    w = d2 - along * u
    dy = float(w.norm())
    if dy <= 1e-6 * max(dx, float(d2.norm())):  # float32 points: rounding leaves ~1e-7 relative
        raise LtrayError("the three points are collinear: they span no plane")
    return Plane(w0, keys, u, w / dy, [(0.0, 0.0), (dx, 0.0), (along, dy)])


def plane_grid(p: Plane, grid: int = 21, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """u and v coordinates of a grid x grid lattice over the points' bounding box widened by margin x span."""
    if grid < 2:
        raise LtrayError(f"the grid needs at least 2 points per axis, got {grid}")
    if not margin >= 0:
        raise LtrayError(f"margin must be >= 0, got {margin}")
    cu, cv = np.array([c[0] for c in p.coords]), np.array([c[1] for c in p.coords])
    axes = []
    for c in (cu, cv):
        span = c.max() - c.min()
        axes.append(np.linspace(c.min() - margin * span, c.max() + margin * span, grid))
    return axes[0], axes[1]


def plane_surface(evaluator: Evaluator, points: Mapping[str, State], grid: int = 21,
                  margin: float = 0.2) -> tuple[list[dict], list[dict]]:
    """(grid rows {u, v, loss, acc}, point rows {point, u, v, loss, acc}) on the plane through the three
    `points` (in order: origin, u direction, third)."""
    if len(points) != 3:
        raise LtrayError(f"a plane needs exactly 3 points, got {len(points)}")
    check_same_architecture(points)
    names, states = list(points), list(points.values())
    p = plane(*states)
    us, vs = plane_grid(p, grid, margin)
    rows = []
    for cv in vs:
        for cu in us:
            loss, acc = evaluator(p.point(float(cu), float(cv)))
            rows.append({"u": float(cu), "v": float(cv), "loss": loss, "acc": acc})
    anchors = []
    for name, state, (cu, cv) in zip(names, states, p.coords):
        loss, acc = evaluator(state)
        anchors.append({"point": name, "u": cu, "v": cv, "loss": loss, "acc": acc})
    return rows, anchors


def surface_array(rows: Sequence[dict], value: str = "loss") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) with z[i, j] the value at (u[j], v[i]), from grid rows."""
    us = np.array(sorted({r["u"] for r in rows}))
    vs = np.array(sorted({r["v"] for r in rows}))
    z = np.full((len(vs), len(us)), np.nan)
    iu = {x: j for j, x in enumerate(us)}
    iv = {x: i for i, x in enumerate(vs)}
    for r in rows:
        z[iv[r["v"]], iu[r["u"]]] = r[value]
    return us, vs, z


# ---- points as files (`ltray landscape`) -------------------------------------------------------------------

def save_state(state: State, path: str | os.PathLike, meta: Mapping | None = None) -> Path:
    """One parameter as safetensors (atomic), with an optional JSON header, readable by `ltray landscape`."""
    import json

    from safetensors.torch import save_file

    from ..core.trajectory import atomic_write

    return atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                                                    str(tmp), metadata={"ltray_state": json.dumps(dict(meta or {}))}))


def load_point(spec: str) -> tuple[State, dict]:
    """FILE or FILE@k: a state dict saved by save_state (or any safetensors state dict), or checkpoint k
    (default: the last) of a trajectory saved by `ltray train`. Returns (state, header)."""
    import json

    from safetensors import safe_open

    from ..core.trajectory import load_trajectory

    path, _, index = spec.rpartition("@") if "@" in spec and spec.rpartition("@")[2].lstrip("-").isdigit() \
        else (spec, "", "")
    if not Path(path).is_file():
        raise LtrayError(f"point file {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            if "ltray" not in meta:
                if index:
                    raise LtrayError(f"point {spec}: @k selects a checkpoint, but {path} is not a trajectory")
                return {k: f.get_tensor(k) for k in keys}, json.loads(meta.get("ltray_state", "{}"))
    except LtrayError:
        raise
    except Exception as e:  # safetensors raises several types for damaged files
        raise LtrayError(f"point file {path} is not a safetensors file ({type(e).__name__})") from None
    traj = load_trajectory(path, lazy=True)                 # reads the one checkpoint asked for
    epochs = traj.epochs
    k = int(index) if index else epochs[-1]
    if (k if k >= 0 else epochs[-1] + 1 + k) not in epochs:
        held = f"{epochs[0]}..{epochs[-1]}" if epochs == list(range(epochs[0], epochs[-1] + 1)) else str(epochs)
        raise LtrayError(f"point {spec}: trajectory has checkpoints {held}")
    return traj.at_epoch(k), dict(traj.meta)
