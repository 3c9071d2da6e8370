"""Learning trajectories (paper Sec. 3.3): actual checkpoints or linear [theta^0 : theta^T] with a lambda
schedule, kept as one flat float32 array (checkpoints x parameters) so they travel zero-copy through Ray's
object store, and stored as safetensors (never pickle) with a JSON header under metadata key "ltray".
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import SCHEDULES
from ..errors import LtrayError

State = dict[str, torch.Tensor]


def lambda_schedule(T: int, schedule: str = "uniform") -> np.ndarray:
    """lambda_0..lambda_T with lambda_0 = 0 and lambda_T = 1 exactly.

    uniform: lambda_t = t/T.  cosine: lambda_{t+1} - lambda_t proportional to 1 + cos(pi t / T), so the
    steps shrink towards the end like a cosine-annealed learning rate.
    """
    if T < 1:
        raise LtrayError(f"trajectory length T must be >= 1, got {T}")
    if schedule == "uniform":
        lam = np.arange(T + 1, dtype=np.float64) / T
    elif schedule == "cosine":
        alpha = 1.0 + np.cos(np.pi * np.arange(T) / T)
        lam = np.concatenate([[0.0], np.cumsum(alpha) / alpha.sum()])
    else:
        raise LtrayError(f"unknown lambda schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    lam[-1] = 1.0
    return lam


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of a state_dict, in order: maps it to and from one flat float32 vector."""
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, state: State) -> "Layout":
        return cls(tuple(state), tuple(tuple(v.shape) for v in state.values()),
                   tuple(str(v.dtype).removeprefix("torch.") for v in state.values()))

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def flatten(self, state: State) -> np.ndarray:
        return torch.cat([state[k].detach().reshape(-1).float().cpu() for k in self.names]).numpy()

    def unflatten(self, flat: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> State:
        flat = torch.as_tensor(flat)
        out, i = {}, 0
        for k, shape, dtype in zip(self.names, self.shapes, self.dtypes):
            n = math.prod(shape)
            out[k] = flat[i:i + n].reshape(shape).to(device=device, dtype=getattr(torch, dtype))
            i += n
        return out

    def describe_mismatch(self, other: "Layout", here: str = "here", there: str = "in the model") -> str | None:
        """None when both layouts hold the same tensor names and shapes, else a short description of the first
        difference: the one architecture check (a trajectory against a model, landscape points against each
        other and the model). `here` and `there` name where self's and other's shapes are."""
        if set(self.names) != set(other.names):
            extra = sorted(set(self.names) ^ set(other.names))
            return f"tensor names differ (e.g. {extra[0]!r})"
        mine = dict(zip(self.names, self.shapes))
        for k, s in zip(other.names, other.shapes):
            if mine[k] != s:
                return f"tensor {k!r} has shape {list(mine[k])} {here} but {list(s)} {there}"
        return None


class LazyCheckpoints:
    """The checkpoints of a trajectory file, read a row at a time (a safetensors slice) as float32 when asked
    for, and not kept: a transfer that needs two of a run's hundred checkpoints reads two, and going through all
    of them (a digest, a copy) holds one at a time. `reads` counts the rows read from the file."""

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path, self.shape, self.reads = Path(path), tuple(shape), 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        from safetensors import safe_open

        i = range(self.shape[0])[i]
        with safe_open(str(self.path), framework="pt") as f:
            row = f.get_slice("checkpoints")[i:i + 1].float().numpy()[0]
        self.reads += 1
        if not np.isfinite(row).all():
            raise LtrayError(f"trajectory file {self.path} contains NaN or Inf values (checkpoint {i})")
        return row


@dataclass
class Trajectory:
    """Checkpoints of one training run, one row per epoch in `epochs` (theta^0..theta^E unless a selection),
    as an (n, N) float32 array, or rows read from the file on demand (LazyCheckpoints), plus its header."""
    layout: Layout
    checkpoints: np.ndarray | LazyCheckpoints
    meta: dict

    def __len__(self) -> int:
        return len(self.checkpoints)

    @property
    def epochs(self) -> list[int]:
        """The epoch of each row (meta "checkpoint_epochs" of a selection; else 0..len - 1)."""
        return list(self.meta.get("checkpoint_epochs") or range(len(self)))

    def row(self, epoch: int) -> int:
        """The row holding `epoch`'s checkpoint (a negative epoch counts from the last one)."""
        epochs = self.epochs
        epoch = epochs[-1] + 1 + epoch if epoch < 0 else epoch
        if epoch not in epochs:
            raise LtrayError(f"this trajectory holds the checkpoints of epochs {epochs}, not of epoch {epoch}")
        return epochs.index(epoch)

    def state(self, i: int, device: str | torch.device = "cpu") -> State:
        """The state of row i (for a whole trajectory, of epoch i)."""
        return self.layout.unflatten(self.checkpoints[i], device)

    def at_epoch(self, epoch: int, device: str | torch.device = "cpu") -> State:
        return self.state(self.row(epoch), device)

    def select(self, epochs) -> "Trajectory":
        """An in-memory trajectory of the checkpoints of `epochs` only: what a task needs (a linear transfer: the
        first and the last), so the rest never travels."""
        epochs = sorted({self.epochs[self.row(e)] for e in epochs})
        rows = np.stack([np.asarray(self.checkpoints[self.row(e)], dtype=np.float32) for e in epochs])
        return Trajectory(self.layout, rows, dict(self.meta, checkpoint_epochs=epochs))

    def linear(self, T: int, schedule: str = "uniform") -> "StateSequence":
        """[theta^0 : theta^E] with T steps."""
        lam = lambda_schedule(T, schedule)
        first, last = (torch.from_numpy(np.asarray(self.checkpoints[self.row(e)])) for e in (0, -1))
        return StateSequence(self.layout, lambda t: torch.lerp(first, last, float(lam[t])), T + 1, lam, "linear")

    def actual(self, T: int) -> "StateSequence":
        """T steps of the saved checkpoints, evenly spaced from the first epoch to the last."""
        E = self.epochs[-1]
        if not 1 <= T <= E:
            raise LtrayError(f"an actual trajectory of {E} epochs supports 1 <= T <= {E}, got T={T}")
        held = self.select(actual_epochs(T, E))     # read once (from the file, when lazy), then used T times
        return StateSequence(self.layout, lambda t: torch.from_numpy(held.checkpoints[t]), T + 1,
                             actual_epochs(T, E) / E, "actual")


def actual_epochs(T: int, E: int) -> np.ndarray:
    """The T + 1 epochs an actual trajectory of T steps uses out of E: evenly spaced from 0 to E."""
    return np.rint(np.linspace(0, E, T + 1)).astype(int)


class StateSequence(Sequence):
    """A lazily materialised sequence of state dicts theta^0..theta^T (flat vectors until asked for)."""

    def __init__(self, layout: Layout, flat_at, length: int, lambdas: np.ndarray, kind: str):
        self.layout, self._flat_at, self._len, self.lambdas = layout, flat_at, length, np.asarray(lambdas, float)
        self.kind = kind  # "linear": theta^t - theta^0 = lambda_t (theta^T - theta^0); "actual": checkpoints

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, t: int) -> State:
        if not -self._len <= t < self._len:
            raise IndexError(t)
        return self.layout.unflatten(self._flat_at(t % self._len))

    @property
    def T(self) -> int:
        return self._len - 1


def trajectory_digest(traj: Trajectory) -> str:
    """A content id of a trajectory's checkpoints (read row by row): what names a given source in run ids."""
    digest = hashlib.sha256()
    for i in range(len(traj)):
        digest.update(np.ascontiguousarray(traj.checkpoints[i], dtype=np.float32).tobytes())
    return digest.hexdigest()[:12]


# ---- storage -------------------------------------------------------------------------------------------

def atomic_path(path: Path):
    """A temp file beside `path`; the caller writes it, then os.replace(tmp, path) publishes it whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Write `path` whole or not at all: `write(tmp)` fills a temp file beside it, which then replaces `path`
    (whatever was there stays until that moment). An unwritable folder or a full disk is one LtrayError line."""
    from safetensors import SafetensorError

    path = Path(path)
    tmp = None
    try:
        tmp = atomic_path(path)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).split(": ", 1)[-1]
        raise LtrayError(f"cannot write {path}: {reason}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


STORAGE_DTYPES = ("float32", "bfloat16", "float16")


def save_trajectory(traj: Trajectory, path: str | os.PathLike, dtype: str = "float32") -> Path:
    """Save as safetensors: the checkpoints (stored as `dtype`: float32, or half precision at half the size)
    and the header as JSON under metadata "ltray". Loading gives float32 back."""
    from safetensors.torch import save_file

    if dtype not in STORAGE_DTYPES:
        raise LtrayError(f"unknown storage dtype {dtype!r}; known: {', '.join(STORAGE_DTYPES)}")
    header = dict(traj.meta, storage_dtype=dtype,
                  layout={"names": list(traj.layout.names), "shapes": [list(s) for s in traj.layout.shapes],
                          "dtypes": list(traj.layout.dtypes)})
    if not isinstance(traj.checkpoints, np.ndarray):   # rows on demand: written one at a time, never all in memory
        return atomic_write(path, lambda tmp: _stream_rows(tmp, traj.checkpoints, dtype, {"ltray": json.dumps(header)}))
    tensor = torch.from_numpy(np.ascontiguousarray(traj.checkpoints)).to(getattr(torch, dtype))
    return atomic_write(path, lambda tmp: save_file({"checkpoints": tensor}, str(tmp),
                                                    metadata={"ltray": json.dumps(header)}))


def _stream_rows(path: Path, rows, dtype: str, metadata: dict) -> None:
    """The safetensors format written row by row: an 8-byte little-endian header size, the JSON header (one
    tensor "checkpoints" and the metadata), padded to 8 bytes, then the rows."""
    n, N = len(rows), len(rows[0])
    itemsize = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    code = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    header = json.dumps({"checkpoints": {"dtype": code, "shape": [n, N], "data_offsets": [0, n * N * itemsize]},
                         "__metadata__": metadata}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        for i in range(n):
            row = torch.from_numpy(np.ascontiguousarray(rows[i], dtype=np.float32)).to(getattr(torch, dtype))
            f.write(row.view(torch.uint8).numpy().tobytes())


def load_trajectory(path: str | os.PathLike, lazy: bool = False) -> Trajectory:
    """Load and validate a trajectory file; any defect is a one-line LtrayError naming the file. With `lazy`,
    only the header is read now and each checkpoint when it is used (checked for NaN/Inf then)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LtrayError(f"trajectory file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["ltray"])
            shape = tuple(f.get_slice("checkpoints").get_shape())
            checkpoints = None if lazy else f.get_tensor("checkpoints").float().numpy()
        lay = header.pop("layout")
        header.pop("storage_dtype", None)
        layout = Layout(tuple(lay["names"]), tuple(tuple(s) for s in lay["shapes"]), tuple(lay["dtypes"]))
    except Exception as e:  # safetensors raises several types for truncated or corrupted files
        raise LtrayError(f"trajectory file {path} is corrupted or not an ltray trajectory "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if len(shape) != 2 or shape[1] != layout.size or shape[0] < 2:
        raise LtrayError(f"trajectory file {path} holds checkpoints of shape {list(shape)}, "
                         f"which does not fit its header ({layout.size} values per checkpoint, >= 2 checkpoints)")
    if lazy:
        return Trajectory(layout, LazyCheckpoints(path, shape), header)
    if not np.isfinite(checkpoints).all():
        bad = int(np.argwhere(~np.isfinite(checkpoints))[0, 0])
        raise LtrayError(f"trajectory file {path} contains NaN or Inf values (checkpoint {bad})")
    return Trajectory(layout, checkpoints, header)
