"""Datasets as pre-loaded, normalised tensors, with deterministic train/val/test splits.

Every dataset is decoded once into a uint8 (N, C, H, W) tensor; splits, class subsets and the
``max_train`` cap are computed on index tensors and the pixels are gathered and normalised once
at the end.  Training loops then slice tensors (``batches``) instead of running a per-item PIL
pipeline, which is several times faster for the small models trajectory transfer uses.
"""

from __future__ import annotations

import operator
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ltray.errors import LtrayError

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


@dataclass
class _Raw:
    """One dataset as decoded from disk, before any splitting."""

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor | None  # None: no official test split, hold one out of train
    test_y: torch.Tensor | None
    num_classes: int
    scale: float  # maximum raw pixel value (255, or 16 for digits)


def permute_pixels(bundle: DataBundle, seed: int = 0) -> DataBundle:
    """The same images with their pixel positions shuffled by one seeded permutation (the same for every split
    and channel): a task with the same labels whose spatial features a network pre-trained on the original
    images cannot reuse (permuted MNIST)."""
    h = bundle.image_size
    perm = torch.randperm(h * h, generator=torch.Generator().manual_seed(seed))

    def split(s: Split) -> Split:
        return Split(s.x.flatten(2)[:, :, perm].reshape(s.x.shape).contiguous(), s.y)

    return replace(bundle, train=split(bundle.train), val=split(bundle.val), test=split(bundle.test))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing(name: str, path: Path, what: str) -> LtrayError:
    return LtrayError(
        f"{name}: no dataset files at {path} ({what}); pass --download (download=True) "
        f"to fetch torchvision datasets"
    )


def _root(name: str, data_root: str | os.PathLike | None) -> Path:
    if data_root is None:
        raise LtrayError(f"{name}: needs a data_root (the directory holding the dataset files)")
    return Path(data_root).expanduser()


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no files, no network

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    return _Raw(x, torch.from_numpy(d.target.astype(np.int64)), None, None, 10, 16.0)


_IDX = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}   # torchvision's folder under the data_root


def _read_idx(name: str, path: Path, magic: int, tail: tuple[int, ...]) -> torch.Tensor:
    """One uint8 idx file (LeCun's format: big-endian magic, then the dimensions, then the bytes), checked
    against the magic and the trailing shape `tail` torchvision's MNIST files have."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise LtrayError(f"{name}: cannot read {path}: {_one_line(exc)}") from exc
    ndim = 1 + len(tail)
    head = raw[: 4 * (ndim + 1)].view(">u4") if raw.size >= 4 * (ndim + 1) else np.zeros(0, ">u4")
    if head.size != ndim + 1 or int(head[0]) != magic or tuple(int(d) for d in head[2:]) != tail \
            or raw.size != 4 * (ndim + 1) + int(np.prod(head[1:], dtype=np.int64)):
        raise LtrayError(f"{name}: {path} is not an idx file of shape (n, {', '.join(map(str, tail))})"
                         if tail else f"{name}: {path} is not an idx label file")
    return torch.from_numpy(raw[4 * (ndim + 1):].copy()).reshape(int(head[1]), *tail)


def _load_mnist_like(name: str, root: Path, download: bool) -> _Raw:
    """torchvision's layout (<root>/MNIST/raw/*-ubyte), read here: torchvision is imported only to download."""
    raw = root / _IDX[name] / "raw"
    files = [raw / f"{split}-{kind}" for split in ("train", "t10k") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    if download and not all(f.is_file() for f in files):
        from torchvision import datasets

        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        try:
            for train in (True, False):
                cls(str(root), train=train, download=True)
        except (OSError, RuntimeError) as exc:
            raise LtrayError(f"{name}: download into {root} failed: {_one_line(exc)}") from exc
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise _missing(name, raw, f"missing {', '.join(missing)}")
    parts = []
    for images, labels in (files[:2], files[2:]):
        x, y = _read_idx(name, images, 2051, (28, 28)), _read_idx(name, labels, 2049, ())
        if len(x) != len(y):
            raise LtrayError(f"{name}: {images.name} holds {len(x)} images but {labels.name} {len(y)} labels")
        parts += [x.unsqueeze(1), y.long()]
    return _Raw(*parts, num_classes=10, scale=255.0)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (a dict of lists, bytes and numpy arrays) and nothing else.

    A pickle can name any importable callable; a data_root may come from anywhere, so only the
    globals that numpy array and bytes pickles (Python 2 and 3) need are resolved.
    """

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


# folder, train files, test files, label key, number of classes
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def _read_cifar_batches(name: str, paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                # latin1 decodes Python-2 str keys and keeps numpy's byte buffers intact.
                entry = _ArrayUnpickler(f, encoding="latin1").load()
            entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
            data = np.asarray(entry["data"], dtype=np.uint8)
            labels = np.asarray(entry[label_key], dtype=np.int64)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, KeyError, TypeError,
                ValueError) as exc:
            raise LtrayError(f"{name}: cannot read {path}: {_one_line(exc)}") from exc
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
            raise LtrayError(
                f"{name}: {path} has data {data.shape} and labels {labels.shape}, expected (n, 3072), (n,)"
            )
        xs.append(data)
        ys.append(labels)
    # Rows are stored channel-planar (R plane, G plane, B plane), i.e. already CHW.
    x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(np.concatenate(ys))


def _load_cifar(name: str, root: Path, download: bool) -> _Raw:
    folder, train_files, test_files, label_key, num_classes = _CIFAR[name]
    base = root / folder
    if download and not all((base / f).is_file() for f in train_files + test_files):
        # torchvision downloads, verifies the archive's MD5 and extracts; its loader also insists on
        # the official files' MD5s, so reading is done below, by one reader for every copy.
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:
            cls(str(root), train=False, download=True)
        except (OSError, RuntimeError) as exc:
            raise LtrayError(f"{name}: download into {root} failed: {_one_line(exc)}") from exc
    missing = [f for f in train_files + test_files if not (base / f).is_file()]
    if missing:
        raise _missing(name, base, f"missing {', '.join(missing)}")
    train_x, train_y = _read_cifar_batches(name, [base / f for f in train_files], label_key)
    test_x, test_y = _read_cifar_batches(name, [base / f for f in test_files], label_key)
    return _Raw(train_x, train_y, test_x, test_y, num_classes, 255.0)


def _read_images(
    name: str, folder: Path, class_names: list[str], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image
    from torchvision import datasets
    from torchvision.transforms import functional as TF

    try:
        # Only to list files (torchvision's extension rules and class order); images are decoded below.
        found = datasets.ImageFolder(str(folder), loader=lambda p: p)
    except (FileNotFoundError, OSError) as exc:
        raise LtrayError(f"{name}: no images under {folder}: {_one_line(exc)}") from exc
    unknown = sorted(set(found.classes) - set(class_names))
    if unknown:
        raise LtrayError(f"{name}: {folder} has classes not in train/: {', '.join(unknown)}")
    index = {c: i for i, c in enumerate(class_names)}  # train's order, even where test/ lacks a class
    images, labels = [], []
    for path, label in found.samples:
        try:
            with Image.open(path) as img:
                img = TF.center_crop(TF.resize(img.convert("RGB"), size), size)
                images.append(TF.pil_to_tensor(img))
        except OSError as exc:
            raise LtrayError(f"{name}: cannot read image {path}: {_one_line(exc)}") from exc
        labels.append(index[found.classes[label]])
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _load_imagefolder(name: str, root: Path, size: int) -> _Raw:
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        raise LtrayError(f"{name}: expected {train_dir}/<class>/<image> files; {train_dir} is not a directory")
    class_names = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    train_x, train_y = _read_images(name, train_dir, class_names, size)
    test_x = test_y = None
    if test_dir.is_dir():
        test_x, test_y = _read_images(name, test_dir, class_names, size)
    return _Raw(train_x, train_y, test_x, test_y, len(class_names), 255.0)


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
        raw = _load_digits()
    elif key in ("mnist", "fashion-mnist"):
        raw = _load_mnist_like(key, _root(key, data_root), download)
    elif key in _CIFAR:
        raw = _load_cifar(key, _root(key, data_root), download)
    else:
        raw = _load_imagefolder(key, _root(key, data_root), image_size or 64)
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
