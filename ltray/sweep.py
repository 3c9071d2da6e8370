"""What a sweep over a transfer's hyper-parameters is, as data and pure functions: the search space (`SearchSpace`),
one trial (`evaluate_config`: a configuration in, its metrics out), and the sweep's id. The command, `ltray sweep`,
is ltray.cli.sweep; the trials run as Ray Tune trials through ltray.distributed.search.

Tune searches T, the gradient batch size B, the lambda schedule and the method (plus the fine-tuning lr when the
objective fine-tunes) for one source trajectory and one target initialisation, so trials differ only in their
configuration.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from .errors import LtrayError


@dataclass(frozen=True)
class SearchSpace:
    """Choices per parameter (sampled uniformly); finetune_lr is a log-uniform (low, high) range."""
    T: tuple[int, ...] = (5, 10, 20)
    batch_size: tuple[int, ...] = (64, 128, 256)
    schedule: tuple[str, ...] = ("uniform", "cosine")
    method: tuple[str, ...] = ("gmt", "fgmt")
    finetune_lr: tuple[float, float] = (1e-5, 1e-3)

    def __post_init__(self):
        from .config import METHODS, SCHEDULES

        for f in fields(self):
            values = getattr(self, f.name)
            if not isinstance(values, tuple) or not values:
                raise LtrayError(f"search space: {f.name} needs at least one value, got {values!r}")
        for name in ("T", "batch_size"):
            bad = [v for v in getattr(self, name) if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad:
                raise LtrayError(f"search space: {name} takes integers >= 1, got {bad[0]!r}")
        for name, known in (("schedule", SCHEDULES), ("method", METHODS)):
            bad = [v for v in getattr(self, name) if v not in known]
            if bad:
                raise LtrayError(f"search space: unknown {name} {bad[0]!r}; known: {', '.join(known)}")
        lr = self.finetune_lr
        if len(lr) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lr) \
                or not 0 < lr[0] <= lr[1]:
            raise LtrayError(f"search space: finetune_lr is a range [low, high] with 0 < low <= high, got {list(lr)}")

    @classmethod
    def parse(cls, file: str | None = None, **flags: str | None) -> "SearchSpace":
        """From a small JSON/YAML file ({"T": [5, 10], "method": ["fgmt"], "finetune_lr": [1e-5, 1e-3]}) and/or
        comma-separated flags (which override the file); everything else keeps its default."""
        values: dict = {}
        if file:
            values = _read_space_file(file)
        for name, text in flags.items():
            if text is not None:
                values[name] = [v.strip() for v in text.split(",") if v.strip()]
        typed = {"T": int, "batch_size": int, "finetune_lr": float, "schedule": str, "method": str}
        out = {}
        for name, raw in values.items():
            if name not in typed:
                raise LtrayError(f"search space: unknown parameter {name!r}; known: {', '.join(typed)}")
            raw = raw if isinstance(raw, list) else [raw]
            try:
                out[name] = tuple(typed[name](v) if isinstance(v, str) else v for v in raw)
            except ValueError:
                raise LtrayError(f"search space: {name} values must be {typed[name].__name__}, got {raw}") from None
        return cls(**out)

    def sample(self, n: int, seed: int, finetune: bool) -> list[dict]:
        """n configurations drawn independently per parameter (uniform choices, log-uniform finetune_lr) from
        numpy's generator seeded with `seed`: the sweep's trials, reproducible and listed before it starts."""
        rng = np.random.default_rng(seed)
        configs = []
        for _ in range(n):
            config = {name: getattr(self, name)[rng.integers(len(getattr(self, name)))]
                      for name in ("T", "batch_size", "schedule", "method")}
            config = {k: v.item() if isinstance(v, np.generic) else v for k, v in config.items()}
            if finetune:
                low, high = np.log(self.finetune_lr)
                config["finetune_lr"] = float(np.exp(rng.uniform(low, high)))
            configs.append(config)
        return configs

    def choices(self) -> dict[str, list]:
        """The parameters sampled uniformly from a list, as Tune's param_space takes them."""
        return {name: list(getattr(self, name)) for name in ("T", "batch_size", "schedule", "method")}

    def log_ranges(self, finetune: bool) -> dict[str, tuple[float, float]]:
        """The parameters sampled log-uniformly from a (low, high) range: finetune_lr when the objective fine-tunes."""
        return {"finetune_lr": self.finetune_lr} if finetune else {}


def _read_space_file(path: str) -> dict:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise LtrayError(f"search space file {path}: {e.strerror}") from None
    try:  # JSON is YAML; safe_load builds plain data only, never code
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LtrayError(f"search space file {path} is not valid JSON/YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise LtrayError(f"search space file {path} must hold a mapping of parameter -> values")
    return values


# ---- one trial (pure: runs in-process in tests, or inside a Tune trial) -----------------------------------------

def evaluate_config(data, source, config: dict, *, model_cfg, train_cfg, transfer_cfg, finetune_epochs: int,
                    seed_target: int, device: str = "cpu") -> dict:
    """Transfer `source` onto build_model(seed_target) with one sampled configuration; all the metrics (one Tune
    trial's, through ltray.distributed.search, or here in this process)."""
    import time

    import torch

    from .results import derive_seed
    from .runs import transfer_pair
    from .training import finetune

    t0 = time.perf_counter()
    cfg = replace(transfer_cfg, T=int(config["T"]), batch_size=int(config["batch_size"]), schedule=config["schedule"])
    method = config["method"]
    seed_source = int(source.meta.get("seed", 0))
    result = transfer_pair(data, model_cfg, train_cfg, cfg, (method,), source, seed_target, device,
                           seed=derive_seed("transfer", seed_source, seed_target)).results[method]
    metrics = dict(best_val_acc=result.val_acc[result.best_step], final_val_acc=result.val_acc[-1],
                   best_step=result.best_step, transfer_seconds=result.seconds[-1], finetuned_val_acc=None)
    if "finetune_lr" in config:
        model = model_cfg.build(data, seed_target).to(device)
        _, history = finetune(model, result.best, data.train, data.val, finetune_epochs, float(config["finetune_lr"]),
                              seed=derive_seed("finetune", seed_source, seed_target))
        metrics["finetuned_val_acc"] = history[-1]["val_acc"]
    metrics.update(seconds=time.perf_counter() - t0, device=torch.device(device).type, threads=torch.get_num_threads())
    return metrics


# ---- the setup a sweep saves (DIR/sweep.json) ----------------------------------------------------------------

def configs_of(setup: dict):
    """The four configurations of a sweep's setup (as saved in DIR/sweep.json)."""
    from .config import DataConfig, ModelConfig, TrainConfig, TransferConfig

    d = dict(setup["data_cfg"], classes=tuple(setup["data_cfg"]["classes"]) if setup["data_cfg"]["classes"] else None)
    return (DataConfig(**d), ModelConfig(**setup["model_cfg"]), TrainConfig(**setup["train_cfg"]),
            TransferConfig(**setup["transfer_cfg"]))


def run_id(setup: dict) -> str:
    """The sweep's id: its configuration, where its data and Tune's state live excepted."""
    from .results import config_hash

    rest = {k: v for k, v in setup.items()   # the given trajectory counts by its content (its digest), not its path
            if k not in ("storage", "trajectory", "data_cfg", "model_cfg", "train_cfg", "transfer_cfg")}
    return config_hash(*configs_of(setup), rest)
