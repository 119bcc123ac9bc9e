"""The paper's datasets through tensorflow-datasets (optional extra `pip install -e .[tfds]`).

Usage::

    if available():
        images, labels = load_tfds("cifar10", ("train",), data_dir="/data/tfds")

Reads through `tfds.data_source` (random access over ArrayRecord files), which needs no
TensorFlow once a dataset is prepared; *preparing* (download + conversion) needs it
(`tensorflow-cpu`). `data.load` calls this once per split and caches the arrays as `.npz`,
so later runs need neither. `tfds.testing.mock_data` also works through this route without
TensorFlow, which is how the tests exercise it.

Letters: N examples, H/W image size, C channels (NHWC).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging as std_logging
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from localjax.errors import DatasetError

__all__ = ["available", "load_tfds", "open_split", "INSTALL_HINT"]

INSTALL_HINT = (
    "pip install -e '.[tfds]' (tensorflow-datasets, importlib_resources and tensorflow-cpu, "
    "which TFDS needs to download and prepare a dataset once)"
)


def available() -> bool:
    """Whether `tensorflow_datasets` can be imported (TensorFlow itself is not needed).

    Returns:
      Python bool, True if the package is installed.

    Raises:
      Nothing of its own.

    TFDS is the source for downloaded datasets (DESIGN.md, Decisions: data on device;
    modules: data.py).
    """
    return importlib.util.find_spec("tensorflow_datasets") is not None


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


@contextlib.contextmanager
def _quiet_probe():
    """Mutes TFDS's absl warnings while probing for prepared data: a miss is expected
    (e.g. "Variant folder ... has no dataset_info.json") and is reported as a DatasetError."""
    logger = logging.get_absl_logger()
    level = logger.level
    logger.setLevel(std_logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _open_split(tfds, name: str, split: str, data_dir: str | None, download: bool):
    """`tfds.data_source` of one split: first without downloading (data already prepared
    or mocked: no network, which offline would retry for minutes), then, if allowed, with."""
    try:
        with _quiet_probe():
            return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as local_error:  # TFDS raises several types for "not prepared"
        if not download:
            folder = os.path.join(data_dir or "~/tensorflow_datasets", name)
            why = (
                f"there is no folder {folder}"
                if data_dir and not os.path.isdir(folder)
                else f"{type(local_error).__name__}: {local_error}"
            )
            raise DatasetError(
                f"TFDS dataset {name!r} split {split!r} is not prepared in {data_dir!r} "
                f"({why}). Allow downloading (load(..., download=True)), or prepare it once "
                "where there is network and copy the folder here."
            ) from local_error
        if not _has_tensorflow():
            raise DatasetError(
                f"TFDS dataset {name!r} is not prepared in {data_dir!r}, and preparing it "
                f"needs TensorFlow, which is not installed: {INSTALL_HINT}."
            ) from local_error
    logging.warning("TFDS: downloading and preparing %s into %s", name, data_dir)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=True)
    except Exception as e:
        raise DatasetError(
            f"TFDS could not download or prepare {name!r} into {data_dir!r} "
            f"({type(e).__name__}: {e}). Check the network, or use local files instead "
            "(README.md, section 'Datasets'). A folder already prepared by `tfds.load` in "
            "TFRecord format cannot be read this way: use another data_dir."
        ) from e


def open_split(name: str, split: str, data_dir: str | None, download: bool = True):
    """The random-access `tfds.data_source` of one split, for streaming (no copy in memory).

    Tries the prepared (or mocked) data first without touching the network, then, if
    `download`, downloads and prepares it (which needs TensorFlow).

    Args:
      name: TFDS name, e.g. `imagenet2012`, `imagenet_resized/32x32`, `imagenette`.
      split: TFDS split, e.g. `train`, `validation`.
      data_dir: TFDS data directory (None: TFDS's default).
      download: allow downloading and preparing.

    Returns:
      A sequence-like data source: `len(source)`, `source[i]` -> dict of NumPy features
      (`image` `[H, W, C]` uint8 decoded, `label` int64).

    Raises:
      DatasetError: TFDS missing, or the data not prepared here and not allowed or not
        able to be prepared (one line naming the folder looked in and the fix).
    """
    if not available():
        raise DatasetError(f"tensorflow-datasets is not installed: {INSTALL_HINT}.")
    import tensorflow_datasets as tfds

    return _open_split(tfds, name, split, data_dir, download)


def load_tfds(
    name: str, splits: Sequence[str], data_dir: str | None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Reads TFDS splits into memory, concatenated in the given order.

    Implements the TFDS route of METHOD.md's data table (e.g. SVHN train = `train` +
    `extra` of `svhn_cropped`).

    Args:
      name: TFDS name (`mnist`, `fashion_mnist`, `kmnist`, `cifar10`, `cifar100`,
        `svhn_cropped`, `stl10`).
      splits: TFDS split names to concatenate, e.g. `("train", "extra")`.
      data_dir: TFDS data directory (None: TFDS's default).
      download: allow downloading and preparing when the data is not there yet.

    Returns:
      images `[N, H, W, C]` uint8 (the `image` feature), labels `[N]` int64 (`label`;
      CIFAR-100's is the fine label).

    Raises:
      DatasetError: TFDS missing, the data not prepared (and not allowed or not able to
        prepare it), or examples without `image`/`label`.
    """
    if not available():
        raise DatasetError(f"tensorflow-datasets is not installed: {INSTALL_HINT}.")
    import tensorflow_datasets as tfds

    images, labels = [], []
    for split in splits:
        source = _open_split(tfds, name, split, data_dir, download)
        n = len(source)
        logging.info("TFDS: reading %d examples of %s:%s", n, name, split)
        if n == 0:
            continue
        first = source[0]
        if "image" not in first or "label" not in first:
            raise DatasetError(
                f"TFDS {name}:{split} examples have features {sorted(first)}; "
                "expected 'image' and 'label'."
            )
        x = np.empty((n, *np.shape(first["image"])), np.uint8)
        y = np.empty((n,), np.int64)
        for i in range(n):  # one example at a time: the mock has no batched read
            example = first if i == 0 else source[i]
            x[i] = example["image"]
            y[i] = example["label"]
        images.append(x)
        labels.append(y)
    if not images:
        raise DatasetError(f"TFDS {name} splits {list(splits)} hold no examples.")
    return np.concatenate(images), np.concatenate(labels)
