"""Readers for the on-disk formats the paper's datasets ship in; no TensorFlow needed.

Usage::

    layout = LAYOUTS["cifar10"]
    paths = find_files(layout, "train", ["/data", "/data/cifar-10-batches-py"])
    images, labels = read_files(layout, paths)   # [N, 32, 32, 3] uint8, [N] int64

Formats (METHOD.md, Data; README.md, section 'Datasets', says where to get them):

| format     | files (train / test)                                   | labels         |
| ---------- | ------------------------------------------------------ | -------------- |
| `idx`      | `train-{images-idx3,labels-idx1}-ubyte[.gz]` / `t10k-…` | 0..9           |
| `cifar10`  | `data_batch_1` … `data_batch_5` / `test_batch` (pickle) | 0..9           |
| `cifar100` | `train` / `test` (pickle, `fine_labels`)               | 0..99          |
| `svhn`     | `train_32x32.mat` + `extra_32x32.mat` / `test_32x32.mat` | 1..10, 10 = 0 |
| `stl10`    | `train_X.bin`, `train_y.bin` / `test_X.bin`, `test_y.bin` | 1..10         |

Letters: N examples, H/W image size, C channels (NHWC). Every reader returns images as
`[N, H, W, C]` uint8 and labels as `[N]` integers already shifted to start at 0; the caller
(`data.load`) checks shapes and label ranges against the dataset's spec.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from localjax.errors import DatasetError

__all__ = [
    "DatasetError",
    "FileLayout",
    "LAYOUTS",
    "read_idx",
    "read_cifar_batch",
    "read_svhn_mat",
    "read_stl10",
    "idx_files",
    "find_files",
    "read_files",
]


# ------------------------------------------------------------------ IDX files
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# Debian packages that install dataset files (`apt-get install --reinstall` restores them)
_DEBIAN_PACKAGES = {"/usr/share/datasets/fashion-mnist": "dataset-fashion-mnist"}


def _refetch_hint(path: str) -> str:
    """How to get a good copy of a damaged data file: re-download, or reinstall its package."""
    directory = os.path.dirname(os.path.abspath(path))
    package = _DEBIAN_PACKAGES.get(directory)
    if package:
        return (
            f"Reinstall the Debian package that ships it: `apt-get install --reinstall "
            f"{package}` (or re-download the file elsewhere and point data_dir there)."
        )
    return "Re-download the file (docs/datasets.md says where from)."


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST family's format), gzip-compressed or raw.

    Implements the file format of MNIST, Fashion-MNIST and Kuzushiji-MNIST (METHOD.md, Data).

    Args:
      path: file path; a `.gz` suffix means gzip.

    Returns:
      An array of the header's shape and dtype (uint8 for MNIST images `[N, 28, 28]` and
      labels `[N]`).

    Raises:
      DatasetError: if the file is missing or unreadable, a `.gz` file is not a valid
        gzip stream (truncated or damaged; the message says how to get it again), its
        magic number is not IDX, or its size does not match the header.
    """
    if not os.path.exists(path):
        raise DatasetError(f"IDX file not found: {path}")
    compressed = path.endswith(".gz")
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # cut short, damaged, not gzip
        kind = "zlib.error" if isinstance(e, zlib.error) else type(e).__name__
        raise DatasetError(
            f"cannot read {path}: the file is corrupt, not a valid gzip stream ({kind}: {e}); "
            "it was cut short or damaged, e.g. by an interrupted download. "
            f"{_refetch_hint(path)}"
        ) from e
    except OSError as e:  # permissions, a directory, an I/O error: not the file's content
        raise DatasetError(
            f"cannot read {path}: {e.strerror or e}. Check that it is a readable file."
        ) from e
    if not raw:
        raise DatasetError(
            f"{path} is empty{' once decompressed' if compressed else ''}: it was cut short, "
            f"e.g. by an interrupted download. {_refetch_hint(path)}"
        )
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex()}); "
            f"expected 0x0000 then a type code and the number of dimensions. {_refetch_hint(path)}"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated inside its header. {_refetch_hint(path)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(
            f"{path} has {len(raw)} bytes but its header {shape} needs {expected}: "
            f"the file is truncated or corrupt. {_refetch_hint(path)}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _read_idx_pair(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3:
        raise DatasetError(
            f"{paths[0]}: IDX images have shape {images.shape}; expected [N, H, W]. "
            "Is this an images file (idx3)?"
        )
    return images[..., None], labels  # [N, H, W] -> [N, H, W, 1]


# ------------------------------------------------------------------ CIFAR pickles
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches, refusing any object but NumPy arrays (pickles can
    run code; this keeps a tampered file from doing so)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: str, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Reads one batch of the CIFAR "python version" (a pickled dict).

    Implements the CIFAR-10/100 file format (METHOD.md, Data: CIFAR10, CIFAR100). Each
    file holds `data`: `[N, 3072]` uint8, rows of 1024 red, 1024 green, 1024 blue values
    (row-major 32x32), and a list of labels under `label_key`.

    Args:
      path: a batch file (`data_batch_1`, `test_batch`, or CIFAR-100's `train`/`test`).
      label_key: `labels` (CIFAR-10) or `fine_labels` (CIFAR-100, the 100 classes).

    Returns:
      images `[N, 32, 32, 3]` uint8, labels `[N]` int64.

    Raises:
      DatasetError: missing, truncated or not a CIFAR batch (wrong keys or sizes).
    """
    if not os.path.exists(path):
        raise DatasetError(f"CIFAR batch not found: {path}")
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DatasetError(
            f"{path} is not a readable CIFAR python batch ({type(e).__name__}: {e}); "
            "the file is truncated or corrupt. Re-download and re-extract the archive."
        ) from e
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(batch).__name__}.")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DatasetError(
            f"{path}: a CIFAR batch needs keys 'data' and {label_key!r}, found "
            f"{sorted(batch)}. CIFAR-10 and CIFAR-100 files are not interchangeable."
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{path}: 'data' has shape {data.shape} and dtype {data.dtype}; "
            "expected [N, 3072] uint8 (3 x 32 x 32 per row)."
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, C, H, W] -> NHWC
    return images, labels


def _read_cifar10(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(p, "labels") for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_cifar100(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return read_cifar_batch(paths[0], "fine_labels")


# ------------------------------------------------------------------ SVHN .mat
def _shifted_labels(labels: np.ndarray, where: str, zero_label: int | None) -> np.ndarray:
    """1..10 file labels -> 0..9; `zero_label` (SVHN: 10) marks digit 0 instead of 1 -> 0."""
    labels = labels.astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DatasetError(
            f"{where}: labels span [{labels.min()}, {labels.max()}] but the file format "
            "stores classes as 1..10. Is this the right file?"
        )
    return labels % 10 if zero_label == 10 else labels - 1


def read_svhn_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one SVHN "format 2" (cropped digits) MATLAB file, e.g. `train_32x32.mat`.

    Implements the SVHN file format (METHOD.md, Data: SVHN). The file holds `X`:
    `[32, 32, 3, N]` uint8 and `y`: `[N, 1]` with labels 1..10, where 10 is digit 0.

    Args:
      path: a `*_32x32.mat` file (MATLAB v5, read with `scipy.io.loadmat`).

    Returns:
      images `[N, 32, 32, 3]` uint8, labels `[N]` int64 in 0..9 (10 mapped to 0).

    Raises:
      DatasetError: missing, unreadable, or `X`/`y` of the wrong shape or range.
    """
    if not os.path.exists(path):
        raise DatasetError(f"SVHN file not found: {path}")
    import scipy.io  # a dependency of jax; imported here to keep `import localjax` light

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises ValueError, MatReadError, OSError, ...
        raise DatasetError(
            f"{path} is not a readable SVHN .mat file ({type(e).__name__}: {e}); "
            "the file is truncated or corrupt. Re-download it."
        ) from e
    if "X" not in mat or "y" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path}: an SVHN file needs variables 'X' and 'y', found {keys}.")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(
            f"{path}: 'X' has shape {x.shape}; SVHN format 2 stores [32, 32, 3, N]. "
            "Use the cropped-digit files *_32x32.mat, not format 1."
        )
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2), dtype=np.uint8)  # HWCN -> NHWC
    return images, _shifted_labels(y, path, zero_label=10)


def _read_svhn(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_svhn_mat(p) for p in paths]  # train split: train + extra
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ------------------------------------------------------------------ STL-10 binaries
_STL_SIDE = 96
_STL_BYTES = 3 * _STL_SIDE * _STL_SIDE


def read_stl10(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads an STL-10 binary split (`train_X.bin` + `train_y.bin`, or the test pair).

    Implements the STL-10 file format (METHOD.md, Data: STL10, 96 px). Images are raw
    uint8, 3 x 96 x 96 each, every channel stored column-major (the row index runs
    fastest); labels are one uint8 each, 1..10.

    Args:
      images_path: `*_X.bin`.
      labels_path: `*_y.bin`.

    Returns:
      images `[N, 96, 96, 3]` uint8, labels `[N]` int64 in 0..9.

    Raises:
      DatasetError: missing files, an images file whose size is not a whole number of
        images, a count mismatch, or labels outside 1..10.
    """
    for path in (images_path, labels_path):
        if not os.path.exists(path):
            raise DatasetError(f"STL-10 file not found: {path}")
    raw = np.fromfile(images_path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _STL_BYTES:
        raise DatasetError(
            f"{images_path} has {raw.size} bytes, not a whole number of "
            f"{_STL_BYTES}-byte 3x96x96 images: the file is truncated or corrupt. Re-download it."
        )
    labels = np.fromfile(labels_path, dtype=np.uint8)
    n = raw.size // _STL_BYTES
    if labels.size != n:
        raise DatasetError(
            f"{labels_path} holds {labels.size} labels but {images_path} holds {n} images."
        )
    # [N, C, W, H] (column-major per channel) -> [N, H, W, C]
    images = raw.reshape(n, 3, _STL_SIDE, _STL_SIDE).transpose(0, 3, 2, 1)
    return np.ascontiguousarray(images), _shifted_labels(labels, labels_path, zero_label=None)


# ------------------------------------------------------------------ layouts
@dataclasses.dataclass(frozen=True)
class FileLayout:
    """Where a format's files live and how to read them.

    Attributes:
      subdir: the folder the official archive extracts to (also searched under data_dir).
      files: split -> file names needed, in reading order.
      gz_ok: names may also carry a `.gz` suffix (IDX).
      read: paths -> (images `[N, H, W, C]` uint8, labels `[N]` int in [0, K)).

    Raises:
      Nothing of its own (a frozen dataclass; no validation).

    Describes the published file formats (DESIGN.md, Decisions: data on device; the IDX
    reader serves local files; METHOD.md, Data).
    """

    subdir: str
    files: dict[str, tuple[str, ...]]
    read: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]
    gz_ok: bool = False


def idx_files(prefix: tuple[str, str]) -> dict[str, tuple[str, ...]]:
    """IDX file names per split from the (train, test) prefixes, e.g. ("train", "t10k").

    Args:
      prefix: the file-name prefixes of the train and test files.

    Returns:
      `{"train": (images, labels), "test": (images, labels)}` names (str) without `.gz`.

    Raises:
      ValueError: `prefix` does not hold exactly two entries (`zip(..., strict=True)`).

    The IDX file names (DESIGN.md, Decisions: data on device; the IDX reader serves local files).
    """
    return {
        split: (f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte")
        for split, p in zip(("train", "test"), prefix, strict=True)
    }


LAYOUTS: dict[str, FileLayout] = {
    "idx": FileLayout(
        subdir="",  # the dataset's name; see `find_files`
        files=idx_files(("train", "t10k")),
        read=_read_idx_pair,
        gz_ok=True,
    ),
    "cifar10": FileLayout(
        subdir="cifar-10-batches-py",
        files={
            "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test": ("test_batch",),
        },
        read=_read_cifar10,
    ),
    "cifar100": FileLayout(
        subdir="cifar-100-python",
        files={"train": ("train",), "test": ("test",)},
        read=_read_cifar100,
    ),
    "svhn": FileLayout(
        subdir="svhn",
        files={"train": ("train_32x32.mat", "extra_32x32.mat"), "test": ("test_32x32.mat",)},
        read=_read_svhn,
    ),
    "stl10": FileLayout(
        subdir="stl10_binary",
        files={"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")},
        read=lambda paths: read_stl10(*paths),
    ),
}


def _locate(directory: str, name: str, gz_ok: bool) -> str | None:
    for suffix in (".gz", "") if gz_ok else ("",):
        path = os.path.join(directory, name + suffix)
        if os.path.isfile(path):
            return path
    return None


def find_files(layout: FileLayout, split: str, directories: Sequence[str]) -> list[str] | None:
    """The paths of one split's files in the first directory that holds all of them.

    Args:
      layout: a value of `LAYOUTS` (or one with other file names).
      split: `train` or `test`.
      directories: where to look, in order.

    Returns:
      The paths (list of str) in the layout's reading order, or None if no directory
      has them all.

    Raises:
      KeyError: `split` is not a key of `layout.files`.

    Finds local files (DESIGN.md, Decisions: data on device; the IDX reader serves local files).
    """
    for directory in directories:
        paths = [_locate(directory, n, layout.gz_ok) for n in layout.files[split]]
        if None not in paths:
            return paths  # type: ignore[return-value]
    return None


def read_files(layout: FileLayout, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads a split found by `find_files`.

    Args:
      layout: the layout given to `find_files`.
      paths: the split's files, as `find_files` returns them.

    Returns:
      images `[N, H, W, C]` uint8, labels `[N]` integers starting at 0.

    Raises:
      DatasetError: a file is missing, truncated, corrupt or of the wrong format.

    Reads local files (DESIGN.md, Decisions: data on device; the IDX reader serves local
    files; METHOD.md, Data).
    """
    return layout.read(paths)
