"""Ensemble members: the units of work behind `python -m ltray.ensemble`, as pure functions of the data.

Each function makes one *unit* (a training run or a transfer) and returns its members: a row of what it
knows (MEMBERS_SCHEMA columns) and the member's softmax on the validation and test splits (validation picks
recipes and fits temperatures; test reports). The same call runs in-process or as
a Ray task (ltray.distributed.engine). A unit is saved whole in one safetensors file, so a rerun skips it.

Seconds are the wall time of the work that made a member, without evaluation:
- a trained member after e epochs: its training up to epoch e;
- a snapshot (a checkpoint of a cyclic-lr run) or a checkpoint of the source: that run up to the checkpoint;
- a transferred member: its transfer (every step evaluated on validation data, to pick the best step; an
  Oracle's includes training its target) plus its fine-tuning; the source's training is not included;
- a copy (the control: the source's final model fine-tuned with the member's own data order, no transfer):
  its fine-tuning.

epochs_eq is the same work counted in passes over the training set, which does not drift with the machine or its
load: an SGD step over b samples counts b / n_train (forward and backward); a forward pass alone over b samples
counts b / (3 n_train) (a backward pass costs about two forwards). A transfer counts its gradient pairs (two
gradients of B samples each), its T + 1 evaluations on the validation split and, with BatchNorm, its resets of
B' samples per step; an Oracle's adds its target's training. The assignment solves are not passes: they are in
the seconds only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from ..errors import LtrayError
from ..metrics import member_metrics


@dataclass
class Member:
    row: dict              # MEMBERS_SCHEMA columns this unit knows (kind, seeds, epochs, metrics, seconds, ...)
    probs: np.ndarray      # (n_test, classes) float32: softmax on the test split
    val_probs: np.ndarray  # (n_val, classes) float32: softmax on the validation split


FORWARD = 1 / 3   # a forward pass's share of a forward + backward pass (epochs_eq)


def transfer_epochs_eq(transfer_cfg, gradient_pairs: int, n_train: int, n_val: int, batchnorm: bool,
                       target_epochs: int = 0) -> float:
    """A transfer's work in passes over the training set (module docstring): gradients, evaluations, resets."""
    T = transfer_cfg.T
    samples = 2 * gradient_pairs * transfer_cfg.batch_size + FORWARD * (T + 1) * n_val
    samples += FORWARD * T * transfer_cfg.bn_samples if batchnorm else 0
    return samples / n_train + target_epochs


def predict_proba(model: torch.nn.Module, state: dict, split, batch_size: int = 2000) -> np.ndarray:
    """Softmax of `state` on `split`, in eval mode, as float32 numpy."""
    device = next(iter(state.values())).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [torch.softmax(functional_call(model, state, (split.x[i:i + batch_size].to(device),)), 1).cpu()
               for i in range(0, len(split), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float32)


# the transfer's columns of a member that was trained, not transferred
NOT_TRANSFERRED = dict(transfer_seed=None, T=None, best_step=None, val_acc_transfer=None, test_acc_transfer=None,
                       transfer_seconds=None, optimizer="sgd")


def _member(model, state, data, **row) -> Member:
    """The member's row, with its test and validation metrics and where it was computed (device, torch threads)."""
    probs, val_probs = predict_proba(model, state, data.test), predict_proba(model, state, data.val)
    device = next(iter(state.values())).device.type       # "cpu" or "cuda", as in every row
    val = member_metrics(val_probs, data.val.y.numpy())
    return Member(dict(row, **member_metrics(probs, data.test.y.numpy()), val_acc=val["test_acc"],
                       val_nll=val["test_nll"], device=device, threads=torch.get_num_threads()), probs, val_probs)


def _epoch_seconds(meta: dict, epoch: int) -> float:
    """Training seconds up to the end of `epoch` (spread evenly when an older file has only the total)."""
    if "epoch_seconds" in meta:
        return float(meta["epoch_seconds"][epoch - 1])
    return float(meta.get("train_seconds", float("nan"))) * epoch / meta.get("epochs", epoch)


def trained_members(data, *, kind: str, model_cfg, train_cfg, seed: int, epochs: tuple[int, ...],
                    device: str = "cpu") -> list[Member]:
    """Train from build_model(seed) (data order from `seed`) and return the checkpoints after each of `epochs`:
    kind "full" (an independently trained member) or "snapshot" (train_cfg.cycles > 1: the cycles' ends)."""
    from ..models import state_of
    from ..training import train

    model = model_cfg.build(data, seed).to(device)
    traj = train(model, state_of(model), data.train, train_cfg, seed, progress=False)
    return [_member(model, traj.state(e, device), data, kind=kind, method="sgd", seed_source=seed, seed=seed,
                    epochs=e, lr=train_cfg.lr, train_seconds=_epoch_seconds(traj.meta, e),
                    seconds=_epoch_seconds(traj.meta, e), epochs_eq=float(e), **NOT_TRANSFERRED) for e in epochs]


def source_members(data, *, model_cfg, source, epochs: tuple[int, ...], device: str = "cpu") -> list[Member]:
    """The source run's checkpoints after each of `epochs` (no training: its seconds are the source's)."""
    model = model_cfg.build(data, 0).to(device)
    seed, lr = int(source.meta.get("seed", 0)), (source.meta.get("train_config") or {}).get("lr")
    return [_member(model, source.at_epoch(e, device), data, kind="source", method="sgd", seed_source=seed, seed=seed,
                    epochs=e, lr=lr, train_seconds=_epoch_seconds(source.meta, e),
                    seconds=_epoch_seconds(source.meta, e), epochs_eq=float(e), **NOT_TRANSFERRED) for e in epochs]


def transferred_members(data, *, model_cfg, train_cfg, transfer_cfg, finetune_cfg, stages: tuple[int, ...],
                        method: str, source, seed: int, device: str = "cpu") -> list[Member]:
    """Transfer `source` onto build_model(seed), keep the best step (validation accuracy), fine-tune it for
    max(stages) epochs (its own data order) and return the member after each of `stages` fine-tuning epochs
    (0: the transferred parameters themselves). method "copy" is the control without transfer: the source's
    final model itself is fine-tuned (with this member's data order)."""
    from ..models import has_batchnorm
    from ..results import derive_seed
    from ..runs import recorded_recipe, transfer_pair
    from ..training import finetune_epochs

    seed_source = int(source.meta.get("seed", 0))
    transfer_seed = derive_seed("transfer", seed_source, seed)
    model = model_cfg.build(data, seed).to(device)
    bn = transfer_cfg.bn_samples if has_batchnorm(model) else 0
    if method == "copy":
        start_state, cost, eq = source.state(-1, device), 0.0, 0.0
        common = dict(kind="copy", method="copy", seed_source=seed_source, seed=seed, transfer_seed=None, T=None,
                      best_step=None, val_acc_transfer=None, transfer_seconds=0.0)
    else:
        result = transfer_pair(data, model_cfg, train_cfg, transfer_cfg, (method,), source, seed, device,
                               seed=transfer_seed).results[method]
        target_epochs = recorded_recipe(source, train_cfg).epochs if method == "oracle" else 0
        start_state, cost = result.best, result.seconds[-1]
        eq = transfer_epochs_eq(transfer_cfg, result.gradient_pairs, len(data.train), len(data.val), bool(bn),
                                target_epochs)
        common = dict(kind="transferred", method=method, seed_source=seed_source, seed=seed,
                      transfer_seed=transfer_seed, T=transfer_cfg.T, best_step=result.best_step,
                      val_acc_transfer=result.val_acc[result.best_step], transfer_seconds=cost)
    common.update(lr=finetune_cfg.lr, optimizer=finetune_cfg.optimizer)
    start = _member(model, start_state, data, epochs=0, train_seconds=0.0, seconds=cost, epochs_eq=eq, **common)
    out = [start] if 0 in stages else []
    cfg = replace(finetune_cfg, epochs=max(stages))
    for epoch, state, seconds in finetune_epochs(model, start_state, data.train, cfg,
                                                 derive_seed("finetune", seed_source, seed), bn_samples=bn):
        if epoch in stages:   # a BatchNorm reset before fine-tuning: B' forward samples
            out.append(_member(model, state, data, epochs=epoch, train_seconds=seconds, seconds=cost + seconds,
                               epochs_eq=eq + epoch + FORWARD * bn / len(data.train), **common))
    for m in out:
        m.row["test_acc_transfer"] = start.row["test_acc"]
    return out


# ---- unit files (the resume unit) ----------------------------------------------------------------------------

def save_unit(members: list[Member], path: Path) -> None:
    """All members of one unit in one safetensors file (probabilities + rows), written atomically."""
    from safetensors.numpy import save_file

    from ..core.trajectory import atomic_write

    tensors = {"probs": np.stack([m.probs for m in members]), "val_probs": np.stack([m.val_probs for m in members])}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"rows": json.dumps([m.row for m in members])}))


def load_unit(path: Path) -> list[Member]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            rows, probs, val = json.loads(f.metadata()["rows"]), f.get_tensor("probs"), f.get_tensor("val_probs")
        if not len(rows) == len(probs) == len(val):
            raise ValueError("rows and probabilities differ in number")
    except Exception as e:
        raise LtrayError(f"member file {path} is corrupted ({type(e).__name__}); delete it to recompute it") from None
    return [Member(r, p, v) for r, p, v in zip(rows, probs, val)]
