"""The paper's architectures (Appendix B.2): 2-MLP, Conv8 and ResNet-18, seeded, with PyTorch's default init or
the He (Kaiming) init of the paper's text.

Module names are chosen so that `state_dict()` keys read like the architecture; the permutation specs in
`ltray.core.specs` are keyed by exactly these names.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .errors import LtrayError

MODELS = ("mlp", "conv8", "conv8bn", "resnet18")
# "default": PyTorch's own (kaiming_uniform with a = sqrt(5): weight std 1 / sqrt(3 fan_in), uniform biases);
# "kaiming": He et al. 2015, the paper's "standard Kaiming initialization" (B.3.2): normal weights of std
# sqrt(2 / fan_in) (the ReLU gain), zero biases. PyTorch's default shrinks a signal's variance ~6x per ReLU layer:
# on MNIST the 12-layer Conv8 without BatchNorm starts with a constant output and never leaves the majority class
# (11.4 %) at lr 0.01-0.05, where He's init trains it (experiments/results/cnn).
INITS = ("default", "kaiming")
DEFAULT_WIDTH = {"mlp": 4096, "conv8": 64, "conv8bn": 64, "resnet18": 64}


class MLP(nn.Sequential):
    """Flatten -> [Linear -> ReLU] x depth -> Linear. depth=1 is the paper's 2-MLP (Table 1)."""

    def __init__(self, d_in: int, width: int, num_classes: int, depth: int = 1):
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        d = d_in
        for i in range(1, depth + 1):
            layers += [(f"fc{i}", nn.Linear(d, width)), (f"relu{i}", nn.ReLU())]
            d = width
        layers.append((f"fc{depth + 1}", nn.Linear(d, num_classes)))
        super().__init__(OrderedDict(layers))
        self.depth = depth


class Conv8(nn.Module):
    """Table 2 of the paper: 9 conv layers (+ReLU; the paper's text calls Conv8 "8-layered", its table lists 9)
    in 4 pooled stages, then 3 linear layers.

    Channel widths are (1, 1, 2, 2, 4, 4, 8, 8, 8) x `width` (64 in the paper). The last max-pool covers the
    whole remaining map (4x4 for 32x32 inputs), so the classifier sees a plain channel axis. The table's last
    Linear reads "input=512", a typo for 256 (the previous layer's output). With `batchnorm` ("conv8bn"), each
    conv is followed by a BatchNorm2d (conv -> BN -> ReLU), which the paper's Conv8 has not: ltray's BatchNorm
    path (statistics reset after a transfer) on a model small enough for a CPU.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 32, width: int = 64,
                 batchnorm: bool = False):
        super().__init__()
        if image_size < 8:
            raise LtrayError(f"conv8 needs images of at least 8x8 pixels, got {image_size}")
        c = [in_channels] + [width * m for m in (1, 1, 2, 2, 4, 4, 8, 8, 8)]
        self.convs = nn.ModuleList(nn.Conv2d(c[i], c[i + 1], 3, padding=1) for i in range(9))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c[i + 1]) for i in range(9)) if batchnorm else None
        self.last_pool = image_size // 8  # map size left after three 2x2 pools
        self.fc1 = nn.Linear(c[-1], 4 * width)
        self.fc2 = nn.Linear(4 * width, 4 * width)
        self.fc3 = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            x = torch.relu(self.norms[i](x) if self.norms is not None else x)
            if i in (1, 3, 5):
                x = torch.max_pool2d(x, 2)
            elif i == 7:
                x = torch.max_pool2d(x, self.last_pool)
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _resnet18(in_channels: int, num_classes: int, image_size: int, width: int) -> nn.Module:
    import torchvision

    if width != 64:
        raise LtrayError("resnet18 has torchvision's fixed widths; --width is not supported for it")
    model = torchvision.models.resnet18(num_classes=num_classes)
    if image_size <= 64:  # CIFAR stem: 3x3 stride-1 conv, no max-pool, so 32x32 maps are not shrunk to 1x1
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return model


def check_model(name: str, external: bool = True) -> None:
    """The one check of a model name: one of ltray's MODELS or, with `external`, a NAME:factory name (checked
    when built: torchvision:NAME, package.module:factory)."""
    if name in MODELS or (external and ":" in name):
        return
    known = ", ".join(MODELS) + (", torchvision:NAME, package.module:factory" if external else "")
    raise LtrayError(f"unknown model {name!r}; known: {known}")


def check_init(init: str) -> None:
    """The one check of an initialisation name (check_names and reinitialise call it)."""
    if init not in INITS:
        raise LtrayError(f"unknown initialisation {init!r}; known: {', '.join(INITS)}")


def build_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                width: int | None = None, seed: int = 0, depth: int = 1, init: str = "default") -> nn.Module:
    """A freshly initialised model; the same arguments and seed give bit-identical parameters.
    `depth` (number of hidden layers) applies to the MLP only; `init` is one of INITS."""
    check_model(name, external=False)
    width = DEFAULT_WIDTH[name] if width is None else width
    if width < 1 or num_classes < 1:
        raise LtrayError(f"model width and num_classes must be >= 1, got {width} and {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            model = MLP(in_channels * image_size * image_size, width, num_classes, depth)
        elif name in ("conv8", "conv8bn"):
            model = Conv8(in_channels, num_classes, image_size, width, batchnorm=name == "conv8bn")
        else:
            model = _resnet18(in_channels, num_classes, image_size, width)
        reinitialise(model, init)
    return model


def reinitialise(model: nn.Module, init: str) -> nn.Module:
    """Re-draw every Conv/Linear weight (in module order, from the current RNG) with `init`; "default" keeps
    PyTorch's. Normalisation layers keep weight 1 and bias 0 either way."""
    check_init(init)
    if init == "kaiming":
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model


def resolve_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                  width: int | None = None, seed: int = 0, depth: int = 1, init: str = "default") -> nn.Module:
    """A freshly initialised model by name, seeded like build_model: one of MODELS, `torchvision:NAME` (any
    torchvision classifier, random weights), or `package.module:factory`, a callable returning an nn.Module and
    given whichever of num_classes, in_channels and image_size it names (num_classes only when it takes
    **kwargs, as torchvision's builders do). Models other than ltray's get their permutation spec from
    ltray.core.autospec (spec_for). `width` and `depth` apply to ltray's models only; `init` to all (INITS)."""
    check_model(name)
    if ":" not in name:
        return build_model(name, num_classes, in_channels, image_size, width, seed, depth, init)
    source, _, factory_name = name.partition(":")
    if width is not None:
        raise LtrayError(f"--width applies to ltray's own models ({', '.join(MODELS)}), not to {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if source == "torchvision":
            import torchvision

            if factory_name not in torchvision.models.list_models():
                raise LtrayError(f"unknown torchvision model {factory_name!r} (see torchvision.models.list_models())")
            model = torchvision.models.get_model(factory_name, weights=None, num_classes=num_classes)
            if in_channels != 3:    # e.g. MNIST: the stem convolution reads that many channels instead of RGB
                model = _with_stem_channels(model, in_channels, name)
        else:
            model = _call_factory(source, factory_name, dict(num_classes=num_classes, in_channels=in_channels,
                                                             image_size=image_size))
        if isinstance(model, nn.Module):
            reinitialise(model, init)
    if not isinstance(model, nn.Module):
        raise LtrayError(f"{name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _with_stem_channels(model: nn.Module, in_channels: int, name: str) -> nn.Module:
    """`model` with its first convolution (the stem, first in module order in torchvision's classifiers) made
    anew for `in_channels` input channels; names, and so state_dict keys, stay as they are."""
    parent, attr, stem = next(((p, a, m) for p in model.modules() for a, m in p.named_children()
                               if isinstance(m, nn.Conv2d)), (None, None, None))
    if stem is None or stem.groups != 1:
        raise LtrayError(f"{name!r} reads 3-channel images and has no plain stem convolution to take {in_channels}")
    setattr(parent, attr, nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                                    stem.dilation, bias=stem.bias is not None))
    return model


def _call_factory(module_name: str, factory_name: str, available: dict) -> object:
    import importlib
    import inspect

    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except ImportError as e:
        raise LtrayError(f"cannot import {module_name!r}: {e}") from None
    except AttributeError:
        raise LtrayError(f"module {module_name!r} has no {factory_name!r}") from None
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):   # a builtin without a signature: call it bare
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = ("num_classes",) if takes_any else tuple(k for k in available if k in params)
    return factory(**{k: available[k] for k in names})


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state_dict (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
