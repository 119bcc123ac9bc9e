"""What data a run trains on: fingerprints of the loaded arrays, and the published
checksums of the datasets' files.

Usage::

    data = fingerprint.fingerprints({"train": train, "test": test})   # {"train": hex, ...}
    fingerprint.check_published("fashion_mnist", "train", paths, train)   # after reading files

`fingerprints` hashes the uint8 pixels and the labels of each split (SHA-256, ~1 s/GB);
a checkpoint records it, and a resume onto other data is refused (`training.resume`).

`check_published` compares local IDX files with the dataset's published files: it warns
(one log line) when they differ, and raises `DatasetError` when they are another dataset's
published files (Fashion-MNIST's files run as `mnist`). Only checksums that could be
verified are listed (`PUBLISHED`): MNIST and Kuzushiji-MNIST publish none, so their files
are only checked for being another dataset's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from localjax.errors import DatasetError

__all__ = ["PUBLISHED", "fingerprints", "idx_sha256", "check_published"]

# Per dataset and IDX file (name without .gz): (sha256 of the decompressed file, as
# `zcat FILE.gz | sha256sum` prints it; md5 of the published FILE.gz).
#
# fashion_mnist: the md5s are those the dataset publishes (README.md of
# github.com/zalandoresearch/fashion-mnist, "MD5 Checksum" column; also in Debian's
# /usr/share/doc/dataset-fashion-mnist/README.md.gz). The sha256s were computed from
# Debian's dataset-fashion-mnist files (0.0~git20200523.55506a9-1), which are recompressed
# (their .gz md5s differ) but decompress to the same bytes: checked for both label files
# against the repository's .gz files (whose md5s match the README); the repository's image
# .gz files could not be fetched to compare, so an image file is also accepted by its md5.
PUBLISHED: dict[str, dict[str, tuple[str, str]]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "25c81989df183df01b3e8a0aad5dffbe",
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "bef4ecab320f06d8554ea6380940ec79",
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
    },
}

# digest -> (dataset, file name), for naming whose files were loaded
_OWNERS: dict[str, tuple[str, str]] = {
    digest: (name, file)
    for name, files in PUBLISHED.items()
    for file, digests in files.items()
    for digest in digests
}


def fingerprints(splits: Mapping[str, object]) -> dict[str, str]:
    """SHA-256 of each split's images and labels (shapes, dtypes and bytes).

    Args:
      splits: split name -> a `Dataset` (or any `(images, labels)` pair of arrays), as
        trained on (after any example limit).

    Returns:
      `{split: hex digest}`, str values: equal exactly when the arrays are equal.

    Raises:
      Nothing of its own.
    """
    out = {}
    for split, (images, labels) in splits.items():
        h = hashlib.sha256()
        for array in (images, labels):
            array = np.ascontiguousarray(array)
            h.update(f"{array.dtype.str}{array.shape};".encode())
            h.update(memoryview(array).cast("B"))
        out[split] = h.hexdigest()
    return out


def idx_sha256(array: np.ndarray) -> str:
    """SHA-256 of `array` written as an uncompressed uint8 IDX file (header and data):
    what `zcat FILE.gz | sha256sum` prints for the file it was read from.

    Args:
      array: uint8 values (any integer array within 0..255 is converted).

    Returns:
      hex digest, str.

    Raises:
      Nothing of its own.
    """
    array = np.ascontiguousarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    h = hashlib.sha256(header)
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def check_published(name: str, split: str, paths: Sequence[str], dataset) -> None:
    """Checks one split's IDX files against the published files of the datasets.

    Args:
      name: the dataset they were loaded as (a key of `SPECS`).
      split: `train` or `test`.
      paths: the split's `(images, labels)` IDX files, as `readers.find_files` returns them.
      dataset: what was read from them: images `[N, H, W, 1]` and labels `[N]`, uint8
        values.

    Returns:
      None. Logs one warning line when `name` has published checksums and the files
      differ from them (modified, truncated to fewer examples, or other data).

    Raises:
      DatasetError: the files are another dataset's published files.
    """
    arrays = (dataset.images[..., 0], dataset.labels)
    found: dict[str, tuple[str, str] | None] = {}
    for path, array in zip(paths, arrays, strict=True):
        digest = idx_sha256(array)
        owner = _OWNERS.get(digest)
        if owner is None and path.endswith(".gz"):
            owner = _OWNERS.get(_md5(path))
        found[path] = owner
    for path, owner in found.items():
        if owner is not None and owner[0] != name:
            raise DatasetError(
                f"{path} is {owner[0]}'s published {owner[1]} (its checksum matches), not "
                f"a {name} file: the files in {os.path.dirname(path)} are another dataset's. "
                f"Use --config.dataset={owner[0]}, or point data_dir at {name}'s files."
            )
    if name not in PUBLISHED:
        return
    differ = [
        path
        for path, owner in found.items()
        if owner != (name, os.path.basename(path).removesuffix(".gz"))
    ]
    if differ:
        logging.warning(
            "%s %s split: %s differ%s from the published %s files (checksums); results may "
            "not be comparable with published ones. Re-download the dataset if that is "
            "not intended.",
            name,
            split,
            ", ".join(differ),
            "s" if len(differ) == 1 else "",
            name,
        )
