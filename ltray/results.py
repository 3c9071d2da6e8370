"""Tidy results: explicit pyarrow schemas, provenance columns, atomic Parquet writes, stable config hashes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .trajectory import atomic_path

PROVENANCE = [pa.field("config_hash", pa.string()), pa.field("ltray_version", pa.string()),
              pa.field("torch_version", pa.string())]

TRANSFER_SCHEMA = pa.schema([
    pa.field("dataset", pa.string()), pa.field("model", pa.string()), pa.field("width", pa.int64()),
    pa.field("method", pa.string()), pa.field("seed_source", pa.int64()), pa.field("seed_target", pa.int64()),
    pa.field("T", pa.int64()), pa.field("schedule", pa.string()), pa.field("trajectory", pa.string()),
    pa.field("batch_size", pa.int64()), pa.field("solver", pa.string()),
    pa.field("t", pa.int64()), pa.field("lambda", pa.float64()),
    pa.field("val_acc", pa.float64()), pa.field("val_loss", pa.float64()),
    pa.field("seconds", pa.float64()), pa.field("source_train_seconds", pa.float64()),
    *PROVENANCE,
])

# ---- Ray engine (ltray.ensemble, ltray.sweep; issue 3) ----------------------------------------------------
_ARCH = [pa.field("dataset", pa.string()), pa.field("model", pa.string()), pa.field("width", pa.int64())]

# One row per ensemble member. kind: "transferred" (transfer to seed, best step, Adam fine-tuning), "full"
# (trained from seed like the source) or "source". Transfer-only columns are null for the other kinds;
# test_acc is the member's final accuracy (after fine-tuning for transferred members).
MEMBERS_SCHEMA = pa.schema([
    *_ARCH, pa.field("kind", pa.string()), pa.field("method", pa.string()), pa.field("seed_source", pa.int64()),
    pa.field("seed", pa.int64()), pa.field("transfer_seed", pa.int64()), pa.field("T", pa.int64()),
    pa.field("best_step", pa.int64()), pa.field("val_acc_transfer", pa.float64()),
    pa.field("test_acc_transfer", pa.float64()), pa.field("test_acc_finetuned", pa.float64()),
    pa.field("test_acc", pa.float64()), pa.field("epochs", pa.int64()), pa.field("lr", pa.float64()),
    pa.field("transfer_seconds", pa.float64()), pa.field("train_seconds", pa.float64()),
    pa.field("seconds", pa.float64()), *PROVENANCE,
])

# One row per ensemble (mean of the members' test softmax). seconds is the total compute of the ensemble:
# its members' seconds plus, for transferred ensembles, the source's training (source_seconds).
ENSEMBLE_SCHEMA = pa.schema([
    *_ARCH, pa.field("kind", pa.string()), pa.field("method", pa.string()), pa.field("size", pa.int64()),
    pa.field("seed_source", pa.int64()), pa.field("seeds", pa.string()), pa.field("test_acc", pa.float64()),
    pa.field("member_acc_mean", pa.float64()), pa.field("member_acc_std", pa.float64()),
    pa.field("epochs_per_member", pa.int64()), pa.field("source_seconds", pa.float64()),
    pa.field("seconds", pa.float64()), *PROVENANCE,
])

# One row per Tune trial: the searched parameters, every metric, and which one was the objective.
SWEEP_SCHEMA = pa.schema([
    pa.field("trial_id", pa.string()), pa.field("status", pa.string()), *_ARCH,
    pa.field("seed_source", pa.int64()), pa.field("seed_target", pa.int64()),
    pa.field("T", pa.int64()), pa.field("batch_size", pa.int64()), pa.field("schedule", pa.string()),
    pa.field("method", pa.string()), pa.field("finetune_lr", pa.float64()), pa.field("finetune_epochs", pa.int64()),
    pa.field("objective", pa.string()), pa.field("objective_value", pa.float64()),
    pa.field("best_val_acc", pa.float64()), pa.field("final_val_acc", pa.float64()), pa.field("best_step", pa.int64()),
    pa.field("finetuned_val_acc", pa.float64()), pa.field("transfer_seconds", pa.float64()),
    pa.field("seconds", pa.float64()), pa.field("error", pa.string()), *PROVENANCE,
])


# ---- analyses (ltray.analysis, ltray.landscape; issue 4) -----------------------------------------------
# scenario: "random" (both inits random) or "pretrained" (both inits pre-trained on pretrain_dataset with
# pretrain_classes, source fine-tuned on dataset/classes with a fresh head). classes are "5,6,7,8,9" or null.
_SCENARIO = [pa.field("scenario", pa.string()), pa.field("dataset", pa.string()), pa.field("classes", pa.string()),
             pa.field("pretrain_dataset", pa.string()), pa.field("pretrain_classes", pa.string()),
             pa.field("model", pa.string()), pa.field("width", pa.int64()),
             pa.field("source_lr", pa.float64()),    # lr of the source's training (its fine-tuning if pre-trained)
             pa.field("seed_source", pa.int64()), pa.field("seed_target", pa.int64())]

# One row per (method, t) of a transfer; ablations vary schedule / trajectory.
SCENARIO_TRANSFER_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("method", pa.string()), pa.field("T", pa.int64()), pa.field("schedule", pa.string()),
    pa.field("trajectory", pa.string()), pa.field("batch_size", pa.int64()), pa.field("solver", pa.string()),
    pa.field("t", pa.int64()), pa.field("lambda", pa.float64()), pa.field("val_acc", pa.float64()),
    pa.field("val_loss", pa.float64()), pa.field("seconds", pa.float64()),
    pa.field("oracle_agreement", pa.float64()),   # share of units pi_t maps as the Oracle's pi does (t=0: identity)
    *PROVENANCE,
])

# Subsequent training (paper Sec. 4.2): one row per (start, epoch); start is a method or "standard".
SUBSEQUENT_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("start", pa.string()), pa.field("start_step", pa.int64()), pa.field("lr", pa.float64()),
    pa.field("epoch", pa.int64()), pa.field("val_acc", pa.float64()), pa.field("val_loss", pa.float64()),
    pa.field("seconds", pa.float64()), *PROVENANCE,
])

# 1-D landscape: one row per point alpha of the path (1 - alpha) a + alpha b; barrier is the path's loss
# barrier (repeated on its rows). Experiment rows carry scenario, seeds, method and case; CLI rows leave them null.
PATH_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("method", pa.string()), pa.field("case", pa.string()), pa.field("point_a", pa.string()),
    pa.field("point_b", pa.string()), pa.field("split", pa.string()), pa.field("alpha", pa.float64()),
    pa.field("loss", pa.float64()), pa.field("acc", pa.float64()), pa.field("barrier", pa.float64()), *PROVENANCE,
])

# 2-D landscape (Garipov et al. 2018): grid rows have point null; the three anchor points have their label.
PLANE_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("split", pa.string()), pa.field("point", pa.string()), pa.field("u", pa.float64()),
    pa.field("v", pa.float64()), pa.field("loss", pa.float64()), pa.field("acc", pa.float64()), *PROVENANCE,
])


def config_hash(*configs) -> str:
    """A stable 12-hex-digit id of dataclasses / dicts (sha256 of sorted JSON, never Python's salted hash)."""
    plain = [dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c for c in configs]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]


def derive_seed(*parts) -> int:
    """A named, reproducible seed in [0, 2^31) derived from its parts."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def provenance(hash_: str) -> dict:
    import torch

    return {"config_hash": hash_, "ltray_version": __version__, "torch_version": torch.__version__}


def write_parquet(rows: list[dict] | pd.DataFrame, schema: pa.Schema, path: str | os.PathLike) -> Path:
    """Write rows with exactly `schema`'s columns (extra keys are an error) to `path`, atomically."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=schema.names)
    extra = set(df.columns) - set(schema.names)
    if extra:
        raise ValueError(f"columns not in the schema: {sorted(extra)}")
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    path = Path(path)
    tmp = atomic_path(path)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def summarise(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """mean, std and n of `value` per group."""
    return df.groupby(by)[value].agg(mean="mean", std="std", n="count").reset_index()
