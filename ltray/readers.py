"""Readers of datasets' on-disk formats, each into one uint8 (N, C, H, W) tensor and its labels (`Raw`): the
bundled digits, MNIST-like idx files in torchvision's layout, CIFAR's pickled batches (read with an unpickler that
resolves array globals only) and image folders. Splitting, class subsets and normalisation are ltray.data's."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltray.errors import LtrayError


@dataclass
class Raw:
    """One dataset as decoded from disk, before any splitting."""

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor | None  # None: no official test split, hold one out of train
    test_y: torch.Tensor | None
    num_classes: int
    scale: float  # maximum raw pixel value (255, or 16 for digits)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing(name: str, path: Path, what: str) -> LtrayError:
    return LtrayError(
        f"{name}: no dataset files at {path} ({what}); pass --download (download=True) "
        f"to fetch torchvision datasets"
    )


def data_root_of(name: str, data_root: str | os.PathLike | None) -> Path:
    if data_root is None:
        raise LtrayError(f"{name}: needs a data_root (the directory holding the dataset files)")
    return Path(data_root).expanduser()


def load_digits() -> Raw:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no files, no network

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.uint8)).unsqueeze(1)  # values 0..16
    return Raw(x, torch.from_numpy(d.target.astype(np.int64)), None, None, 10, 16.0)


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


def load_mnist_like(name: str, root: Path, download: bool) -> Raw:
    """torchvision's layout (<root>/MNIST/raw/*-ubyte), read here: torchvision is imported only to download."""
    raw = root / _IDX[name] / "raw"
    files = [raw / f"{split}-{kind}" for split in ("train", "t10k")
             for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
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
    return Raw(*parts, num_classes=10, scale=255.0)


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


def load_cifar(name: str, root: Path, download: bool) -> Raw:
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
    return Raw(train_x, train_y, test_x, test_y, num_classes, 255.0)


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


def load_imagefolder(name: str, root: Path, size: int) -> Raw:
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        raise LtrayError(f"{name}: expected {train_dir}/<class>/<image> files; {train_dir} is not a directory")
    class_names = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    train_x, train_y = _read_images(name, train_dir, class_names, size)
    test_x = test_y = None
    if test_dir.is_dir():
        test_x, test_y = _read_images(name, test_dir, class_names, size)
    return Raw(train_x, train_y, test_x, test_y, len(class_names), 255.0)
