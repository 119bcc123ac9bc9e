"""Per-dataset facts of METHOD.md's data table: sizes, classes, normalisation,
augmentation, file formats and TFDS names.

Usage::

    spec = get_spec("fashion_mnist")
    spec.image_size, spec.channels, spec.num_classes     # 28, 1, 10
    get_spec("imagenet").variable_size                    # True: JPEGs, streamed

`PAPER_DATASETS` are the paper's seven (METHOD.md's data table); the ImageNet family
(`imagenet`, `imagenet_resized_32`, `imagenet_resized_64`, `imagenette`) are the
reference's `--dataset ImageNet` and its usual stand-ins, streamed when large
(`localjax.data.streaming`, docs/datasets.md).
"""

from __future__ import annotations

import dataclasses

from localjax.errors import ConfigError

__all__ = [
    "DatasetSpec",
    "SPECS",
    "PAPER_DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_IDX",
    "get_spec",
]


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
      test_split: the TFDS split evaluated on (`validation` for the ImageNet family).
      variable_size: images of any size (JPEG): decoded, cropped and resized on the host
        (`data.transforms`) to `image_size`, the default training resolution (a run's
        `image_size` config field overrides it); such a dataset is always streamed.
      folder_layout: can be read from an ImageFolder-style folder (`train/<class>/*`,
        `val/<class>/*`; `data.image_folder`).
      num_train: published size of the training split (chooses between the in-memory
        and the streamed pipeline before anything is read); 0 = small.

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
    test_split: str = "test"
    variable_size: bool = False
    folder_layout: bool = False
    num_train: int = 0


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the reference's ImageNet Normalize
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    # The ImageNet family: the reference's `--dataset ImageNet` (RandomResizedCrop(224) +
    # flip for training, Resize(256) + CenterCrop(224) for evaluation) and its stand-ins.
    "imagenet": DatasetSpec(
        "imagenet",
        224,
        3,
        1000,
        IMAGENET_MEAN,
        IMAGENET_STD,
        flip=True,
        file_format="",
        tfds_name="imagenet2012",
        test_split="validation",
        variable_size=True,
        folder_layout=True,
        num_train=1_281_167,
    ),
    "imagenette": DatasetSpec(
        "imagenette",
        224,
        3,
        10,
        IMAGENET_MEAN,
        IMAGENET_STD,
        flip=True,
        file_format="",
        tfds_name="imagenette",
        test_split="validation",
        variable_size=True,
        folder_layout=True,
        num_train=9_469,
    ),
    # downsampled ImageNet (Chrabaszcz et al. 2017): fixed size, so augmented on the
    # device like CIFAR (pad 4, random crop, flip)
    "imagenet_resized_32": DatasetSpec(
        "imagenet_resized_32",
        32,
        3,
        1000,
        IMAGENET_MEAN,
        IMAGENET_STD,
        crop_padding=4,
        flip=True,
        file_format="",
        tfds_name="imagenet_resized/32x32",
        test_split="validation",
        num_train=1_281_167,
    ),
    "imagenet_resized_64": DatasetSpec(
        "imagenet_resized_64",
        64,
        3,
        1000,
        IMAGENET_MEAN,
        IMAGENET_STD,
        crop_padding=4,
        flip=True,
        file_format="",
        tfds_name="imagenet_resized/64x64",
        test_split="validation",
        num_train=1_281_167,
    ),
}
# the paper's seven (METHOD.md's data table): local files in their published formats
PAPER_DATASETS = (
    "mnist",
    "fashion_mnist",
    "kuzushiji_mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "stl10",
)

# other spellings users type -> registry name
_ALIASES = {
    "kmnist": "kuzushiji_mnist",
    "svhn_cropped": "svhn",
    "fmnist": "fashion_mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
    "imagenet2012": "imagenet",
    "imagenet_resized/32x32": "imagenet_resized_32",
    "imagenet_resized/64x64": "imagenet_resized_64",
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
