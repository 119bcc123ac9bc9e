"""Random-access sources of single examples for the streamed pipeline: an ImageFolder,
a TFDS `data_source`, or arrays already in host memory.

Usage::

    train, test = open_sources(get_spec("imagenet"), "/data/imagenet", "auto")
    len(train), train.num_classes           # 1281167, 1000
    pixels = train.read(0)                  # [H, W, 3] uint8 (raises CorruptImage)
    train.labels                            # [N] int32 (TFDS: read once, then cached)

Every source answers `len()`, `read(i)` (the pixels of example i), `label(i)`,
`labels` (all N labels, for the classes-per-batch sampler), `substitute(i, k)` (the k-th
stand-in for an unreadable example i: the next example of its class), `num_classes`,
`describe()` and `fingerprint()` (recorded in checkpoints). Sources are picklable, so
grain's worker processes receive them whole (`data.streaming`).

Letters: N examples, H/W image size, C channels, K classes.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from localjax.data import image_folder, loading, tfds_source
from localjax.data.image_folder import CorruptImage, FolderIndex
from localjax.data.specs import DatasetSpec
from localjax.errors import ConfigError, DatasetError

__all__ = [
    "ArraySource",
    "FolderSource",
    "TfdsSource",
    "open_sources",
    "CorruptImage",
]


class _Source:
    """What the sources share: labels, substitutes for unreadable examples."""

    num_classes: int

    def __len__(self) -> int:
        return int(len(self.labels))

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def substitute(self, i: int, k: int) -> int:
        """The k-th stand-in (k >= 1) for example i: the k-th next example of i's class,
        cyclically (i itself when the class has one example)."""
        members = np.flatnonzero(self.labels == self.labels[i])
        at = int(np.searchsorted(members, i))
        return int(members[(at + k) % len(members)])


class ArraySource(_Source):
    """Examples of a dataset held in host memory (`data.load`), streamed like any other
    (a dataset small enough for the device is normally held there instead).

    Args:
      images: `[N, H, W, C]` uint8.
      labels: `[N]` int labels in [0, num_classes).
      num_classes: K.
      name: for messages and the fingerprint.

    Raises:
      Nothing of its own.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, name: str):
        self.images, self.labels = images, np.asarray(labels, np.int32)
        self.num_classes, self.name = num_classes, name

    def read(self, i: int) -> np.ndarray:
        """Example i's pixels, `[H, W, C]` uint8."""
        return self.images[i]

    def describe(self) -> str:
        """One line: what is streamed."""
        return f"{self.name} from host memory ({len(self)} examples)"

    def fingerprint(self) -> str:
        """SHA-256 of the arrays (`data.fingerprint.fingerprints`)."""
        from localjax.data import fingerprint

        return fingerprint.fingerprints({"x": (self.images, self.labels)})["x"]


class FolderSource(_Source):
    """The files of an ImageFolder split (`image_folder.FolderIndex`), decoded on read.

    Args:
      index: the split's `FolderIndex`.

    Raises:
      Nothing of its own.
    """

    def __init__(self, index: FolderIndex):
        self.index, self.labels = index, index.labels
        self.num_classes = len(index.classes)

    def read(self, i: int) -> np.ndarray:
        """File i decoded to RGB, `[H, W, 3]` uint8.

        Raises:
          CorruptImage: the file cannot be decoded.
        """
        return image_folder.decode_image(self.index.path(i))

    def where(self, i: int) -> str:
        """File i's path (for messages)."""
        return self.index.path(i)

    def describe(self) -> str:
        """One line: the folder, its file and class counts."""
        return f"{self.index.root} ({len(self)} files, {self.num_classes} classes)"

    def fingerprint(self) -> str:
        """`FolderIndex.fingerprint`: the listing's hash."""
        return self.index.fingerprint()


class TfdsSource(_Source):
    """One or more TFDS splits through `tfds.data_source` (random access over ArrayRecord
    files; no TensorFlow needed once prepared), concatenated in order.

    Args:
      tfds_name: e.g. `imagenet2012`, `imagenet_resized/32x32`.
      splits: TFDS split names, concatenated.
      data_dir: TFDS data directory.
      num_classes: K (the spec's).
      download: allow downloading and preparing (needs TensorFlow).
      limit: keep only the first `limit` examples (0 = all).
      cache_dir: where the label array is cached after its one reading pass.

    Raises:
      DatasetError: TFDS missing, or the data not prepared and not preparable here
        (`tfds_source.open_split`'s one line).
    """

    def __init__(
        self,
        tfds_name: str,
        splits: tuple[str, ...],
        data_dir: str | None,
        num_classes: int,
        download: bool = True,
        limit: int = 0,
        cache_dir: str | None = None,
    ):
        self.tfds_name, self.splits, self.data_dir = tfds_name, tuple(splits), data_dir
        self.num_classes, self.cache_dir = num_classes, cache_dir
        self._parts = [tfds_source.open_split(tfds_name, s, data_dir, download) for s in splits]
        self._offsets = np.cumsum([0] + [len(p) for p in self._parts])
        total = int(self._offsets[-1])
        self._n = min(limit, total) if limit else total
        if self._n == 0:
            raise DatasetError(f"TFDS {tfds_name} splits {list(splits)} hold no examples.")
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return self._n

    def _example(self, i: int) -> dict:
        part = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self._parts[part][i - int(self._offsets[part])]

    def read(self, i: int) -> np.ndarray:
        """Example i's `image` feature, `[H, W, C]` uint8 (a 2-D image gets C = 1)."""
        image = np.asarray(self._example(i)["image"], np.uint8)
        return image[..., None] if image.ndim == 2 else image

    def label(self, i: int) -> int:
        return int(self._example(i)["label"]) if self._labels is None else int(self._labels[i])

    @property
    def labels(self) -> np.ndarray:
        """All N labels, `[N]` int32: read once (a pass over the split, which decodes
        every image: slow for imagenet2012), then cached in `cache_dir`."""
        if self._labels is None:
            path = self._labels_path()
            if path and os.path.exists(path):
                labels = np.load(path)
                if labels.shape == (self._n,):
                    self._labels = labels.astype(np.int32)
                    return self._labels
            logging.warning(
                "reading the %d labels of TFDS %s (once: the classes-per-batch sampler needs them)",
                self._n,
                self.tfds_name,
            )
            self._labels = np.fromiter(
                (int(self._example(i)["label"]) for i in range(self._n)), np.int32, self._n
            )
            if path:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                np.save(path, self._labels)
        return self._labels

    def _labels_path(self) -> str | None:
        if not self.cache_dir:
            return None
        name = self.tfds_name.replace("/", "_")
        return os.path.join(self.cache_dir, f"{name}-{'+'.join(self.splits)}-{self._n}-labels.npy")

    def describe(self) -> str:
        """One line: the TFDS name, splits and size."""
        return f"TFDS {self.tfds_name}:{'+'.join(self.splits)} ({self._n} examples)"

    def fingerprint(self) -> str:
        """The TFDS name, splits and example count (the records are not hashed)."""
        return f"tfds:{self.tfds_name}:{'+'.join(self.splits)}:{self._n}"


def _limited(images: np.ndarray, labels: np.ndarray, limit: int):
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def open_sources(
    spec: DatasetSpec,
    data_dir: str | None,
    data_source: str = "auto",
    *,
    download: bool = True,
    train_limit: int = 0,
    test_limit: int = 0,
) -> tuple[_Source, _Source]:
    """The train and test sources of a dataset, for streaming.

    In order, as `data_source` allows: an ImageFolder (`spec.folder_layout`: `data_dir`
    or `data_dir/imagenet` holding `train/` and `val/`; data_source `auto` or `files`);
    the paper's datasets from their files or cache (`data.load`, held in host memory);
    TFDS (`spec.tfds_name` under `data_dir/tfds`; data_source `auto` or `tfds`).

    Args:
      spec: the dataset's spec.
      data_dir: data directory (None: `data.default_data_dir()`).
      data_source: `auto`, `files` or `tfds`.
      download: let TFDS download and prepare.
      train_limit, test_limit: keep only the first N examples of a split (0 = all).

    Returns:
      `(train, test)` sources; their `num_classes` is the folder's class count for an
      ImageFolder (any subset of classes), else `spec.num_classes`.

    Raises:
      ConfigError: an unknown data_source.
      DatasetError: no folder and TFDS cannot supply the data either (one line naming
        both), a folder with missing or mismatched class folders or an empty class, or
        the errors of `data.load`.
    """
    if data_source not in loading.SOURCES:
        raise ConfigError(
            f"unknown data source {data_source!r}; choose one of {list(loading.SOURCES)}."
        )
    base = os.path.expanduser(data_dir) if data_dir else loading.default_data_dir()
    folder_note = ""
    if spec.folder_layout and data_source in ("auto", "files"):
        root = image_folder.find_root(base)
        if root is not None:
            train_index, test_index = image_folder.index_splits(root)
            return (
                FolderSource(train_index.limit(train_limit)),
                FolderSource(test_index.limit(test_limit)),
            )
        folder_note = (
            f"no ImageFolder (train/<class>/*, val/<class>/*) in {base} or {base}/imagenet"
        )
        if data_source == "files":
            raise DatasetError(
                f"{spec.name}: {folder_note}. Point data_dir at the folder holding train/ and "
                "val/, or use data_source='tfds'."
            )
    if spec.file_format:  # the paper's datasets: read whole, streamed from host memory
        splits = []
        for split, limit in (("train", train_limit), ("test", test_limit)):
            ds = loading.load(spec.name, split, data_dir, source=data_source, download=download)
            images, labels = _limited(ds.images, ds.labels, limit)
            splits.append(ArraySource(images, labels, spec.num_classes, f"{spec.name}:{split}"))
        return splits[0], splits[1]
    tfds_dir = os.path.join(base, "tfds")
    cache = os.path.join(base, "localjax_cache")
    try:
        return (
            TfdsSource(
                spec.tfds_name,
                spec.train_splits,
                tfds_dir,
                spec.num_classes,
                download,
                train_limit,
                cache,
            ),
            TfdsSource(
                spec.tfds_name,
                (spec.test_split,),
                tfds_dir,
                spec.num_classes,
                download,
                test_limit,
                cache,
            ),
        )
    except DatasetError as e:
        if not folder_note:
            raise
        raise DatasetError(f"{spec.name}: {folder_note}, and TFDS cannot supply it: {e}") from e
