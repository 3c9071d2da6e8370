"""The one unit of work: train a source, and transfer it to one target initialisation with every requested
method (`transfer_pair`), as TransferResults or as TRANSFER_SCHEMA rows (`pair_rows`). `ltray transfer` (in
process and as Ray tasks), the ensemble's and the sweep's transfers, the analyses (ltray.analysis.scenarios,
which bring their own theta2^0 and trained target) and the experiments go through it (but
experiments/lr001_ablation.py, whose models are not ltray's). Every TRANSFER_SCHEMA row,
whoever transferred, is made by `transfer_rows` from `task_columns`, so that each column has the one meaning
written down in ltray.results."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from . import __version__
from .config import DataConfig, ModelConfig, TrainConfig, TransferConfig
from .core.specs import spec_for
from .core.symmetry import Permutation
from .core.trajectory import Layout, Trajectory
from .core.transfer import TransferResult, transfer
from .data import DataBundle
from .errors import LtrayError
from .models import DEFAULT_WIDTH, state_of
from .training import train


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_source(data: DataBundle, data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 seed: int, device: str = "cpu", progress: bool = True, keep: list[int] | None = None) -> Trajectory:
    """Train a source from build_model(seed=seed); the data order is drawn from the same seed. With `keep`,
    only those epochs' checkpoints are returned (what the transfers need; a Ray task then ships no more)."""
    model = model_cfg.build(data, seed).to(device)
    traj = train(model, state_of(model), data.train, train_cfg, seed, progress, desc=f"train s{seed}")
    traj.meta.update(model=model_cfg.name, width=_width(model_cfg), depth=model_cfg.depth, init=model_cfg.init,
                     dataset=data_cfg.name,
                     classes=list(data_cfg.classes) if data_cfg.classes else None, epochs=train_cfg.epochs,
                     num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size,
                     train_config=asdict(train_cfg), ltray_version=__version__, torch_version=torch.__version__)
    return traj.select(keep) if keep is not None else traj


def recorded_recipe(source: Trajectory, train_cfg: TrainConfig) -> TrainConfig:
    """The recipe `source` was trained with (its file's train_config), the truth for whatever is trained to be
    compared with it (the Oracle's target); `train_cfg` where the file records none, or for fields it lacks."""
    recorded = source.meta.get("train_config") or {}
    known = {f.name for f in fields(TrainConfig)}
    return replace(train_cfg, **{k: v for k, v in recorded.items() if k in known})


def needed_epochs(transfer_cfg: TransferConfig, epochs: int) -> list[int]:
    """The source checkpoints a transfer reads: the first and the last of a linear trajectory, or the T + 1 of
    an actual one."""
    from .core.trajectory import actual_epochs

    if transfer_cfg.trajectory == "linear":
        return [0, epochs]
    return sorted(set(actual_epochs(transfer_cfg.T, epochs).tolist()))


def cached_source(data: DataBundle, data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  seed: int, cache: str | Path | None, device: str = "cpu", progress: bool = True) -> Trajectory:
    """train_source, kept in the folder `cache` (named by a hash of what determines it) and loaded from there
    on later calls; with cache None, simply trained."""
    from .core.trajectory import load_trajectory, save_trajectory
    from .results import config_hash

    if cache is None:
        return train_source(data, data_cfg, model_cfg, train_cfg, seed, device, progress)
    key = config_hash(data_cfg.identity(), model_cfg, train_cfg, {"seed": seed})
    model = model_cfg.name.replace(":", "-") + (str(_width(model_cfg)) if _width(model_cfg) else "")
    path = Path(cache) / f"{data_cfg.name}_{model}_s{seed}_{key}.safetensors"
    if path.exists():
        return load_trajectory(path)
    source = train_source(data, data_cfg, model_cfg, train_cfg, seed, device, progress)
    save_trajectory(source, path)
    return source


def _width(model_cfg: ModelConfig) -> int:
    return model_cfg.width if model_cfg.width is not None else DEFAULT_WIDTH.get(model_cfg.name)


_SPECS: dict = {}   # (model config, data shape) -> spec: derived once per process, not once per seed pair


def model_spec(model_cfg: ModelConfig, model: torch.nn.Module, data: DataBundle):
    """spec_for(model), with a batch of the training data as the example input of a derived spec."""
    key = (model_cfg, data.num_classes, data.in_channels, data.image_size)
    if key not in _SPECS:
        device = next(model.parameters()).device
        _SPECS[key] = spec_for(model, data.train.x[:2].to(device))
    return _SPECS[key]


def check_transfer(data: DataBundle, model_cfg: ModelConfig, transfer_cfg: TransferConfig, train_cfg: TrainConfig,
                   source: Trajectory | None = None, what: str = "--trajectory") -> None:
    """Refuse, before any work, a transfer that cannot run: a model that cannot be built (a misspelt
    torchvision:NAME), a given source of another architecture, a gradient batch larger than the training split,
    an actual trajectory of more steps than the source has epochs."""
    from .core.transfer import check_gradient_batch

    model = model_cfg.build(data, 0)
    if source is not None:
        check_trajectory(source, model, what)
    check_gradient_batch(transfer_cfg, data)
    source_epochs = source.epochs[-1] if source is not None else train_cfg.epochs
    if source is not None and (transfer_cfg.trajectory == "linear" or transfer_cfg.T <= source_epochs):
        source.select(needed_epochs(transfer_cfg, source_epochs))   # the checkpoints it reads: NaN/Inf refused now
    if transfer_cfg.trajectory == "actual" and transfer_cfg.T > source_epochs:
        raise LtrayError(f"an actual trajectory of T={transfer_cfg.T} steps needs a source of at least T epochs, "
                         f"not {source_epochs}; lower --T or use --trajectory-kind linear")


def check_trajectory(traj: Trajectory, model: torch.nn.Module, what: str = "trajectory") -> None:
    """A one-line error when `traj` was not recorded for `model`'s architecture."""
    problem = traj.layout.describe_mismatch(Layout.of(model.state_dict()))
    if problem:
        arch = f"{traj.meta.get('model')} width {traj.meta.get('width')} on {traj.meta.get('dataset')}"
        raise LtrayError(f"{what} is for another architecture ({arch}): {problem}")


@dataclass
class PairOutcome:
    """Everything one seed pair produced: per-method results and the times spent outside transfers."""
    seed_source: int
    seed_target: int
    results: dict[str, TransferResult]
    source_train_seconds: float
    target_train_seconds: float = 0.0


def transfer_pair(data: DataBundle, model_cfg: ModelConfig, train_cfg: TrainConfig, transfer_cfg: TransferConfig,
                  methods: tuple[str, ...], source: Trajectory, seed_target: int, device: str = "cpu",
                  progress: bool = False, seed: int | None = None, target: Trajectory | None = None) -> PairOutcome:
    """Transfer `source` onto theta2^0 with each method (same mini-batches for all): onto target.state(0) when
    `target` is given (the analyses' pre-trained theta2^0), else onto build_model(seed=seed_target).

    The oracle needs the actually trained target: `target` when given, else it is trained here with the
    source's recipe (recorded_recipe: `train_cfg` only where the source records none; data order from
    seed_target). Either way its training time is part of the oracle's transfer seconds."""
    seed_source = int(source.meta.get("seed", 0))
    model = model_cfg.build(data, seed_target).to(device)
    check_trajectory(source, model, "source trajectory")
    spec = model_spec(model_cfg, model, data)
    theta2_0 = {k: v.to(device) for k, v in state_of(model).items()}
    seq = source.linear(transfer_cfg.T, transfer_cfg.schedule) if transfer_cfg.trajectory == "linear" \
        else source.actual(transfer_cfg.T)
    seed = seed_target if seed is None else seed
    target_final, target_seconds = None, 0.0
    if target is not None:
        check_trajectory(target, model, "target trajectory")
        theta2_0 = target.state(0, device)
        target_final, target_seconds = target.state(-1, device), float(target.meta.get("train_seconds", 0.0))
    results = {}
    for method in methods:
        extra = 0.0
        if method == "oracle" and target_final is None:
            t0 = time.perf_counter()
            target = train(model, theta2_0, data.train, recorded_recipe(source, train_cfg), seed_target, progress,
                           desc=f"target s{seed_target}")
            target_final, target_seconds = target.state(-1, device), time.perf_counter() - t0
        if method == "oracle":
            extra = target_seconds
        results[method] = transfer(method, model, spec, seq, theta2_0, data, transfer_cfg, seed=seed,
                                   target_final=target_final, extra_seconds=extra, progress=progress)
    return PairOutcome(seed_source, seed_target, results, float(source.meta.get("train_seconds", float("nan"))),
                       target_seconds)


def oracle_agreement(perm: Permutation, oracle: Permutation) -> float:
    """Fraction of permuted units (all groups together) that `perm` sends where the Oracle's pi does."""
    same = sum(int((perm[g].cpu() == oracle[g].cpu()).sum()) for g in oracle)
    return same / sum(len(p) for p in oracle.values())


def task_columns(data_cfg: DataConfig, model_cfg: ModelConfig, source_lr: float, *,
                 pretrain_data: DataConfig | None = None, task_pixels: str | None = None) -> dict:
    """The scenario columns of every results row (ltray.results._SCENARIO) but the seeds, with the meanings
    written down there: `dataset` is the task's name, with "-permuted" when its pixel positions are shuffled
    (task_pixels "permuted", ltray.data.permute_pixels; checked by ltray.analysis.Scenario),
    `width` the built model's (its default resolved), `scenario` "pretrained" exactly when there is
    `pretrain_data`."""
    def classes(cfg: DataConfig | None) -> str | None:
        return ",".join(map(str, cfg.classes)) if cfg is not None and cfg.classes else None
    return {"scenario": "random" if pretrain_data is None else "pretrained",
            "dataset": data_cfg.name + (f"-{task_pixels}" if task_pixels else ""), "classes": classes(data_cfg),
            "pretrain_dataset": pretrain_data.name if pretrain_data else None,
            "pretrain_classes": classes(pretrain_data), "model": model_cfg.name, "width": _width(model_cfg),
            "source_lr": float(source_lr)}


def transfer_rows(outcome: PairOutcome, task: dict, transfer_cfg: TransferConfig, run_id: str,
                  **extra) -> list[dict]:
    """The TRANSFER_SCHEMA rows of one seed pair, one per (method, step t): the only code that makes them.

    `outcome`: a PairOutcome, or any pair with its seeds, results and source_train_seconds (the analyses'
    ltray.analysis.PairRun); `task`: task_columns(...); the transfer columns come from `transfer_cfg`
    (`schedule` null for an actual trajectory, which has no lambda schedule); provenance from `run_id` and the
    device the results are on; `extra`: columns of a schema that extends TRANSFER_SCHEMA. oracle_agreement
    compares pi_t (the identity at t = 0) with the Oracle's final pi when the Oracle ran."""
    from .results import provenance

    results = outcome.results
    oracle = results["oracle"].perms[-1] if "oracle" in results else None
    cfg = transfer_cfg
    device = next((v.device for r in results.values() for v in r.final.values()), "cpu")
    columns = dict(task, seed_source=outcome.seed_source, seed_target=outcome.seed_target, T=cfg.T,
                   schedule=cfg.schedule if cfg.trajectory == "linear" else None, trajectory=cfg.trajectory,
                   batch_size=cfg.batch_size, solver=cfg.solver, source_train_seconds=outcome.source_train_seconds,
                   **provenance(run_id, device), **extra)
    rows = []
    for result in results.values():
        perms = [{g: torch.arange(len(p)) for g, p in result.perms[0].items()}] + list(result.perms)
        for row, perm in zip(result.rows(), perms):
            agreement = None if oracle is None else oracle_agreement(perm, oracle)
            rows.append(dict(row, oracle_agreement=agreement, **columns))
    return rows


def pair_outcome(data, *, data_cfg, model_cfg, train_cfg, transfer_cfg, methods: tuple[str, ...], source,
                 seed_target: int, run_id: str, device: str = "cpu", progress: bool = False,
                 target: Trajectory | None = None) -> tuple[PairOutcome, list[dict]]:
    """One (source, target) pair transferred with every method: the outcome (results, profiles) and its
    TRANSFER_SCHEMA rows (random-init scenario; source_lr the recipe recorded in the source's file). `target`:
    the Oracle's trained target, when already at hand."""
    from .results import derive_seed

    seed_source = int(source.meta.get("seed", 0))
    outcome = transfer_pair(data, model_cfg, train_cfg, transfer_cfg, methods, source, seed_target, device,
                            progress=progress, seed=derive_seed("transfer", seed_source, seed_target), target=target)
    task = task_columns(data_cfg, model_cfg, recorded_recipe(source, train_cfg).lr)
    return outcome, transfer_rows(outcome, task, transfer_cfg, run_id)


def pair_rows(data, **job) -> list[dict]:
    """pair_outcome's rows alone. The same call runs in-process or as a Ray task (ltray.distributed.engine), so
    both give the same numbers."""
    return pair_outcome(data, **job)[1]


def pairs_rows(data, *, seed_targets: tuple[int, ...], **job) -> list[dict]:
    """pair_rows for several targets of one source in one call (one Ray task: the data, the source, the
    compiled kernels and the derived spec are loaded once for all of them)."""
    return [row for t in seed_targets for row in pair_rows(data, seed_target=t, **job)]
