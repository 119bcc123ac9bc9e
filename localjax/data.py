"""Datasets of the paper as uint8 arrays, and the order in which an epoch visits them.

Usage::

    spec = get_spec("fashion_mnist")
    train = load("fashion_mnist", "train", data_dir=None)   # Dataset(images, labels)
    train.images.shape, train.images.dtype                   # (60000, 28, 28, 1) uint8
    for idx in epoch_batches(len(train), 128, seed=0, epoch=1):
        ...                                                  # idx: [<=128] int32

Letters: N examples, H/W image size, C channels (NHWC).
Images stay uint8 until the jitted step (augment.py) turns them into float32.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from typing import NamedTuple

import numpy as np

__all__ = [
    "DatasetSpec",
    "Dataset",
    "DatasetError",
    "SPECS",
    "get_spec",
    "load",
    "read_idx",
    "epoch_batches",
    "DEBIAN_FASHION_MNIST",
]

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


class DatasetError(RuntimeError):
    """A dataset cannot be loaded: missing, corrupt or inconsistent files. The message
    names the problem, where it looked and how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Per-dataset facts of METHOD.md's data table.

    Attributes:
      name: registry name (e.g. `fashion_mnist`).
      image_size: H = W in pixels.
      channels: C.
      num_classes: K.
      mean, std: per-channel normalisation of [0, 1] pixels (length C).
      crop_padding: zero padding (px) of the random crop; 0 = no crop.
      flip: random horizontal flips.
      idx_prefix: file-name prefixes of the IDX files, (train, test), for MNIST-like sets.
    """

    name: str
    image_size: int
    channels: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    idx_prefix: tuple[str, str] | None = None


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", 28, 1, 10, (0.1307,), (0.3081,), crop_padding=2, idx_prefix=("train", "t10k")
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        28,
        1,
        10,
        (0.286,),
        (0.353,),
        crop_padding=2,
        flip=True,
        idx_prefix=("train", "t10k"),
    ),
}


class Dataset(NamedTuple):
    """images: `[N, H, W, C]` uint8; labels: `[N]` int32 in [0, K)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def get_spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a dataset name.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(SPECS)}.")
    return SPECS[name]


# ------------------------------------------------------------------ IDX files
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST family's format), gzip-compressed or raw.

    Args:
      path: file path; a `.gz` suffix means gzip.

    Returns:
      An array of the header's shape and dtype (uint8 for MNIST images and labels).

    Raises:
      DatasetError: if the file is missing, its magic number is not IDX, or its size
        does not match the header.
    """
    if not os.path.exists(path):
        raise DatasetError(f"IDX file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # truncated or not gzip
        raise DatasetError(f"cannot read {path}: {e}. Re-download the file.") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); "
            "expected 0x0000 then a type code and the number of dimensions."
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated inside its header.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(
            f"{path} has {len(raw)} bytes but its header {shape} needs {expected}: "
            "the file is truncated or corrupt. Re-download it."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(directory: str, stem: str) -> str | None:
    for suffix in (".gz", ""):
        path = os.path.join(directory, stem + suffix)
        if os.path.exists(path):
            return path
    return None


def _missing_message(spec: DatasetSpec, directory: str, stems: list[str]) -> str:
    how = (
        "On Debian/Ubuntu: `apt-get install -y dataset-fashion-mnist` (files land in "
        f"{DEBIAN_FASHION_MNIST}), or point --config.data_dir at a directory holding the "
        "four IDX files."
        if spec.name == "fashion_mnist"
        else "Point --config.data_dir at a directory holding the four IDX files."
    )
    return (
        f"{spec.name} not found: looked in {directory!r} for "
        f"{', '.join(s + '[.gz]' for s in stems)}. {how}"
    )


def _load_idx_split(spec: DatasetSpec, split: str, directory: str) -> Dataset:
    prefix = spec.idx_prefix[0 if split == "train" else 1]
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = [_find_idx(directory, s) for s in stems]
    if None in paths:
        raise DatasetError(_missing_message(spec, directory, stems))
    images, labels = (read_idx(p) for p in paths)
    return _validated(spec, images[..., None], labels, paths[0])


def _validated(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray, where: str) -> Dataset:
    want = (spec.image_size, spec.image_size, spec.channels)
    if images.ndim != 4 or images.shape[1:] != want:
        raise DatasetError(
            f"{where}: images have shape {images.shape[1:]} but {spec.name} needs {want} (H, W, C)."
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels.")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetError(
            f"{where}: labels span [{labels.min()}, {labels.max()}] but {spec.name} has "
            f"{spec.num_classes} classes [0, {spec.num_classes - 1}]."
        )
    return Dataset(np.ascontiguousarray(images, np.uint8), labels.astype(np.int32))


def load(name: str, split: str, data_dir: str | None = None) -> Dataset:
    """Loads one split of a dataset as uint8 images and int32 labels.

    Args:
      name: a key of `SPECS`.
      split: `train` or `test`.
      data_dir: directory of the files; None means the dataset's default location
        (Debian's package directory for Fashion-MNIST).

    Returns:
      `Dataset(images [N, H, W, C] uint8, labels [N] int32)`.

    Raises:
      ValueError: unknown dataset or split.
      DatasetError: files missing, corrupt, or inconsistent with the spec.
    """
    spec = get_spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'.")
    directory = data_dir or (DEBIAN_FASHION_MNIST if name == "fashion_mnist" else ".")
    return _load_idx_split(spec, split, directory)


# ------------------------------------------------------------------ epoch order
def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of example indices for one epoch, the last partial one kept.

    The order depends only on (seed, epoch), so a resumed run sees the same batches.

    Args:
      num_examples: N > 0.
      batch_size: examples per batch, > 0.
      seed: run seed.
      epoch: epoch number (1-based).

    Returns:
      ceil(N / batch_size) int32 index arrays covering every example once.

    Raises:
      ValueError: if N or batch_size is not positive.
    """
    if num_examples <= 0 or batch_size <= 0:
        raise ValueError(
            f"need num_examples > 0 and batch_size > 0; got {num_examples}, {batch_size}."
        )
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(num_examples).astype(np.int32)
    return [order[i : i + batch_size] for i in range(0, num_examples, batch_size)]
