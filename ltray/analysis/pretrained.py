"""Pre-trained initialisations (paper Sec. 4.1, lower figures): a body pre-trained on one task plus a fresh,
seeded classifier head for the next task.

How the two heads correspond. The head is the model's last Linear layer (`head_keys`: fc2 of the 2-MLP, fc3 of
Conv8, fc of ResNet-18). Each initial parameter gets its own head, drawn like a fresh model's last layer from
derive_seed("head", seed):  theta_i^0 = (pre-trained body_i, head_i^0).  The head's output axis (the new task's
classes) is not permuted: class k is class k in both models. Its input axis is the last hidden group, which the
permutation spec covers like any other axis, so the transfer moves the head's *delta* with pi:
    head_2^t = head_2^0 + (head_1^t - head_1^0)[:, pi]      (and the body likewise).
Nothing about the heads is matched separately; the same pi that aligns the bodies' hidden units aligns the
columns of the head deltas. The mechanism needs only a trained body of the right architecture, so any pre-trained
pair and any fine-tuning data fit (e.g. ImageNet ResNet-18 bodies -> Cars/CUB, CIFAR-10 Conv8 -> CIFAR-100).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..config import ModelConfig, TrainConfig
from ..core.trajectory import State, Trajectory
from ..data import DataBundle
from ..errors import LtrayError
from ..models import state_of
from ..results import derive_seed
from ..training import train


def head_keys(model: nn.Module) -> tuple[str, ...]:
    """state_dict keys of the classifier head: the parameters of the model's last Linear module."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise LtrayError(f"{type(model).__name__} has no Linear classifier head")
    prefix = linears[-1]
    return tuple(f"{prefix}.{k}" for k, _ in model.get_submodule(prefix).named_parameters())


def fresh_head(model_cfg: ModelConfig, task: DataBundle, seed: int) -> State:
    """The head tensors of a fresh model for `task`, initialised from derive_seed("head", seed)."""
    model = model_cfg.build(task, derive_seed("head", seed))
    state = state_of(model)
    return {k: state[k] for k in head_keys(model)}


def with_head(body: State, head: State, template: nn.Module) -> State:
    """`body` with its head replaced by `head`; checked against `template` (a model for the new task)."""
    keys = set(head_keys(template))
    out = {k: v for k, v in body.items() if k not in keys} | dict(head)
    want = template.state_dict()
    if set(out) != set(want):
        odd = sorted(set(out) ^ set(want))[0]
        raise LtrayError(f"the pre-trained body does not fit the fine-tuning model (tensor {odd!r})")
    for k, v in want.items():
        if tuple(out[k].shape) != tuple(v.shape):
            raise LtrayError(f"the pre-trained body does not fit the fine-tuning model: {k!r} has shape "
                             f"{list(out[k].shape)}, the model needs {list(v.shape)} (same input size?)")
    return {k: out[k] for k in want}  # the template's key order


def pretrain(model_cfg: ModelConfig, pre_data: DataBundle, cfg: TrainConfig, seed: int,
             progress: bool = False) -> Trajectory:
    """Train build(seed) on the pre-training task, data order from `seed`."""
    model = model_cfg.build(pre_data, seed)
    traj = train(model, state_of(model), pre_data.train, cfg, seed, progress, desc=f"pretrain s{seed}")
    traj.meta.update(model=model_cfg.name, width=model_cfg.width, depth=model_cfg.depth, dataset=pre_data.name,
                     classes=list(pre_data.classes) if pre_data.classes else None)
    return traj


def pretrained_init(model_cfg: ModelConfig, pre_data: DataBundle, task: DataBundle, cfg: TrainConfig, seed: int,
                    cache: Callable[[Callable[[], Trajectory]], Trajectory] | None = None,
                    progress: bool = False) -> State:
    """theta^0 of the pre-trained scenario for `seed`: the body pre-trained from `seed` with a fresh head for
    `task`. `cache(make)` may return a stored pre-training trajectory instead of calling make()."""
    make = lambda: pretrain(model_cfg, pre_data, cfg, seed, progress)  # noqa: E731
    body = (cache(make) if cache else make()).state(-1)
    return with_head(body, fresh_head(model_cfg, task, seed), model_cfg.build(task, seed))
