"""ltray.data on real on-disk formats: sklearn digits, real MNIST when present, and tiny
FashionMNIST / CIFAR / image-folder datasets written here in their genuine file formats."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltray.data import DATASETS, DataBundle, Split, batches, load_dataset
from ltray.errors import LtrayError

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def row_hashes(split: Split) -> set[str]:
    return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in split.x}


def check_bundle(b: DataBundle, channels: int, size: int) -> None:
    for s in (b.train, b.val, b.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.x.shape == (len(s), channels, size, size)
        assert int(s.y.min()) >= 0 and int(s.y.max()) < b.num_classes
    assert b.in_channels == channels and b.image_size == size


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits")


def test_digits_shapes_and_split_sizes(digits: DataBundle) -> None:
    check_bundle(digits, 1, 8)
    assert digits.num_classes == 10 and digits.classes is None and digits.name == "digits"
    assert len(digits.test) == round(0.2 * 1797)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    assert len(digits.val) == round(0.1 * (1797 - len(digits.test)))


def test_digits_splits_are_disjoint(digits: DataBundle) -> None:
    # The 1797 digits images are pairwise distinct, so row hashes identify examples.
    tr, va, te = (row_hashes(s) for s in (digits.train, digits.val, digits.test))
    assert len(tr) == len(digits.train) and len(va) == len(digits.val) and len(te) == len(digits.test)
    assert not (tr & va) and not (tr & te) and not (va & te)


def test_digits_split_seed_is_deterministic(digits: DataBundle) -> None:
    again = load_dataset("digits", split_seed=0)
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = load_dataset("digits", split_seed=1)
    assert row_hashes(other.test) != row_hashes(digits.test)
    assert row_hashes(other.val) != row_hashes(digits.val)


def test_digits_normalised_with_train_statistics(digits: DataBundle) -> None:
    assert abs(float(digits.train.x.mean())) < 1e-4
    assert abs(float(digits.train.x.std()) - 1.0) < 1e-3
    assert abs(float(digits.test.x.mean())) < 0.1  # same transform, different examples


def test_digits_max_train_and_classes(digits: DataBundle) -> None:
    capped = load_dataset("digits", max_train=100)
    assert len(capped.train) == 100
    assert torch.equal(capped.val.x, digits.val.x)  # the cap touches only train
    assert len(set(capped.train.y.tolist())) == 10  # a random subset, not the first classes
    sub = load_dataset("digits", classes=[7, 3])
    assert sub.num_classes == 2 and sub.classes == (7, 3)
    # Same split, filtered (normalisation differs: digits uses the subset's own statistics).
    assert int((sub.val.y == 0).sum()) == int((digits.val.y == 7).sum())
    assert int((sub.val.y == 1).sum()) == int((digits.val.y == 3).sum())
    assert len(sub.val) == int(((digits.val.y == 7) | (digits.val.y == 3)).sum())


def test_digits_image_size_resamples() -> None:
    b = load_dataset("digits", image_size=16, max_train=32)
    check_bundle(b, 1, 16)


def test_batches_cover_split_and_follow_generator(digits: DataBundle) -> None:
    split = digits.val
    got = list(batches(split, 32, torch.Generator().manual_seed(3)))
    assert [len(y) for _, y in got][:-1] == [32] * (len(got) - 1)
    assert sum(len(y) for _, y in got) == len(split)
    xs = torch.cat([x for x, _ in got])
    assert row_hashes(Split(xs, torch.cat([y for _, y in got]))) == row_hashes(split)
    again = list(batches(split, 32, torch.Generator().manual_seed(3)))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, again))
    g = torch.Generator().manual_seed(3)
    first, second = (torch.cat([y for _, y in batches(split, 32, g)]) for _ in range(2))
    assert not torch.equal(first, second)  # a fresh permutation per call
    plain = list(batches(split, 50, None, shuffle=False, drop_last=True))
    assert len(plain) == len(split) // 50 and torch.equal(plain[0][0], split.x[:50])
    with pytest.raises(LtrayError):
        next(batches(split, 0, None))


# ---------------------------------------------------------------- MNIST (real files)


@pytest.mark.skipif(
    not (SHARED_DATASETS / "MNIST" / "raw").is_dir(),
    reason=f"real MNIST not found at {SHARED_DATASETS / 'MNIST' / 'raw'}",
)
def test_real_mnist() -> None:
    b = load_dataset("mnist", SHARED_DATASETS)
    check_bundle(b, 1, 28)
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    assert set(b.train.y.unique().tolist()) == set(range(10))
    assert abs(float(b.train.x.mean())) < 0.05 and abs(float(b.train.x.std()) - 1) < 0.05
    sub = load_dataset("mnist", SHARED_DATASETS, classes=[0, 1, 2, 3, 4])
    assert sub.num_classes == 5 and sub.classes == (0, 1, 2, 3, 4)
    assert set(sub.test.y.unique().tolist()) == set(range(5))
    assert len(sub.test) == int((b.test.y < 5).sum())


# ---------------------------------------------------------------- FashionMNIST (idx format)


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", 2051, rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, np.arange(n) % 10)
    b = load_dataset("fashion-mnist", tmp_path)
    check_bundle(b, 1, 28)
    assert (len(b.train), len(b.val), len(b.test)) == (36, 4, 12)
    assert torch.equal(b.test.y, torch.arange(12) % 10)
    # Normalised with the published constants, not the data's own statistics.
    pixels = np.fromfile(raw / "t10k-images-idx3-ubyte", dtype=np.uint8, offset=16)
    expected = (torch.from_numpy(pixels).float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(b.test.x.flatten(), expected)


@pytest.mark.parametrize("damage", ["truncated", "magic", "shape", "count"])
def test_damaged_idx_file_names_it(tmp_path: Path, damage: str) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 5)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", 2051, np.zeros((n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", 2049, np.arange(n) % 10)
    bad = raw / "t10k-images-idx3-ubyte"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-7])
    elif damage == "magic":
        write_idx(bad, 2049, np.zeros((5, 28, 28)))
    elif damage == "shape":
        write_idx(bad, 2051, np.zeros((5, 32, 32)))
    else:
        write_idx(bad, 2051, np.zeros((4, 28, 28)))   # 4 images, 5 labels
    message = one_line_error("fashion-mnist", tmp_path)
    assert bad.name in message


# ---------------------------------------------------------------- CIFAR (pickled batches)


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def test_cifar10_from_pickled_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for i in range(1, 6):
        batch = {b"batch_label": b"x", b"labels": [(i + j) % 10 for j in range(8)],
                 b"data": cifar_images(rng, 8), b"filenames": [b"f"] * 8}
        write_pickle(base / f"data_batch_{i}", batch)
    test_data = cifar_images(rng, 10)
    write_pickle(base / "test_batch", {b"labels": list(range(10)), b"data": test_data})
    write_pickle(base / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)], b"num_vis": 3072})
    b = load_dataset("cifar10", tmp_path)
    check_bundle(b, 3, 32)
    assert (len(b.train), len(b.val), len(b.test)) == (36, 4, 10)
    # Each row is R, G, B planes of 32x32: channel 1 of image 0 is bytes 1024..2047.
    green = (torch.from_numpy(test_data[0, 1024:2048].astype(np.float32)) / 255 - 0.4822) / 0.2435
    assert torch.allclose(b.test.x[0, 1].flatten(), green)


def test_cifar100_class_subset_relabels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    train_labels = [i % 100 for i in range(1000)]
    write_pickle(base / "train", {b"fine_labels": train_labels, b"coarse_labels": [0] * 1000,
                                  b"data": cifar_images(rng, 1000)})
    write_pickle(base / "test", {b"fine_labels": list(range(100)), b"coarse_labels": [0] * 100,
                                 b"data": cifar_images(rng, 100)})
    write_pickle(base / "meta", {b"fine_label_names": [b"n"] * 100, b"coarse_label_names": [b"c"] * 20})
    full = load_dataset("cifar100", tmp_path)
    assert full.num_classes == 100 and len(full.test) == 100
    keep = [42, 7, 99]
    b = load_dataset("cifar100", tmp_path, classes=keep)
    check_bundle(b, 3, 32)
    assert b.num_classes == 3 and b.classes == (42, 7, 99)
    assert len(b.train) + len(b.val) == 30 and len(b.test) == 3
    # Test split is in file order (labels 0..99), so ids 7, 42, 99 appear as new labels 1, 0, 2.
    assert b.test.y.tolist() == [1, 0, 2]
    assert torch.equal(b.test.x[1], full.test.x[42])


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    for name in ("train", "test"):
        write_pickle(base / name, {"fine_labels": [0], "data": np.zeros((1, 3072), np.uint8), "x": Path("p")})
    with pytest.raises(LtrayError, match="refusing"):
        load_dataset("cifar100", tmp_path)


# ---------------------------------------------------------------- image folders


def write_images(root: Path, counts: dict[str, int], rng: np.random.Generator) -> None:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
            mode = "L" if i % 3 == 0 else "RGB"  # grey images must come out as RGB too
            shape = size[::-1] if mode == "L" else (*size[::-1], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")


def test_imagefolder_train_and_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    write_images(tmp_path / "train", {"zebra": 10, "ant": 10, "moth": 10}, rng)
    write_images(tmp_path / "test", {"ant": 2, "zebra": 3}, rng)  # test/ may lack a class
    b = load_dataset("imagefolder", tmp_path, image_size=16)
    check_bundle(b, 3, 16)
    assert b.num_classes == 3
    assert (len(b.train), len(b.val), len(b.test)) == (27, 3, 5)
    assert b.test.y.tolist() == [0, 0, 2, 2, 2]  # sorted names: ant=0, moth=1, zebra=2


def test_imagefolder_without_test_holds_out(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"a": 10, "b": 10}, np.random.default_rng(4))
    b = load_dataset("imagefolder", tmp_path, image_size=12)
    check_bundle(b, 3, 12)
    assert len(b.test) == 4 and len(b.train) + len(b.val) == 16


def test_empty_imagefolder(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(LtrayError, match="no images"):
        load_dataset("imagefolder", tmp_path)


# ---------------------------------------------------------------- errors


def one_line_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(LtrayError) as info:
        load_dataset(*args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_dataset_lists_known_ones() -> None:
    message = one_line_error("imagenet")
    assert "imagenet" in message and all(name in message for name in DATASETS)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_missing_root_names_path(tmp_path: Path, name: str) -> None:
    root = tmp_path / "nothing-here"
    message = one_line_error(name, root)
    assert str(root) in message and "--download" in message


def test_bad_arguments() -> None:
    assert "out of range" in one_line_error("digits", classes=[3, 10])
    assert "more than once" in one_line_error("digits", classes=[1, 2, 1])
    assert "val_fraction" in one_line_error("digits", val_fraction=1.0)
    assert "data_root" in one_line_error("mnist")


def test_permute_pixels_moves_positions_not_values() -> None:
    """One seeded permutation of pixel positions for every split: values and labels kept, seeds differ."""
    from ltray.data import permute_pixels

    b = load_dataset("digits")
    p = permute_pixels(b, seed=3)
    for s, q in ((b.train, p.train), (b.val, p.val), (b.test, p.test)):
        assert torch.equal(s.y, q.y) and q.x.shape == s.x.shape
        assert torch.equal(s.x.flatten(1).sort(1).values, q.x.flatten(1).sort(1).values)
        assert not torch.equal(s.x, q.x)
    # the same permutation everywhere: where train's first image went, every image went
    one_hot = torch.eye(64).reshape(64, 1, 8, 8)
    moved = permute_pixels(DataBundle("digits", Split(one_hot, torch.zeros(64, dtype=torch.long)),
                                      Split(one_hot, torch.zeros(64, dtype=torch.long)),
                                      Split(one_hot, torch.zeros(64, dtype=torch.long)), 10, 1, 8, None), seed=3)
    order = moved.train.x.flatten(1).argmax(1)
    assert sorted(order.tolist()) == list(range(64)) and torch.equal(moved.test.x, moved.train.x)
    assert torch.equal(p.train.x.flatten(1)[:, order], b.train.x.flatten(1))
    assert not torch.equal(permute_pixels(b, seed=4).train.x, p.train.x)
    assert torch.equal(permute_pixels(b, seed=3).val.x, p.val.x)
