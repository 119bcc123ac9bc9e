"""Loading the paper's datasets as uint8 arrays: local files, the .npz cache, or TFDS.

Usage::

    spec = get_spec("fashion_mnist")
    train = load("fashion_mnist", "train", data_dir=None)   # Dataset(images, labels)
    train.images.shape, train.images.dtype                   # (60000, 28, 28, 1) uint8
    test = load("cifar10", "test", "/data", source="tfds")   # TFDS once, then an .npz cache

The seven datasets of METHOD.md's data table: `mnist`, `fashion_mnist`,
`kuzushiji_mnist`, `cifar10`, `cifar100`, `svhn` (train = train + extra), `stl10` (96 px).
Sources, in the order `source="auto"` tries them:

1. local files in their published format (`localjax.data.readers`: IDX, CIFAR pickles, SVHN
   `.mat`, STL-10 binaries) in `data_dir` or `data_dir/<archive folder>`;
2. the `.npz` cache `data_dir/localjax_cache/<name>-<split>.npz` of an earlier TFDS read;
3. tensorflow-datasets (`localjax.data.tfds_source`) under `data_dir/tfds`, then cached as in 2.

`data_dir=None` means `$LOCALJAX_DATA_DIR`, else `~/localjax_data` (plus Debian's package
folder for Fashion-MNIST). README.md, section 'Datasets' says how to obtain each dataset.

Letters: N examples, H/W image size, C channels (NHWC), K classes.
Images stay uint8 until the jitted step (`augmentation.py`) turns them into float32.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import NamedTuple

import numpy as np
from absl import logging

from localjax.data import fingerprint, readers, tfds_source
from localjax.data.specs import MNIST_IDX, DatasetSpec, get_spec
from localjax.errors import ConfigError, DatasetError

__all__ = ["Dataset", "SOURCES", "load", "default_data_dir", "cache_path", "DEBIAN_FASHION_MNIST"]

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
SOURCES = ("auto", "files", "tfds")
_CACHE_DIR = "localjax_cache"
_CACHE_VERSION = 1


# how to get the files, per dataset (error messages and README.md, section 'Datasets')
_HOW_FILES = {
    "mnist": "the four IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (from the MNIST site or a mirror)",
    "fashion_mnist": "`apt-get install -y dataset-fashion-mnist` (files land in "
    f"{DEBIAN_FASHION_MNIST}), or the four IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist",
    "kuzushiji_mnist": "the four IDX files (train-images-idx3-ubyte.gz, ...) from "
    "https://github.com/rois-codh/kmnist (the MNIST-format download)",
    "cifar10": "extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "svhn": "the format-2 files train_32x32.mat, extra_32x32.mat, test_32x32.mat from "
    "http://ufldl.stanford.edu/housenumbers/",
    "stl10": "extract stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/",
}


class Dataset(NamedTuple):
    """One split of a dataset, as `load` returns it.

    Attributes:
      images: `[N, H, W, C]` uint8 pixels 0..255.
      labels: `[N]` int32 class indices in [0, K).

    `len(dataset)` is N (Python int).

    Raises:
      Nothing of its own (a NamedTuple; `load` validates what it builds).

    Holds the uint8 arrays of DESIGN.md, What flows where (data.py; METHOD.md, Data).
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def default_data_dir() -> str:
    """Where data lives when no data_dir is given: `$LOCALJAX_DATA_DIR`, else `~/localjax_data`.

    Returns:
      An absolute path, str (it may not exist yet).

    Raises:
      Nothing of its own.

    Part of dataset loading (DESIGN.md, Decisions: data on device; modules: data.py).
    """
    return os.path.abspath(
        os.path.expanduser(os.environ.get("LOCALJAX_DATA_DIR") or "~/localjax_data")
    )


def cache_path(name: str, split: str, data_dir: str | None = None) -> str:
    """The `.npz` cache file of one split of a TFDS-loaded dataset.

    Args:
      name: a key of `SPECS`.
      split: `train` or `test`.
      data_dir: data directory (None: `default_data_dir()`).

    Returns:
      `data_dir/localjax_cache/<name>-<split>.npz`, str. Neither argument is validated.

    Raises:
      Nothing of its own.

    The TFDS cache (DESIGN.md, Decisions: data on device; TFDS is the source for
    downloaded datasets).
    """
    return os.path.join(data_dir or default_data_dir(), _CACHE_DIR, f"{name}-{split}.npz")


# ------------------------------------------------------------------ checks
def _validated(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray, where: str) -> Dataset:
    want = (spec.image_size, spec.image_size, spec.channels)
    if images.ndim != 4 or images.shape[1:] != want:
        raise DatasetError(
            f"{where}: images have shape {images.shape[1:]} but {spec.name} needs {want} (H, W, C)."
            " Are these the files of another dataset?"
        )
    if images.dtype != np.uint8:
        raise DatasetError(f"{where}: images are {images.dtype}, expected uint8 pixels 0..255.")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels.")
    if labels.shape[0] == 0:
        raise DatasetError(f"{where}: the split holds no examples. Re-download the files.")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DatasetError(
            f"{where}: labels span [{labels.min()}, {labels.max()}] but {spec.name} has "
            f"{spec.num_classes} classes [0, {spec.num_classes - 1}]. Are these the files of "
            "another dataset?"
        )
    return Dataset(np.ascontiguousarray(images, np.uint8), labels.astype(np.int32))


# ------------------------------------------------------------------ local files
def _layout(spec: DatasetSpec) -> readers.FileLayout:
    layout = readers.LAYOUTS[spec.file_format]
    if spec.file_format == "idx":
        layout = dataclasses.replace(
            layout, subdir=spec.name, files=readers.idx_files(spec.idx_prefix or MNIST_IDX)
        )
    return layout


def _file_dirs(spec: DatasetSpec, data_dir: str | None) -> list[str]:
    """Directories searched for local files, in order."""
    roots = [data_dir] if data_dir else [default_data_dir()]
    if not data_dir and spec.name == "fashion_mnist":
        roots.insert(0, DEBIAN_FASHION_MNIST)
    sub = _layout(spec).subdir
    return [d for root in roots for d in (root, os.path.join(root, sub))]


def _missing_message(spec: DatasetSpec, split: str, dirs: list[str], tried_tfds: str) -> str:
    names = _layout(spec).files[split]
    gz = "[.gz]" if spec.file_format == "idx" else ""
    return (
        f"{spec.name} {split} split not found: looked in {dirs} for "
        f"{', '.join(n + gz for n in names)}. To fix: get {_HOW_FILES[spec.name]} and point "
        f"data_dir at their folder (--config.data_dir for experiments.train, --data_dir for "
        f"experiments.reproduce); {tried_tfds}"
    )


def _tfds_hint(spec: DatasetSpec) -> str:
    return (
        f"or load it through TFDS ({spec.tfds_name!r}) with --config.data_source=tfds after "
        f"{tfds_source.INSTALL_HINT}. See README.md, section 'Datasets'."
    )


# ------------------------------------------------------------------ .npz cache
def _read_cache(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["version"])
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(
            f"the cache {path} is unreadable ({type(e).__name__}: {e}). Delete it; the next "
            "run rebuilds it from TFDS."
        ) from e
    if version != _CACHE_VERSION:
        raise DatasetError(
            f"the cache {path} has format version {version}, this code writes "
            f"{_CACHE_VERSION}. Delete it; the next run rebuilds it."
        )
    return images, labels


def _write_cache(path: str, ds: Dataset) -> None:
    """Writes atomically (temporary file, then rename); a failure only logs a warning."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, images=ds.images, labels=ds.labels, version=_CACHE_VERSION)
        os.replace(tmp, path)
    except OSError as e:
        logging.warning("could not write the dataset cache %s: %s", path, e)
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------ load
def load(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    source: str = "auto",
    download: bool = True,
) -> Dataset:
    """Loads one split of a dataset as uint8 images and int32 labels.

    Implements METHOD.md's data table: the seven datasets with their published train/test
    splits (SVHN train = train + extra; CIFAR-100 with its 100 fine labels).

    Args:
      name: a key of `SPECS` (or an alias accepted by `get_spec`).
      split: `train` or `test`.
      data_dir: data directory (None: `default_data_dir()`, and for Fashion-MNIST first
        Debian's package folder). Local files are looked for in it and in its
        `<archive folder>` (e.g. `cifar-10-batches-py`); TFDS data under `data_dir/tfds`;
        the cache under `data_dir/localjax_cache`.
      source: `auto` (local files, else the cache, else TFDS if installed), `files` (local
        files only) or `tfds` (the cache, else TFDS).
      download: let TFDS download and prepare a dataset it does not have yet.

    Returns:
      `Dataset(images [N, H, W, C] uint8, labels [N] int32)`.

    Raises:
      ConfigError (a ValueError): unknown dataset, split or source.
      DatasetError: files missing (says where it looked and how to get them), corrupt or
        truncated, labels outside [0, K), images of the wrong shape, another dataset's
        published files (`fingerprint.check_published`; files that differ from the
        dataset's published ones only log a warning), or TFDS unavailable.
    """
    spec = get_spec(name)
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r}; choose 'train' or 'test'.")
    if source not in SOURCES:
        raise ConfigError(f"unknown data source {source!r}; choose one of {list(SOURCES)}.")
    if spec.variable_size:
        raise ConfigError(
            f"{spec.name} holds images of any size (JPEG): it is streamed, not loaded into "
            "memory. Train with data_pipeline='auto' or 'stream' (localjax.data.streaming)."
        )
    if not spec.file_format:  # TFDS only (the ImageNet stand-ins)
        if source == "files":
            raise DatasetError(
                f"{spec.name} has no local file format: load it through TFDS "
                f"({spec.tfds_name!r}) with data_source='tfds' or 'auto'."
            )
        source = "tfds"

    if source in ("auto", "files"):
        dirs = _file_dirs(spec, data_dir)
        layout = _layout(spec)
        paths = readers.find_files(layout, split, dirs)
        if paths is not None:
            images, labels = readers.read_files(layout, paths)
            ds = _validated(spec, images, labels, os.path.dirname(paths[0]))
            if spec.file_format == "idx":  # warns on modified files, refuses another set's
                fingerprint.check_published(spec.name, split, paths, ds)
            return ds
        if source == "files":
            raise DatasetError(_missing_message(spec, split, dirs, _tfds_hint(spec)))

    cache = cache_path(spec.name, split, data_dir)
    if os.path.exists(cache):
        return _validated(spec, *_read_cache(cache), cache)
    if source == "auto" and not tfds_source.available():
        raise DatasetError(_missing_message(spec, split, dirs, _tfds_hint(spec)))
    if not tfds_source.available():
        files = (
            f"; or use local files ({_HOW_FILES[spec.name]}) with --config.data_source=files"
            if spec.name in _HOW_FILES
            else ""
        )
        raise DatasetError(
            f"{spec.name}: no cache at {cache} and tensorflow-datasets is not installed. "
            f"To fix: {tfds_source.INSTALL_HINT}{files}."
        )
    tfds_dir = os.path.join(data_dir or default_data_dir(), "tfds")
    splits = spec.train_splits if split == "train" else (spec.test_split,)
    try:
        images, labels = tfds_source.load_tfds(spec.tfds_name, splits, tfds_dir, download)
    except DatasetError as e:
        if source != "auto":
            raise
        raise DatasetError(
            _missing_message(
                spec, split, _file_dirs(spec, data_dir), f"TFDS could not supply it either: {e}"
            )
        ) from e
    ds = _validated(spec, images, labels, f"TFDS {spec.tfds_name}:{'+'.join(splits)}")
    _write_cache(cache, ds)
    return ds
