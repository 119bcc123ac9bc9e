"""Data: the paper's datasets as uint8 arrays, their augmentation inside the step, and
the order of each epoch's batches (METHOD.md, Data; DESIGN.md, Data).

Usage::

    from localjax import data
    spec = data.get_spec("fashion_mnist")
    train = data.load("fashion_mnist", "train")          # Dataset(images, labels), uint8
    x = data.augment(images, key, spec)                  # inside jit: crop/flip/cutout
    for idx in data.epoch_order(train.labels, 128, seed=0, epoch=1): ...

Files: `specs.py` (per-dataset facts), `readers.py` (IDX, CIFAR, SVHN, STL-10 files),
`tfds_source.py` (tensorflow-datasets), `loading.py` (sources in order, the .npz cache),
`augmentation.py` (on-device crop, flip, cutout, normalisation), `sampling.py` (epoch
order, the classes-per-batch sampler); for datasets streamed rather than held on the
device (ImageNet): `image_folder.py` (ImageFolder index, decoding), `transforms.py`
(host RandomResizedCrop / Resize + CenterCrop), `sources.py` (folder, TFDS, arrays),
`streaming.py` (the grain pipeline, per-process shares, global batches).
"""

from localjax.data.augmentation import augment, normalize
from localjax.data.loading import (
    DEBIAN_FASHION_MNIST,
    SOURCES,
    Dataset,
    cache_path,
    default_data_dir,
    load,
)
from localjax.data.readers import read_idx
from localjax.data.sampling import epoch_batches, epoch_order
from localjax.data.specs import PAPER_DATASETS, SPECS, DatasetSpec, get_spec
from localjax.errors import DatasetError

__all__ = [
    "DatasetSpec",
    "Dataset",
    "DatasetError",
    "SPECS",
    "PAPER_DATASETS",
    "SOURCES",
    "get_spec",
    "load",
    "read_idx",
    "default_data_dir",
    "cache_path",
    "epoch_batches",
    "epoch_order",
    "augment",
    "normalize",
    "DEBIAN_FASHION_MNIST",
]
