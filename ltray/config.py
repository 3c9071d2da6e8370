"""The configuration of a run as frozen dataclasses with their defaults, the per-dataset presets, and the one
check of each name (check_names) and resolution of the model (model_config) that every command uses.

One concept, one class: data (DataConfig), model (ModelConfig), source training by SGD (TrainConfig),
fine-tuning a transferred start, i.e. the paper's "subsequent training" (FinetuneConfig) and the transfer
itself (TransferConfig). Each validates itself and raises a one-line LtrayError; the CLI maps flags onto them.
Configurations of one command live with it: the ensemble's Recipe (ltray.ensemble.recipe), the sweep's
SearchSpace (ltray.sweep), Ray's Resources (ltray.distributed.engine) and the analyses' Scenario
(ltray.analysis.scenarios).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .errors import LtrayError

METHODS = ("naive", "oracle", "gmt", "fgmt")   # transfer methods (ltray.core.transfer)
SCHEDULES = ("uniform", "cosine")              # lambda schedules of a linear trajectory (ltray.core.trajectory)
OPTIMIZERS = ("adam", "sgd")                   # fine-tuning optimisers
SWEEP_OBJECTIVES = {"best_val_acc": "best accuracy along the transferred trajectory (t >= 1)",
                    "final_val_acc": "accuracy of the last transferred step theta2^T",
                    "finetuned_val_acc": "accuracy after fine-tuning the best step with Adam (searches finetune_lr)"}


NOT_HASHED = {"hash": False}   # field metadata: where the files are, not what they hold (see results.config_hash)


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str | None = field(default=None, metadata=NOT_HASHED)
    download: bool = field(default=False, metadata=NOT_HASHED)
    classes: tuple[int, ...] | None = None
    max_train: int | None = None
    split_seed: int = 0

    def load(self):
        """The DataBundle (ltray.data.load_dataset)."""
        from .data import load_dataset

        return load_dataset(self.name, self.root, download=self.download, classes=self.classes,
                            split_seed=self.split_seed, max_train=self.max_train)

    def identity(self) -> dict:
        """What determines the data's numbers (not where the files are): the key of cached results."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("hash", True)}


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    width: int | None = None
    depth: int = 1
    init: str = "default"      # ltray.models.INITS: PyTorch's default, or "kaiming" (He, the paper's B.3.2)

    def build(self, data, seed: int):
        """The model named `name` (ltray's, `torchvision:NAME` or `package.module:factory`; see
        ltray.models.resolve_model) for `data`'s classes and image shape, initialised from `seed`."""
        from .models import resolve_model

        return resolve_model(self.name, data.num_classes, data.in_channels, data.image_size, self.width, seed,
                             depth=self.depth, init=self.init)


@dataclass(frozen=True)
class TrainConfig:
    """Source training (paper B.3.2): SGD with momentum; optional cosine annealing and linear warm-up.

    cycles > 1 is a snapshot-ensemble run (Huang et al. 2017): the learning rate is cosine-annealed from lr
    to 0 over each of `cycles` equal spans of epochs, restarting at lr; the checkpoints at the end of the spans
    are the snapshots."""
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    cosine: bool = False
    warmup_epochs: int = 0
    cycles: int = 1

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise LtrayError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise LtrayError(f"learning rate must be > 0, got {self.lr}")
        if self.cycles < 1 or self.epochs % self.cycles:
            raise LtrayError(f"a cyclic schedule needs epochs divisible by cycles >= 1, got {self.epochs} epochs "
                             f"and {self.cycles} cycles")
        if self.cycles > 1 and self.warmup_epochs:
            raise LtrayError("a cyclic (snapshot) schedule has no warm-up; set warmup_epochs to 0")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning a transferred start, the paper's subsequent training (Sec. 4.2, B.3.4: Adam at lr 1e-4 for
    10 epochs). optimizer "sgd" uses momentum 0.9; the learning rate is constant, so the state after e epochs
    does not depend on how many epochs follow."""
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 128
    optimizer: str = "adam"

    def __post_init__(self):
        if self.epochs < 0 or not self.lr > 0 or self.batch_size < 1:
            raise LtrayError(f"fine-tuning needs epochs >= 0, lr > 0 and batch size >= 1, got {self.epochs}, "
                             f"{self.lr} and {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise LtrayError(f"unknown fine-tuning optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


@dataclass(frozen=True)
class TransferConfig:
    """Hyper-parameters of a transfer (paper B.3.3); defaults are the paper's MNIST setting."""
    T: int = 10
    schedule: str = "cosine"          # lambda schedule of the linear trajectory
    trajectory: str = "linear"        # "linear" [theta^0 : theta^T] or "actual" checkpoints
    batch_size: int = 128             # B: samples per gradient (a multiple of loader_batch_size is fine)
    loader_batch_size: int = 128      # chunk in which a gradient batch is computed
    bn_samples: int = 256             # B': samples over which BatchNorm statistics are reset before each
    #                                   evaluation of a transferred state (BN models only; gradients use batch stats)
    solver: str = "auto"              # assignment solver, see ltray.lap (auto: fastest exact one)
    max_iter: int = 100               # coordinate-descent sweeps per solve

    def __post_init__(self):
        from .lap import check_solver

        if self.T < 1:
            raise LtrayError(f"trajectory length T must be >= 1, got {self.T}")
        if self.batch_size < 1 or self.loader_batch_size < 1 or self.bn_samples < 1:
            raise LtrayError(f"batch sizes must be >= 1, got B={self.batch_size}, loader={self.loader_batch_size}, "
                             f"B'={self.bn_samples}")
        if self.schedule not in SCHEDULES:
            raise LtrayError(f"unknown lambda schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.trajectory not in ("linear", "actual"):
            raise LtrayError(f"unknown trajectory kind {self.trajectory!r}; known: linear, actual")
        check_solver(self.solver)


# Per dataset (paper Appendix B.3 where the paper uses the dataset): the model, the source's training and T;
# `digits` is ltray's offline default. `note` says where a preset departs from the paper or is not in it.
PRESETS: dict[str, dict] = {
    "digits": dict(model=ModelConfig("mlp", 512), train=TrainConfig(epochs=20, lr=0.1), T=10,
                   note="not in the paper: scikit-learn's bundled 8x8 digits, for offline runs"),
    "mnist": dict(model=ModelConfig("mlp", 4096), train=TrainConfig(epochs=10, lr=0.01), T=10),
    "fashion-mnist": dict(model=ModelConfig("mlp", 4096), train=TrainConfig(epochs=10, lr=0.01), T=10,
                          note="not in the paper: MNIST's recipe, on Fashion-MNIST"),
    "cifar10": dict(model=ModelConfig("conv8", 64),
                    train=TrainConfig(epochs=60, lr=0.05, weight_decay=1e-4, cosine=True), T=30, batch_size=256),
    "cifar100": dict(model=ModelConfig("conv8", 64),
                     train=TrainConfig(epochs=30, lr=0.05, weight_decay=1e-4, cosine=True), T=30,
                     note="the paper fine-tunes a Conv8 pre-trained on CIFAR-10 on a 10-class subset of CIFAR-100; "
                          "this preset trains from a random initialisation on all 100 classes unless --classes "
                          "picks a subset (the pre-trained scenario: ltray.analysis.pretrained)"),
    "imagefolder": dict(model=ModelConfig("resnet18", 64),
                        train=TrainConfig(epochs=30, lr=0.1, weight_decay=1e-4, cosine=True), T=30,
                        batch_size=1280, bn_samples=256,
                        note="the paper fine-tunes an ImageNet-pre-trained ResNet-18 on Cars/CUB; this preset "
                             "trains from a random initialisation"),
}


def check_names(dataset: str | None = None, model: str | None = None, methods: tuple[str, ...] = (),
                init: str | None = None) -> None:
    """One-line errors for an unknown dataset, model, transfer method or initialisation: the one check of each
    name, for the commands, the analyses and the API (a model's is ltray.models.check_model, which the builders
    call too). Checked when a command runs, not when a config is made: presets are made at import, and `--help`
    must not load torch."""
    from .data import DATASETS
    from .models import check_init, check_model

    if dataset is not None and dataset not in DATASETS:
        raise LtrayError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if model is not None:
        check_model(model)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise LtrayError(f"unknown transfer method {bad[0]!r}; known: {', '.join(METHODS)}")
    if init is not None:
        check_init(init)


def model_config(dataset: str, name: str | None = None, width: int | None = None, depth: int | None = None,
                 init: str | None = None, header: dict | None = None) -> ModelConfig:
    """The model a command builds, resolved the same way by every command: each of name, width, depth and init
    from the command line, else from the header of the file given (what its source was trained as; width, depth
    and init only when it names the same model), else from the dataset's preset (its width only for the preset's
    own model: another model keeps its own default width, ltray.models.DEFAULT_WIDTH)."""
    preset, header = PRESETS[dataset]["model"], header or {}
    name = name or header.get("model") or preset.name
    recorded = header if header.get("model", name) == name else {}
    fallback = preset if name == preset.name else ModelConfig(name)

    def pick(key: str, given):
        return next((v for v in (given, recorded.get(key), getattr(fallback, key)) if v is not None), None)

    return ModelConfig(name, pick("width", width), pick("depth", depth), pick("init", init))


def with_preset(dataset: str, **overrides) -> dict:
    """The preset for `dataset` with non-None overrides applied (model width, train fields, T, ...)."""
    preset = dict(PRESETS[dataset])
    for key in ("model", "train"):
        sub = {k: v for k, v in overrides.get(key, {}).items() if v is not None}
        preset[key] = replace(preset[key], **sub)
    preset.update({k: v for k, v in overrides.items() if k not in ("model", "train") and v is not None})
    return preset
