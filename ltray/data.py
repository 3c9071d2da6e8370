"""Datasets as pre-loaded, normalised tensors, with deterministic train/val/test splits.

Every dataset is decoded once (ltray.readers) into a uint8 (N, C, H, W) tensor; splits, class subsets and the
``max_train`` cap are computed on index tensors and the pixels are gathered and normalised once
at the end.  Training loops then slice tensors (``batches``) instead of running a per-item PIL
pipeline, which is several times faster for the small models trajectory transfer uses.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ltray.errors import LtrayError
from ltray.readers import data_root_of, load_cifar, load_digits, load_imagefolder, load_mnist_like

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")

# Usual per-channel constants, so runs are comparable with the literature (and with each other
# regardless of split_seed or class subset).  digits has no customary constants: it uses the
# training split's own statistics.
_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}
_HOLDOUT_FRACTION = 0.2  # test share carved out of datasets that ship without a test split


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # float32, (n, C, H, W), already normalised
    y: torch.Tensor  # int64, (n,)

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int  # H == W
    classes: tuple[int, ...] | None  # original label ids kept, when a subset was asked for


def permute_pixels(bundle: DataBundle, seed: int = 0) -> DataBundle:
    """The same images with their pixel positions shuffled by one seeded permutation (the same for every split
    and channel): a task with the same labels whose spatial features a network pre-trained on the original
    images cannot reuse (permuted MNIST)."""
    h = bundle.image_size
    perm = torch.randperm(h * h, generator=torch.Generator().manual_seed(seed))

    def split(s: Split) -> Split:
        return Split(s.x.flatten(2)[:, :, perm].reshape(s.x.shape).contiguous(), s.y)

    return replace(bundle, train=split(bundle.train), val=split(bundle.val), test=split(bundle.test))


def _check_classes(classes: Sequence[int], num_classes: int, name: str) -> list[int]:
    try:
        ids = [operator.index(c) for c in classes]
    except TypeError as exc:
        raise LtrayError(f"{name}: classes must be integer label ids, got {list(classes)!r}") from exc
    if not ids:
        raise LtrayError(f"{name}: classes is empty")
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad:
        raise LtrayError(f"{name}: class ids {bad} out of range 0..{num_classes - 1}")
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise LtrayError(f"{name}: class ids {dup} given more than once")
    return ids


def _normalised(x: torch.Tensor, scale: float, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return x.float().div_(scale).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def load_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    classes: Sequence[int] | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    image_size: int | None = None,
    max_train: int | None = None,
) -> DataBundle:
    """Load ``name`` into memory as normalised train/val/test tensors (see module docstring)."""
    key = name.strip().lower()
    if key not in DATASETS:
        raise LtrayError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise LtrayError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if image_size is not None and image_size < 1:
        raise LtrayError(f"image_size must be positive, got {image_size}")
    if max_train is not None and max_train < 1:
        raise LtrayError(f"max_train must be positive, got {max_train}")

    if key == "digits":
        raw = load_digits()
    elif key in ("mnist", "fashion-mnist"):
        raw = load_mnist_like(key, data_root_of(key, data_root), download)
    elif key in ("cifar10", "cifar100"):
        raw = load_cifar(key, data_root_of(key, data_root), download)
    else:
        raw = load_imagefolder(key, data_root_of(key, data_root), image_size or 64)
    if raw.train_y.numel() and not 0 <= int(raw.train_y.min()) <= int(raw.train_y.max()) < raw.num_classes:
        raise LtrayError(f"{key}: labels outside 0..{raw.num_classes - 1} in the training files")

    # One generator drives every random choice, so split_seed alone fixes the splits.
    gen = torch.Generator().manual_seed(split_seed)
    pool = torch.arange(len(raw.train_y))
    if raw.test_x is None:
        pool = pool[torch.randperm(len(pool), generator=gen)]
        n_test = round(_HOLDOUT_FRACTION * len(pool))
        test_idx, pool = pool[:n_test], pool[n_test:]
        raw.test_x, raw.test_y = raw.train_x, raw.train_y  # test indexes the same tensors
    else:
        test_idx = torch.arange(len(raw.test_y))
    pool = pool[torch.randperm(len(pool), generator=gen)]
    n_val = round(val_fraction * len(pool))
    val_idx, train_idx = pool[:n_val], pool[n_val:]

    # Subsets are taken after splitting, so an example lands in the same split whatever
    # classes are asked for.
    relabel = torch.arange(raw.num_classes)
    num_classes = raw.num_classes
    if classes is not None:
        ids = _check_classes(classes, raw.num_classes, key)
        relabel = torch.full((raw.num_classes,), -1, dtype=torch.int64)
        relabel[torch.tensor(ids)] = torch.arange(len(ids))
        train_idx = train_idx[relabel[raw.train_y[train_idx]] >= 0]
        val_idx = val_idx[relabel[raw.train_y[val_idx]] >= 0]
        test_idx = test_idx[relabel[raw.test_y[test_idx]] >= 0]
        num_classes = len(ids)

    if key in _MEAN_STD:
        mean, std = (torch.tensor(v) for v in _MEAN_STD[key])
    else:  # statistics of the (uncapped) training split, so max_train does not shift the inputs
        sample = raw.train_x[train_idx].float().div_(raw.scale)
        mean = sample.mean(dim=(0, 2, 3))
        std = sample.std(dim=(0, 2, 3)).clamp_min(1e-6)

    # The cap keeps a random subset: train_idx is still in permuted order here.
    if max_train is not None:
        train_idx = train_idx[:max_train]

    def make(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, split: str) -> Split:
        if len(idx) == 0:
            raise LtrayError(f"{key}: the {split} split is empty (too few examples for these classes)")
        idx = idx.sort().values  # memory order: cheaper gathers, and batches() shuffles anyway
        xs = _normalised(x[idx], raw.scale, mean, std)
        if image_size is not None and xs.shape[-1] != image_size:
            # Fixed-size datasets: resample the pre-loaded tensors (bilinear is linear, so doing it
            # after normalisation is equivalent).  imagefolder was already decoded at image_size.
            xs = F.interpolate(
                xs, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return Split(xs.contiguous(), relabel[y[idx]].contiguous())

    train = make(raw.train_x, raw.train_y, train_idx, "train")
    val = make(raw.train_x, raw.train_y, val_idx, "val")
    test = make(raw.test_x, raw.test_y, test_idx, "test")
    return DataBundle(
        name=key,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        in_channels=int(train.x.shape[1]),
        image_size=int(train.x.shape[-1]),
        classes=tuple(int(c) for c in classes) if classes is not None else None,
    )


def batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator | None,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` minibatches of ``split``, in a fresh random order per call when ``shuffle``."""
    if batch_size < 1:
        raise LtrayError(f"batch_size must be positive, got {batch_size}")
    n = len(split)
    stop = n - n % batch_size if drop_last else n
    if not shuffle:
        for start in range(0, stop, batch_size):  # plain slices: views, no copy
            yield split.x[start : start + batch_size], split.y[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator)
    if split.x.device.type != "cpu":
        order = order.to(split.x.device)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]
