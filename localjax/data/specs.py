"""Per-dataset facts of METHOD.md's data table: sizes, classes, normalisation,
augmentation, file formats and TFDS names.

Usage::

    spec = get_spec("fashion_mnist")
    spec.image_size, spec.channels, spec.num_classes     # 28, 1, 10
"""

from __future__ import annotations

import dataclasses

from localjax.errors import ConfigError

__all__ = ["DatasetSpec", "SPECS", "MNIST_IDX", "get_spec"]


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
      file_format: a key of `readers.LAYOUTS` (`idx`, `cifar10`, `cifar100`, `svhn`, `stl10`).
      tfds_name: the dataset's name in tensorflow-datasets.
      train_splits: TFDS splits concatenated into our `train` split (SVHN: train + extra).

    Raises:
      Nothing of its own (a frozen dataclass: no validation; assigning a field raises
      `dataclasses.FrozenInstanceError`).

    Records the data table (METHOD.md, Data).
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
    file_format: str = "idx"
    tfds_name: str = ""
    train_splits: tuple[str, ...] = ("train",)


MNIST_IDX = ("train", "t10k")  # file-name prefixes of the MNIST-format IDX files
SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        28,
        1,
        10,
        (0.1307,),
        (0.3081,),
        crop_padding=2,
        idx_prefix=MNIST_IDX,
        tfds_name="mnist",
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
        idx_prefix=MNIST_IDX,
        tfds_name="fashion_mnist",
    ),
    "kuzushiji_mnist": DatasetSpec(
        "kuzushiji_mnist",
        28,
        1,
        10,
        (0.1904,),
        (0.3475,),
        idx_prefix=MNIST_IDX,
        tfds_name="kmnist",
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        32,
        3,
        10,
        (0.424, 0.415, 0.384),
        (0.283, 0.278, 0.284),
        crop_padding=4,
        flip=True,
        file_format="cifar10",
        tfds_name="cifar10",
    ),
    "cifar100": DatasetSpec(
        "cifar100",
        32,
        3,
        100,
        (0.438, 0.418, 0.377),
        (0.300, 0.287, 0.294),
        crop_padding=4,
        flip=True,
        file_format="cifar100",
        tfds_name="cifar100",
    ),
    "svhn": DatasetSpec(
        "svhn",
        32,
        3,
        10,
        (0.431, 0.430, 0.446),
        (0.197, 0.198, 0.199),
        file_format="svhn",
        tfds_name="svhn_cropped",
        train_splits=("train", "extra"),
    ),
    "stl10": DatasetSpec(
        "stl10",
        96,
        3,
        10,
        (0.447, 0.440, 0.407),
        (0.260, 0.257, 0.271),
        file_format="stl10",
        tfds_name="stl10",
    ),
}

# other spellings users type -> registry name
_ALIASES = {
    "kmnist": "kuzushiji_mnist",
    "svhn_cropped": "svhn",
    "fmnist": "fashion_mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
}


def get_spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a dataset name (METHOD.md's data table).

    Args:
      name: a key of `SPECS`, or a common other spelling (`kmnist`, `svhn_cropped`).

    Returns:
      The spec.

    Raises:
      ConfigError (a ValueError): for an unknown name, listing the known ones.
    """
    name = _ALIASES.get(name, name)
    if name not in SPECS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(SPECS)}.")
    return SPECS[name]
