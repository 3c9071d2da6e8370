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
from .core.trajectory import atomic_write

# Where a row came from: the run's id, the code, and where it was computed (results depend on the device and on
# torch's thread count through float summation order).
PROVENANCE = [pa.field("config_hash", pa.string()), pa.field("ltray_version", pa.string()),
              pa.field("torch_version", pa.string()), pa.field("device", pa.string()), pa.field("threads", pa.int64())]

# ---- ensembles and sweeps (ltray.ensemble, ltray.distributed) ------------------------------------------------
_ARCH = [pa.field("dataset", pa.string()), pa.field("model", pa.string()), pa.field("width", pa.int64())]

# One row per ensemble member (ltray.ensemble.members). kind: "source" (a checkpoint of a source run), "full" (trained
# from seed like the source), "snapshot" (a cycle's end in a cyclic-lr run) or "transferred" (the source
# transferred to seed, best step, fine-tuned). epochs: training epochs (fine-tuning epochs when transferred).
# Transfer-only columns are null for the other kinds. Metrics on the test split (ltray.metrics: %, nats, %).
MEMBERS_SCHEMA = pa.schema([
    *_ARCH, pa.field("repeat", pa.int64()), pa.field("kind", pa.string()), pa.field("method", pa.string()),
    pa.field("seed_source", pa.int64()), pa.field("seed", pa.int64()), pa.field("epochs", pa.int64()),
    pa.field("transfer_seed", pa.int64()), pa.field("T", pa.int64()), pa.field("best_step", pa.int64()),
    pa.field("val_acc_transfer", pa.float64()), pa.field("test_acc_transfer", pa.float64()),
    pa.field("test_acc", pa.float64()), pa.field("test_nll", pa.float64()), pa.field("test_ece", pa.float64()),
    pa.field("lr", pa.float64()), pa.field("optimizer", pa.string()), pa.field("transfer_seconds", pa.float64()),
    pa.field("train_seconds", pa.float64()), pa.field("seconds", pa.float64()), pa.field("epochs_eq", pa.float64()),
    pa.field("val_acc", pa.float64()), pa.field("val_nll", pa.float64()), *PROVENANCE,
])

# One row per ensemble (the mean of its members' test softmax; ltray.ensemble). kind: source (one model),
# checkpoint (the source run's last `size` epochs), snapshot (a cyclic-lr run's snapshots), full (independent
# members; every size 1..M), copy (the source fine-tuned M times, no transfer: the control), transferred.
# sources: independent training runs behind it. epochs: per member (fine-tuning epochs for transferred and copy,
# = finetune_epochs; the run's epochs for snapshot and checkpoint). finetune_* and T: the transferred members'
# recipe (null for other kinds); lr: the peak learning rate of trained kinds (null for transferred and copy).
# seconds: the work that made it: source_seconds (its source runs, each counted once) plus its members' own
# seconds; epochs_eq: the same work in passes over the training set (ltray.ensemble.members: deterministic);
# x_full and x_full_eq: seconds and epochs_eq / those of the M-member full ensemble of the same repeat at the
# recipe's epochs, for every row (a single model included), so that every kind is on one scale (NaN without a
# full ensemble). dee: deep-ensemble equivalent (ltray.metrics). val_acc, val_nll: on the validation split;
# temperature, test_nll_ts, test_ece_ts: temperature scaling fitted on validation (ltray.metrics).
ENSEMBLE_SCHEMA = pa.schema([
    *_ARCH, pa.field("repeat", pa.int64()), pa.field("kind", pa.string()), pa.field("method", pa.string()),
    pa.field("size", pa.int64()), pa.field("sources", pa.int64()), pa.field("with_sources", pa.bool_()),
    pa.field("epochs", pa.int64()), pa.field("finetune_epochs", pa.int64()), pa.field("finetune_lr", pa.float64()),
    pa.field("finetune_optimizer", pa.string()), pa.field("T", pa.int64()), pa.field("seeds", pa.string()),
    pa.field("test_acc", pa.float64()), pa.field("test_nll", pa.float64()), pa.field("test_ece", pa.float64()),
    pa.field("disagreement", pa.float64()), pa.field("gain", pa.float64()),
    pa.field("member_acc_mean", pa.float64()), pa.field("member_acc_std", pa.float64()),
    pa.field("member_nll_mean", pa.float64()), pa.field("n_test", pa.int64()),
    pa.field("source_seconds", pa.float64()), pa.field("seconds", pa.float64()),
    pa.field("x_full", pa.float64()), pa.field("lr", pa.float64()), pa.field("epochs_eq", pa.float64()),
    pa.field("x_full_eq", pa.float64()), pa.field("dee", pa.float64()), pa.field("val_acc", pa.float64()),
    pa.field("val_nll", pa.float64()), pa.field("temperature", pa.float64()), pa.field("test_nll_ts", pa.float64()),
    pa.field("test_ece_ts", pa.float64()), *PROVENANCE,
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


# One row per (trained network, epoch) of an experiment that trains its own sources and targets (experiments/cnn.py):
# role "source" or "target" (the Oracle's trained target: same recipe, seed_target), the init (ltray.models.INITS),
# the recipe's lr and weight decay, the validation accuracy/loss of that epoch's checkpoint, and the training's
# wall seconds up to the end of that epoch.
TRAINING_SCHEMA = pa.schema([
    *_ARCH, pa.field("init", pa.string()), pa.field("role", pa.string()), pa.field("seed", pa.int64()),
    pa.field("epoch", pa.int64()), pa.field("lr", pa.float64()), pa.field("weight_decay", pa.float64()),
    pa.field("val_acc", pa.float64()), pa.field("val_loss", pa.float64()), pa.field("seconds", pa.float64()),
    *PROVENANCE,
])

# Where one transfer's wall seconds went (ltray.core.transfer.Profile), one row per (method, seed pair, T,
# trajectory): gradients, cost products, assignment solves, BatchNorm resets, evaluation; the Oracle's seconds
# include its target's training (target_train_seconds), as in TRANSFER_SCHEMA.
PROFILE_SCHEMA = pa.schema([
    *_ARCH, pa.field("init", pa.string()), pa.field("method", pa.string()), pa.field("T", pa.int64()),
    pa.field("trajectory", pa.string()), pa.field("seed_source", pa.int64()), pa.field("seed_target", pa.int64()),
    pa.field("transfer_seconds", pa.float64()), pa.field("source_train_seconds", pa.float64()),
    pa.field("target_train_seconds", pa.float64()), pa.field("gradients", pa.float64()),
    pa.field("cost_products", pa.float64()), pa.field("solves", pa.float64()), pa.field("bn_reset", pa.float64()),
    pa.field("evaluation", pa.float64()), pa.field("gradient_pairs", pa.int64()), *PROVENANCE,
])


# ---- transfers, analyses (ltray.runs, ltray.analysis) -------------------------------------------------------
# One meaning per column whoever writes it: every writer takes them from ltray.runs.task_columns.
# scenario: "random" (both inits random) or "pretrained" (both inits pre-trained on pretrain_dataset with
# pretrain_classes, source fine-tuned on dataset/classes with a fresh head). classes are "5,6,7,8,9" or null.
# dataset: the task's DataConfig name ("mnist"), or that name + "-permuted" ("mnist-permuted") for the task with
# its pixel positions shuffled (ltray.data.permute_pixels): another task, so `df.dataset == "mnist"` never mixes
# the two. width: the built model's width, its default resolved (ltray.models.DEFAULT_WIDTH): never null for
# ltray's models, null only for a model that has none (torchvision:NAME, package.module:factory).
_SCENARIO = [pa.field("scenario", pa.string()), pa.field("dataset", pa.string()), pa.field("classes", pa.string()),
             pa.field("pretrain_dataset", pa.string()), pa.field("pretrain_classes", pa.string()),
             pa.field("model", pa.string()), pa.field("width", pa.int64()),
             pa.field("source_lr", pa.float64()),    # lr of the source's training (its fine-tuning if pre-trained)
             pa.field("seed_source", pa.int64()), pa.field("seed_target", pa.int64())]

# One row per (method, seed pair, step t) of a transfer (`ltray transfer`, the analyses, the experiments), all made
# by ltray.runs.transfer_rows. trajectory: "linear" (theta1^0 to theta1^T on a lambda schedule) or "actual" (the
# source's checkpoints); schedule: the linear trajectory's lambda schedule ("cosine", "uniform"), null for an actual
# one, which has none (older files of `ltray transfer` or experiments/cnn.py may hold the unused setting there);
# seconds: the method's wall time up to and including step t (the Oracle's includes training its target);
# oracle_agreement: share of hidden units pi_t maps as the Oracle's final pi does (null without the Oracle).
TRANSFER_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("method", pa.string()), pa.field("T", pa.int64()), pa.field("schedule", pa.string()),
    pa.field("trajectory", pa.string()), pa.field("batch_size", pa.int64()), pa.field("solver", pa.string()),
    pa.field("t", pa.int64()), pa.field("lambda", pa.float64()), pa.field("val_acc", pa.float64()),
    pa.field("val_loss", pa.float64()), pa.field("seconds", pa.float64()),
    pa.field("source_train_seconds", pa.float64()), pa.field("oracle_agreement", pa.float64()),
    *PROVENANCE,
])

# The cost of one transfer beside its source's training (experiments/reproduce_mnist.py): wall seconds and
# where they went, the first layer's relative movement ||W1^T - W1^0|| / ||W1^0||, accuracies.
COSTS_SCHEMA = pa.schema([
    pa.field("lr", pa.float64()), pa.field("T", pa.int64()), pa.field("schedule", pa.string()),
    pa.field("method", pa.string()), pa.field("seed_source", pa.int64()), pa.field("seed_target", pa.int64()),
    pa.field("transfer_seconds", pa.float64()), pa.field("source_train_seconds", pa.float64()),
    pa.field("fraction_of_training", pa.float64()), pa.field("gradients", pa.float64()),
    pa.field("cost_products", pa.float64()), pa.field("solves", pa.float64()), pa.field("evaluation", pa.float64()),
    pa.field("first_layer_ratio", pa.float64()), pa.field("final_val_acc", pa.float64()),
    pa.field("source_val_acc", pa.float64()),
])

# Subsequent training (paper Sec. 4.2): one row per (start, epoch); start is a method or "standard".
SUBSEQUENT_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("start", pa.string()), pa.field("start_step", pa.int64()), pa.field("lr", pa.float64()),
    pa.field("epoch", pa.int64()), pa.field("val_acc", pa.float64()), pa.field("val_loss", pa.float64()),
    pa.field("seconds", pa.float64()), *PROVENANCE,
])

# Generalisation (paper v2 Fig. 8): training from a transferred or a plain pre-trained start, scored each epoch
# on the task's validation and test splits; start = "<method>" or "standard"; source_pretrain / target_pretrain:
# the share of the pre-training images the source's and the target's bodies saw (source_pretrain null for
# "standard", which has no source).
GENERALISATION_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("start", pa.string()), pa.field("source_pretrain", pa.float64()),
    pa.field("target_pretrain", pa.float64()), pa.field("start_step", pa.int64()), pa.field("lr", pa.float64()),
    pa.field("epoch", pa.int64()), pa.field("val_acc", pa.float64()), pa.field("val_loss", pa.float64()),
    pa.field("test_acc", pa.float64()), pa.field("test_loss", pa.float64()), pa.field("seconds", pa.float64()),
    *PROVENANCE,
])

# 1-D landscape: one row per point alpha of the path (1 - alpha) a + alpha b; barrier is the path's loss
# barrier, barrier_rel the same / the mean end loss, acc_barrier its accuracy barrier in pt (repeated on its rows). Experiment rows carry scenario, seeds, method and case; CLI rows leave them null.
PATH_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("method", pa.string()), pa.field("case", pa.string()), pa.field("point_a", pa.string()),
    pa.field("point_b", pa.string()), pa.field("split", pa.string()), pa.field("alpha", pa.float64()),
    pa.field("loss", pa.float64()), pa.field("acc", pa.float64()), pa.field("barrier", pa.float64()),
    pa.field("barrier_rel", pa.float64()), pa.field("acc_barrier", pa.float64()), *PROVENANCE,
])

# 2-D landscape (Garipov et al. 2018): grid rows have point null; the three anchor points have their label.
PLANE_SCHEMA = pa.schema([
    *_SCENARIO, pa.field("split", pa.string()), pa.field("point", pa.string()), pa.field("u", pa.float64()),
    pa.field("v", pa.float64()), pa.field("loss", pa.float64()), pa.field("acc", pa.float64()), *PROVENANCE,
])


def _plain(value):
    """JSON-able data of configs: dataclass fields (except those marked metadata={"hash": False}), recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.metadata.get("hash", True)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_hash(*configs) -> str:
    """A stable 12-hex-digit id of what determines a result: the configs (dataclasses, dicts; not where the data
    lives) and the ltray version (a release that changes the numbers must not reuse older results). sha256 of
    sorted JSON, never Python's salted hash."""
    plain = [__version__] + [_plain(c) for c in configs]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]


def derive_seed(*parts) -> int:
    """A named, reproducible seed in [0, 2^31) derived from its parts."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def provenance(hash_: str, device: str = "cpu") -> dict:
    """The PROVENANCE columns of a row computed in this process on `device` (threads: torch's thread count now)."""
    import torch

    return {"config_hash": hash_, "ltray_version": __version__, "torch_version": torch.__version__,
            "device": torch.device(device).type, "threads": torch.get_num_threads()}


def write_parquet(rows: list[dict] | pd.DataFrame, schema: pa.Schema, path: str | os.PathLike) -> Path:
    """Write rows with exactly `schema`'s columns to `path`, atomically (a temp file, then a rename). A row with a
    key the schema lacks, or without one of its columns, is an error: nothing is dropped or filled in silently
    (a column that does not apply to a row is given as None where the row is made)."""
    if isinstance(rows, pd.DataFrame):
        problems = [("not in the schema", set(rows.columns) - set(schema.names)),
                    ("missing", set(schema.names) - set(rows.columns))]
        df = rows
    else:
        problems = [(f"not in the schema (row {i})", set(r) - set(schema.names)) for i, r in enumerate(rows)] + \
                   [(f"missing (row {i})", set(schema.names) - set(r)) for i, r in enumerate(rows)]
        df = pd.DataFrame(rows, columns=schema.names)
    for what, columns in problems:
        if columns:
            raise ValueError(f"{Path(path).name}: columns {what}: {sorted(columns)}")
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def summarise(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """mean, std and n of `value` per group."""
    return df.groupby(by)[value].agg(mean="mean", std="std", n="count").reset_index()
