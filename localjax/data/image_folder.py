"""ImageFolder-style datasets: `ROOT/train/<class>/*.JPEG` and `ROOT/val/<class>/*.JPEG`,
and decoding one image file to RGB pixels.

Usage::

    root = find_root("/data/imagenet")               # the folder holding train/ and val/
    train, val = index_splits(root)                  # FolderIndex: files, labels, classes
    train.classes[:2], len(train), train.labels.dtype   # ('n01440764', ...), 1281167, int32
    pixels = decode_image(train.path(0))             # [H, W, 3] uint8, RGB

As torchvision's `datasets.ImageFolder` (the reference's ImageNet loader): the classes are
the sorted names of the sub-folders of `train/` (so any image-classification folder, or a
subset of ImageNet's classes, works), label k is the k-th class, and each class's files
are found recursively (following links), in sorted order, keeping the image extensions
ImageFolder keeps. Folders whose name starts with '.' (`.ipynb_checkpoints`, `.cache`)
are not classes. `val/` must hold the same classes.

Only file names are read up front (one directory listing per class folder: seconds for
ImageNet's 1.28 M files); the pixels are decoded by the input pipeline's workers
(`data.streaming`). A file that cannot be decoded there raises `CorruptImage`, which the
pipeline counts, logs and replaces (docs/datasets.md, "Corrupt images").
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from localjax.errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_FOLDERS",
    "FolderIndex",
    "CorruptImage",
    "find_root",
    "list_classes",
    "index_split",
    "index_splits",
    "decode_image",
]

# the extensions torchvision's ImageFolder accepts (compared case-insensitively)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# our split name -> the folder it is read from
SPLIT_FOLDERS = {"train": "train", "test": "val"}


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """The files of one split of an ImageFolder-style dataset.

    Attributes:
      root: the split's folder (e.g. `/data/imagenet/train`), absolute.
      classes: the class names (sorted folder names); label k is `classes[k]`.
      files: `[N]` file paths relative to `root`, as UTF-8 bytes (a NumPy `S` array: about
        40 bytes per ImageNet file, cheap to send to worker processes), grouped by class,
        sorted within.
      labels: `[N]` int32 labels in [0, K).

    `len(index)` is N; `index.path(i)` is file i's absolute path.

    Raises:
      Nothing of its own (built and checked by `index_split`).
    """

    root: str
    classes: tuple[str, ...]
    files: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> str:
        """The absolute path of file i (0 <= i < N)."""
        return os.path.join(self.root, self.files[i].decode())

    def limit(self, n: int) -> FolderIndex:
        """The first n files (all when n is 0 or at least N); the classes stay all K."""
        if not n or n >= len(self):
            return self
        return dataclasses.replace(self, files=self.files[:n], labels=self.labels[:n])

    def fingerprint(self) -> str:
        """SHA-256 of the class names, the relative file paths and the labels: equal for
        the same listing wherever the folder now lives (file contents are not read).

        Returns:
          A hex digest, str.
        """
        h = hashlib.sha256()
        h.update(("\0".join(self.classes) + "\1").encode())
        h.update(f"{self.files.dtype.str}{self.files.shape};".encode())
        h.update(np.ascontiguousarray(self.files).tobytes())
        h.update(np.ascontiguousarray(self.labels, np.int32).tobytes())
        return h.hexdigest()


class CorruptImage(Exception):
    """An image file that cannot be decoded (truncated, not an image, unreadable).

    Attributes:
      path: the file.
      reason: one line: the decoder's or the OS's error.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def find_root(data_dir: str, names: tuple[str, ...] = ("imagenet", "ImageNet")) -> str | None:
    """The folder that holds `train/` and `val/`: `data_dir` itself or `data_dir/<name>`.

    Args:
      data_dir: where to look.
      names: sub-folder names tried after `data_dir` itself.

    Returns:
      The absolute path, or None when neither `data_dir` nor any `data_dir/<name>` has a
      `train/` folder.

    Raises:
      Nothing of its own.
    """
    for candidate in (data_dir, *(os.path.join(data_dir, n) for n in names)):
        if os.path.isdir(os.path.join(candidate, SPLIT_FOLDERS["train"])):
            return os.path.abspath(candidate)
    return None


def list_classes(split_dir: str) -> tuple[str, ...]:
    """The class names of one split folder: its sub-folders, sorted (as ImageFolder).

    Args:
      split_dir: e.g. `ROOT/train`.

    Returns:
      The sorted names, a tuple of str (folders starting with '.' left out).

    Raises:
      DatasetError: the folder does not exist or holds no class folder.
    """
    if not os.path.isdir(split_dir):
        raise DatasetError(
            f"no folder {split_dir}: an ImageFolder dataset needs ROOT/train/<class>/* and "
            "ROOT/val/<class>/*; point data_dir at ROOT."
        )
    with os.scandir(split_dir) as entries:
        classes = sorted(
            e.name for e in entries if e.is_dir(follow_symlinks=True) and not e.name.startswith(".")
        )
    if not classes:
        raise DatasetError(
            f"{split_dir} holds no class folders: put each class's images in "
            f"{split_dir}/<class name>/."
        )
    return tuple(classes)


def _class_files(class_dir: str) -> list[str]:
    """The image files under one class folder, recursively, in ImageFolder's order."""
    found = []
    for folder, subdirs, files in sorted(os.walk(class_dir, followlinks=True)):
        subdirs.sort()
        found.extend(
            os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


def index_split(root: str, split: str, classes: tuple[str, ...] | None = None) -> FolderIndex:
    """Lists one split's image files and labels.

    Args:
      root: the folder holding `train/` and `val/`.
      split: `train` (folder `train/`) or `test` (folder `val/`).
      classes: the class names the labels refer to (those of `train/`, for `val/`); None
        reads them from this split's folder.

    Returns:
      A `FolderIndex`.

    Raises:
      ValueError: an unknown split.
      DatasetError: the split's folder is missing, holds no class folder, other classes
        than `classes` (names the first few missing and extra ones), or a class folder
        without an image file.
    """
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_FOLDERS)}.")
    split_dir = os.path.join(os.path.abspath(root), SPLIT_FOLDERS[split])
    found = list_classes(split_dir)
    if classes is not None and found != tuple(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise DatasetError(
            f"{split_dir} has other classes than {os.path.dirname(split_dir)}/train: "
            f"{len(missing)} missing ({', '.join(missing[:3]) or 'none'}), {len(extra)} extra "
            f"({', '.join(extra[:3]) or 'none'}). Both splits need the same class folders."
        )
    paths, labels = [], []
    for label, name in enumerate(found):
        files = _class_files(os.path.join(split_dir, name))
        if not files:
            raise DatasetError(
                f"class folder {os.path.join(split_dir, name)} holds no image file "
                f"({', '.join(IMAGE_EXTENSIONS)}). Add its images or remove the folder "
                "(from train/ and val/ alike)."
            )
        paths.extend(os.path.relpath(f, split_dir).encode() for f in files)
        labels.extend([label] * len(files))
    return FolderIndex(split_dir, found, np.asarray(paths, np.bytes_), np.asarray(labels, np.int32))


def index_splits(root: str) -> tuple[FolderIndex, FolderIndex]:
    """Both splits of an ImageFolder dataset, with `val/`'s classes checked against
    `train/`'s.

    Args:
      root: the folder holding `train/` and `val/`.

    Returns:
      `(train, test)` `FolderIndex`es sharing one class list.

    Raises:
      DatasetError: as `index_split`, for either split.
    """
    train = index_split(root, "train")
    return train, index_split(root, "test", train.classes)


def decode_image(path: str) -> np.ndarray:
    """Reads one image file as RGB pixels.

    Grayscale (mode L), CMYK, palette and RGBA images are converted to RGB with PIL's
    `convert("RGB")`, as the reference's loader does (torchvision's `pil_loader`).

    Args:
      path: an image file.

    Returns:
      `[H, W, 3]` uint8.

    Raises:
      CorruptImage: the file is missing, unreadable, truncated or not an image.
    """
    from PIL import Image  # only the input pipeline's workers need PIL

    try:
        with Image.open(path) as image:
            image.load()  # decodes now: a truncated file fails here, not later
            return np.asarray(image.convert("RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        text = str(e).strip().splitlines()
        raise CorruptImage(str(path), f"{type(e).__name__}: {text[0] if text else ''}") from e
