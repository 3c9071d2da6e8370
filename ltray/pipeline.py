"""The unit of work behind `ltray train` / `ltray transfer` (and the Ray fan-out): configs as frozen
dataclasses, a source trainer, and one seed pair's transfer with every requested method."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch

from . import __version__
from .data import DATASETS, DataBundle, load_dataset
from .errors import LtrayError
from .models import DEFAULT_WIDTH, MODELS, build_model, state_of
from .symmetry import spec_for
from .train import TrainConfig, train
from .trajectory import Layout, Trajectory
from .transfer import METHODS, TransferConfig, TransferResult, transfer


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str | None = None
    download: bool = False
    classes: tuple[int, ...] | None = None
    max_train: int | None = None
    split_seed: int = 0

    def load(self) -> DataBundle:
        return load_dataset(self.name, self.root, download=self.download, classes=self.classes,
                            split_seed=self.split_seed, max_train=self.max_train)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    width: int | None = None
    depth: int = 1

    def build(self, data: DataBundle, seed: int) -> torch.nn.Module:
        return build_model(self.name, data.num_classes, data.in_channels, data.image_size, self.width, seed,
                           depth=self.depth)


# Paper settings (Appendix B.3) per dataset; `digits` is ltray's embedded offline default.
PRESETS: dict[str, dict] = {
    "digits": dict(model=ModelConfig("mlp", 512), train=TrainConfig(epochs=20, lr=0.1), T=10),
    "mnist": dict(model=ModelConfig("mlp", 4096), train=TrainConfig(epochs=10, lr=0.01), T=10),
    "fashion-mnist": dict(model=ModelConfig("mlp", 4096), train=TrainConfig(epochs=10, lr=0.01), T=10),
    "cifar10": dict(model=ModelConfig("conv8", 64),
                    train=TrainConfig(epochs=60, lr=0.05, weight_decay=1e-4, cosine=True), T=30, batch_size=256),
    "cifar100": dict(model=ModelConfig("conv8", 64),
                     train=TrainConfig(epochs=30, lr=0.05, weight_decay=1e-4, cosine=True), T=30),
    "imagefolder": dict(model=ModelConfig("resnet18", 64),
                        train=TrainConfig(epochs=30, lr=0.1, weight_decay=1e-4, cosine=True), T=30,
                        batch_size=1280, bn_samples=256),
}


def check_names(dataset: str, model: str | None = None, methods: tuple[str, ...] = ()) -> None:
    if dataset not in DATASETS:
        raise LtrayError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if model is not None and model not in MODELS:
        raise LtrayError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise LtrayError(f"unknown transfer method {bad[0]!r}; known: {', '.join(METHODS)}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_source(data: DataBundle, data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 seed: int, device: str = "cpu", progress: bool = True) -> Trajectory:
    """Train a source from build_model(seed=seed); the data order is drawn from the same seed."""
    model = model_cfg.build(data, seed).to(device)
    traj = train(model, state_of(model), data.train, train_cfg, seed, progress, desc=f"train s{seed}")
    traj.meta.update(model=model_cfg.name, width=_width(model_cfg), depth=model_cfg.depth, dataset=data_cfg.name,
                     classes=list(data_cfg.classes) if data_cfg.classes else None, epochs=train_cfg.epochs,
                     num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size,
                     train_config=asdict(train_cfg), ltray_version=__version__, torch_version=torch.__version__)
    return traj


def _width(model_cfg: ModelConfig) -> int:
    return model_cfg.width if model_cfg.width is not None else DEFAULT_WIDTH[model_cfg.name]


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
    extras: dict = field(default_factory=dict)


def transfer_pair(data: DataBundle, model_cfg: ModelConfig, train_cfg: TrainConfig, transfer_cfg: TransferConfig,
                  methods: tuple[str, ...], source: Trajectory, seed_target: int, device: str = "cpu",
                  progress: bool = False, seed: int | None = None, target: Trajectory | None = None) -> PairOutcome:
    """Transfer `source` onto build_model(seed=seed_target) with each method (same mini-batches for all).

    The oracle needs the actually trained target: `target` when given (trained from the same theta2^0),
    else it is trained here with `train_cfg` (data order from seed_target). Either way its training time is
    part of the oracle's transfer seconds."""
    seed_source = int(source.meta.get("seed", 0))
    model = model_cfg.build(data, seed_target).to(device)
    check_trajectory(source, model)
    spec = spec_for(model)
    theta2_0 = {k: v.to(device) for k, v in state_of(model).items()}
    seq = source.linear(transfer_cfg.T, transfer_cfg.schedule) if transfer_cfg.trajectory == "linear" \
        else source.actual(transfer_cfg.T)
    seed = seed_target if seed is None else seed
    target_final, target_seconds = None, 0.0
    if target is not None:
        check_trajectory(target, model, "target trajectory")
        target_final, target_seconds = target.state(-1, device), float(target.meta.get("train_seconds", 0.0))
    results = {}
    for method in methods:
        extra = 0.0
        if method == "oracle" and target_final is None:
            t0 = time.perf_counter()
            target = train(model, theta2_0, data.train, train_cfg, seed_target, progress, desc=f"target s{seed_target}")
            target_final, target_seconds = target.state(-1, device), time.perf_counter() - t0
        if method == "oracle":
            extra = target_seconds
        results[method] = transfer(method, model, spec, seq, theta2_0, data, transfer_cfg, seed=seed,
                                   target_final=target_final, extra_seconds=extra, progress=progress)
    return PairOutcome(seed_source, seed_target, results, float(source.meta.get("train_seconds", float("nan"))),
                       target_seconds)


def with_preset(dataset: str, **overrides) -> dict:
    """The preset for `dataset` with non-None overrides applied (model width, train fields, T, ...)."""
    preset = dict(PRESETS[dataset])
    for key in ("model", "train"):
        sub = {k: v for k, v in overrides.get(key, {}).items() if v is not None}
        preset[key] = replace(preset[key], **sub)
    preset.update({k: v for k, v in overrides.items() if k not in ("model", "train") and v is not None})
    return preset
