"""Local-file readers (localjax/readers.py) on tiny files written in each real on-disk format.

The `write_*` helpers build files from each format's published description (not from the
reader's inverse), so a reader that transposes or shifts wrongly fails here. Other test
files import them (`from test_readers import write_dataset`).
"""

import gzip
import os
import pickle

import numpy as np
import pytest
import scipy.io

from localjax.data import readers
from localjax.errors import DatasetError


# ------------------------------------------------------------------ writers (real formats)
def write_idx(path: str, array: np.ndarray) -> None:
    """IDX: 0x00 0x00, type 0x08 (uint8), ndim, big-endian int32 dims, then the data."""
    array = np.asarray(array, np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim])
    raw += b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    if path.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        with open(path, "wb") as f:
            f.write(raw)


def write_cifar_batch(path: str, images: np.ndarray, labels, label_key: bytes) -> None:
    """CIFAR python batch: a protocol-2 pickled dict, `data` [N, 3072] uint8 whose rows are
    the 1024 red, then green, then blue values of the row-major 32x32 image."""
    n = images.shape[0]
    data = np.concatenate([images[..., c].reshape(n, 1024) for c in range(3)], axis=1)
    batch = {b"batch_label": b"testing batch", label_key: list(map(int, labels)), b"data": data}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [int(y) // 5 for y in labels]
    batch[b"filenames"] = [b"img%d.png" % i for i in range(n)]
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_svhn_mat(path: str, images: np.ndarray, digits: np.ndarray) -> None:
    """SVHN format 2: MATLAB v5 file, X [32, 32, 3, N] uint8, y [N, 1] with 10 for digit 0."""
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": y})


def write_stl10(images_path: str, labels_path: str, images: np.ndarray, labels) -> None:
    """STL-10 binary: per image, each of the 3 channels in column-major order (the row
    index runs fastest); labels one uint8 each, 1..10."""
    with open(images_path, "wb") as f:
        for img in images:
            for c in range(3):
                f.write(np.asarray(img[:, :, c], np.uint8).ravel(order="F").tobytes())
    np.asarray(np.asarray(labels) + 1, np.uint8).tofile(labels_path)


def _random(rng, n, size, channels, num_classes):
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    return images, rng.integers(0, num_classes, n)


def write_dataset(name: str, directory: str, n_train: int = 12, n_test: int = 6, seed: int = 0):
    """Writes a tiny copy of `name`'s files, in its published layout, into `directory`.

    Returns:
      {"train": (images, labels), "test": (images, labels)}: what a reader should return
      (SVHN train = train file + extra file).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    out = {}
    if name in ("mnist", "fashion_mnist", "kuzushiji_mnist"):
        for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
            images, labels = _random(rng, n, 28, 1, 10)
            write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images[..., 0])
            write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
            out[split] = (images, labels)
    elif name == "cifar10":
        sub = os.path.join(directory, "cifar-10-batches-py")
        os.makedirs(sub, exist_ok=True)
        parts = []
        for i in range(1, 6):
            images, labels = _random(rng, max(1, n_train // 5), 32, 3, 10)
            write_cifar_batch(os.path.join(sub, f"data_batch_{i}"), images, labels, b"labels")
            parts.append((images, labels))
        out["train"] = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
        out["test"] = _random(rng, n_test, 32, 3, 10)
        write_cifar_batch(os.path.join(sub, "test_batch"), *out["test"], b"labels")
    elif name == "cifar100":
        sub = os.path.join(directory, "cifar-100-python")
        os.makedirs(sub, exist_ok=True)
        for split, n in (("train", n_train), ("test", n_test)):
            out[split] = _random(rng, n, 32, 3, 100)
            write_cifar_batch(os.path.join(sub, split), *out[split], b"fine_labels")
    elif name == "svhn":
        parts = {}
        for stem, n in (
            ("train", n_train // 2),
            ("extra", n_train - n_train // 2),
            ("test", n_test),
        ):
            parts[stem] = _random(rng, n, 32, 3, 10)
            write_svhn_mat(os.path.join(directory, f"{stem}_32x32.mat"), *parts[stem])
        out["train"] = tuple(
            np.concatenate(p) for p in zip(parts["train"], parts["extra"], strict=True)
        )
        out["test"] = parts["test"]
    elif name == "stl10":
        sub = os.path.join(directory, "stl10_binary")
        os.makedirs(sub, exist_ok=True)
        for split, n in (("train", n_train), ("test", n_test)):
            out[split] = _random(rng, n, 96, 3, 10)
            write_stl10(
                os.path.join(sub, f"{split}_X.bin"),
                os.path.join(sub, f"{split}_y.bin"),
                *out[split],
            )
    else:
        raise ValueError(name)
    return out


# ------------------------------------------------------------------ IDX
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / f"x-idx3-ubyte{suffix}")
    write_idx(path, images)
    got = readers.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, images)


def test_idx_errors(tmp_path):
    path = str(tmp_path / "bad")
    with open(path, "wb") as f:
        f.write(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DatasetError, match="bad magic number 12340801"):
        readers.read_idx(path)
    write_idx(path, np.zeros((4, 5), np.uint8))
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:-3])  # truncated
    with pytest.raises(DatasetError, match=r"has 29 bytes but its header \(4, 5\) needs 32"):
        readers.read_idx(path)
    with open(path, "wb") as f:
        f.write(raw[:6])  # inside the header
    with pytest.raises(DatasetError, match="truncated inside its header"):
        readers.read_idx(path)
    with open(path + ".gz", "wb") as f:
        f.write(b"not gzip at all")
    with pytest.raises(DatasetError, match="Re-download"):
        readers.read_idx(path + ".gz")
    with pytest.raises(DatasetError, match="IDX file not found"):
        readers.read_idx(str(tmp_path / "nope"))


# ------------------------------------------------------------------ CIFAR
def test_cifar_batch_layout(tmp_path):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[0, 1, 2, 0] = 7  # red, row 1, column 2
    images[1, 31, 0, 2] = 9  # blue, last row, first column
    path = str(tmp_path / "data_batch_1")
    write_cifar_batch(path, images, [3, 4], b"labels")
    with open(path, "rb") as f:  # the format itself: red channel first, row-major
        data = pickle.load(f, encoding="bytes")[b"data"]
    assert data[0, 1 * 32 + 2] == 7 and data[1, 2048 + 31 * 32] == 9
    got, labels = readers.read_cifar_batch(path)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, [3, 4])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_splits(tmp_path, name):
    want = write_dataset(name, str(tmp_path), n_train=10, n_test=4)
    layout = readers.LAYOUTS[name]
    dirs = [str(tmp_path), str(tmp_path / layout.subdir)]
    for split in ("train", "test"):
        paths = readers.find_files(layout, split, dirs)
        assert paths is not None and all(p.startswith(dirs[1]) for p in paths)
        images, labels = readers.read_files(layout, paths)
        np.testing.assert_array_equal(images, want[split][0])
        np.testing.assert_array_equal(labels, want[split][1])
    assert readers.find_files(layout, "train", [str(tmp_path)]) is None


def test_cifar_errors(tmp_path):
    images = np.zeros((3, 32, 32, 3), np.uint8)
    good = str(tmp_path / "train")
    write_cifar_batch(good, images, [1, 2, 3], b"fine_labels")
    with pytest.raises(DatasetError, match="needs keys 'data' and 'labels'.*not interchangeable"):
        readers.read_cifar_batch(good, "labels")  # a CIFAR-100 file read as CIFAR-10
    with open(good, "rb") as f:
        raw = f.read()
    truncated = str(tmp_path / "truncated")
    with open(truncated, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        readers.read_cifar_batch(truncated, "fine_labels")
    evil = str(tmp_path / "evil")
    with open(evil, "wb") as f:
        pickle.dump({b"data": os.getcwd}, f, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load"):
        readers.read_cifar_batch(evil)
    wrong = str(tmp_path / "wrong")
    with open(wrong, "wb") as f:
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"expected \[N, 3072\] uint8"):
        readers.read_cifar_batch(wrong)
    with pytest.raises(DatasetError, match="CIFAR batch not found"):
        readers.read_cifar_batch(str(tmp_path / "nope"))


# ------------------------------------------------------------------ SVHN
def test_svhn_mat_layout_and_labels(tmp_path):
    images = np.zeros((3, 32, 32, 3), np.uint8)
    images[2, 5, 6, 1] = 200
    path = str(tmp_path / "test_32x32.mat")
    write_svhn_mat(path, images, np.array([0, 1, 9]))
    raw = scipy.io.loadmat(path)
    assert raw["X"].shape == (32, 32, 3, 3) and raw["X"][5, 6, 1, 2] == 200
    np.testing.assert_array_equal(raw["y"].ravel(), [10, 1, 9])  # format 2: 10 is digit 0
    got, labels = readers.read_svhn_mat(path)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, [0, 1, 9])


def test_svhn_train_is_train_plus_extra(tmp_path):
    want = write_dataset("svhn", str(tmp_path), n_train=8, n_test=3)
    layout = readers.LAYOUTS["svhn"]
    paths = readers.find_files(layout, "train", [str(tmp_path)])
    assert [os.path.basename(p) for p in paths] == ["train_32x32.mat", "extra_32x32.mat"]
    images, labels = readers.read_files(layout, paths)
    assert images.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(images, want["train"][0])
    np.testing.assert_array_equal(labels, want["train"][1])


def test_svhn_errors(tmp_path):
    path = str(tmp_path / "x.mat")
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [1]])})
    with pytest.raises(DatasetError, match=r"labels span \[0, 1\].*1\.\.10"):
        readers.read_svhn_mat(path)
    scipy.io.savemat(path, {"X": np.zeros((2, 32, 32, 3), np.uint8), "y": np.array([[1], [1]])})
    with pytest.raises(DatasetError, match=r"'X' has shape \(2, 32, 32, 3\).*\[32, 32, 3, N\]"):
        readers.read_svhn_mat(path)
    scipy.io.savemat(path, {"images": np.zeros((2, 2), np.uint8)})
    with pytest.raises(DatasetError, match=r"needs variables 'X' and 'y', found \['images'\]"):
        readers.read_svhn_mat(path)
    with open(path, "wb") as f:
        f.write(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DatasetError, match="not a readable SVHN .mat file"):
        readers.read_svhn_mat(path)


# ------------------------------------------------------------------ STL-10
def test_stl10_layout(tmp_path):
    images = np.zeros((2, 96, 96, 3), np.uint8)
    images[1, 3, 0, 0] = 50  # red, row 3, column 0
    images[1, 0, 2, 2] = 60  # blue, row 0, column 2
    x, y = str(tmp_path / "train_X.bin"), str(tmp_path / "train_y.bin")
    write_stl10(x, y, images, [0, 9])
    raw = np.fromfile(x, np.uint8)
    # column-major: row index fastest; image 1 starts at 27648, blue at +2*9216
    assert raw[27648 + 3] == 50 and raw[27648 + 2 * 9216 + 2 * 96] == 60
    np.testing.assert_array_equal(np.fromfile(y, np.uint8), [1, 10])
    got, labels = readers.read_stl10(x, y)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, [0, 9])


def test_stl10_errors(tmp_path):
    x, y = str(tmp_path / "test_X.bin"), str(tmp_path / "test_y.bin")
    write_stl10(x, y, np.zeros((2, 96, 96, 3), np.uint8), [1, 2])
    with open(x, "ab") as f:
        f.write(b"\0" * 5)
    with pytest.raises(DatasetError, match="55301 bytes, not a whole number of 27648-byte"):
        readers.read_stl10(x, y)
    write_stl10(x, y, np.zeros((2, 96, 96, 3), np.uint8), [1, 2])
    np.array([1], np.uint8).tofile(y)
    with pytest.raises(DatasetError, match="holds 1 labels but .* holds 2 images"):
        readers.read_stl10(x, y)
    np.array([0, 11], np.uint8).tofile(y)
    with pytest.raises(DatasetError, match=r"labels span \[0, 11\]"):
        readers.read_stl10(x, y)
    with pytest.raises(DatasetError, match="STL-10 file not found"):
        readers.read_stl10(x, str(tmp_path / "nope"))
