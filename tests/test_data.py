"""data.py: the seven datasets' specs (METHOD.md's data table), `load` from local files,
its errors, and the `.npz` cache. TFDS itself is tested in test_tfds.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_readers import write_cifar_batch, write_dataset, write_idx

from localjax import data
from localjax.data import DatasetError, loading, tfds_source
from localjax.models import build_model

# METHOD.md, "Data": size, channels, classes, crop padding, flip, mean, std
TABLE = {
    "mnist": (28, 1, 10, 2, False, (0.1307,), (0.3081,)),
    "fashion_mnist": (28, 1, 10, 2, True, (0.286,), (0.353,)),
    "kuzushiji_mnist": (28, 1, 10, 0, False, (0.1904,), (0.3475,)),
    "cifar10": (32, 3, 10, 4, True, (0.424, 0.415, 0.384), (0.283, 0.278, 0.284)),
    "cifar100": (32, 3, 100, 4, True, (0.438, 0.418, 0.377), (0.300, 0.287, 0.294)),
    "svhn": (32, 3, 10, 0, False, (0.431, 0.430, 0.446), (0.197, 0.198, 0.199)),
    "stl10": (96, 3, 10, 0, False, (0.447, 0.440, 0.407), (0.260, 0.257, 0.271)),
}
NAMES = sorted(TABLE)


@pytest.fixture(autouse=True)
def _no_default_data(tmp_path, monkeypatch):
    """Default data dir -> an empty temporary folder, so no test sees the user's data."""
    monkeypatch.setenv("LOCALJAX_DATA_DIR", str(tmp_path / "default"))


# ------------------------------------------------------------------ specs
@pytest.mark.parametrize("name", NAMES)
def test_spec_matches_method_table(name):
    spec = data.get_spec(name)
    got = (spec.image_size, spec.channels, spec.num_classes, spec.crop_padding, spec.flip)
    assert got == TABLE[name][:5]
    assert spec.mean == TABLE[name][5] and spec.std == TABLE[name][6]
    assert spec.name == name and spec.tfds_name


def test_registry_is_the_seven_datasets():
    assert sorted(data.PAPER_DATASETS) == NAMES
    # plus the ImageNet family, streamed (test_streaming.py)
    assert set(data.SPECS) - set(NAMES) == {
        "imagenet",
        "imagenette",
        "imagenet_resized_32",
        "imagenet_resized_64",
    }
    assert data.get_spec("svhn").train_splits == ("train", "extra")
    assert data.get_spec("kmnist").name == "kuzushiji_mnist"
    assert data.get_spec("svhn_cropped").name == "svhn"


def test_unknown_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'places365'; choose one of \['cifar10'"):
        data.get_spec("places365")
    with pytest.raises(ValueError, match="unknown dataset 'places365'.*'stl10', 'svhn'"):
        data.load("places365", "train")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.load("mnist", "val")
    with pytest.raises(ValueError, match=r"unknown data source 'web'; choose one of \['auto'"):
        data.load("mnist", "train", source="web")


def _first_block_and_dense(image_size):
    model = build_model("vgg8b", 10, "backprop", feat_mult=0.125, num_hidden=16)
    x = jnp.zeros((2, image_size, image_size, 3))
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    params = jax.eval_shape(lambda: model.init(keys, x, train=False))["params"]
    return params["block_conv_0"]["conv"]["kernel"].shape, params["block_dense_0"]["dense"][
        "kernel"
    ].shape


def test_stl10_size_gives_vgg_7x7_stride2_first_conv():
    """METHOD.md: inputs > 64 px (STL-10, 96) start with a 7x7, stride-2 conv."""
    spec = data.get_spec("stl10")
    kernel, dense = _first_block_and_dense(spec.image_size)
    assert kernel == (7, 7, 3, 16)
    # stride 2 then four 2x2 pools: 96 -> 48 -> 3; 64 channels at feat_mult 1/8
    assert dense == (3 * 3 * 64, 16)
    kernel, dense = _first_block_and_dense(data.get_spec("cifar10").image_size)
    assert kernel == (3, 3, 3, 16) and dense == (2 * 2 * 64, 16)  # 32 -> 2, no stride


# ------------------------------------------------------------------ local files
@pytest.mark.parametrize("name", NAMES)
def test_load_local_files(tmp_path, name):
    want = write_dataset(name, str(tmp_path), n_train=10, n_test=5)
    spec = data.get_spec(name)
    for split in ("train", "test"):
        ds = data.load(name, split, str(tmp_path), source="files")
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
        size = spec.image_size
        assert ds.images.shape == (len(want[split][1]), size, size, spec.channels)
        np.testing.assert_array_equal(ds.images, want[split][0])
        np.testing.assert_array_equal(ds.labels, want[split][1])
    # auto finds the same files without TFDS
    auto = data.load(name, "test", str(tmp_path), source="auto")
    np.testing.assert_array_equal(auto.images, want["test"][0])


def test_idx_files_in_named_subfolder_and_default_dir(tmp_path, monkeypatch):
    write_dataset("kuzushiji_mnist", str(tmp_path / "kuzushiji_mnist"))
    assert len(data.load("kuzushiji_mnist", "train", str(tmp_path))) == 12
    monkeypatch.setenv("LOCALJAX_DATA_DIR", str(tmp_path))
    assert len(data.load("kuzushiji_mnist", "test")) == 6


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("mnist", ["train-images-idx3-ubyte[.gz]", "train-labels-idx1-ubyte[.gz]", "'mnist'"]),
        ("fashion_mnist", ["apt-get install -y dataset-fashion-mnist", "zalandoresearch"]),
        ("kuzushiji_mnist", ["rois-codh/kmnist", "'kmnist'"]),
        ("cifar10", ["data_batch_1", "data_batch_5", "cifar-10-python.tar.gz", "'cifar10'"]),
        ("cifar100", ["cifar-100-python.tar.gz", "'cifar100'"]),
        ("svhn", ["train_32x32.mat, extra_32x32.mat", "housenumbers", "'svhn_cropped'"]),
        ("stl10", ["train_X.bin, train_y.bin", "stl10_binary.tar.gz", "'stl10'"]),
    ],
)
def test_missing_files_message(tmp_path, name, fragments):
    with pytest.raises(DatasetError) as err:
        data.load(name, "train", str(tmp_path), source="files")
    msg = str(err.value)
    assert f"{name} train split not found: looked in ['{tmp_path}'" in msg
    assert "--config.data_dir" in msg and "--config.data_source=tfds" in msg
    assert "--data_dir for experiments.reproduce" in msg
    for fragment in fragments:
        assert fragment in msg


def test_missing_files_without_tfds_in_auto_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "available", lambda: False)
    with pytest.raises(
        DatasetError, match=r"cifar10 test split not found.*pip install -e '\.\[tfds\]'"
    ):
        data.load("cifar10", "test", str(tmp_path))
    with pytest.raises(DatasetError, match=r"no cache at .*cifar10-test\.npz.*pip install"):
        data.load("cifar10", "test", str(tmp_path), source="tfds")


def test_fashion_mnist_default_looks_in_debian_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "DEBIAN_FASHION_MNIST", str(tmp_path / "debian"))
    with pytest.raises(DatasetError, match=f"looked in \\['{tmp_path}/debian'"):
        data.load("fashion_mnist", "test", None, source="files")
    write_dataset("fashion_mnist", str(tmp_path / "debian"))
    assert len(data.load("fashion_mnist", "test", None, source="files")) == 6


def test_partial_cifar10_is_missing(tmp_path):
    write_dataset("cifar10", str(tmp_path))
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DatasetError, match="cifar10 train split not found"):
        data.load("cifar10", "train", str(tmp_path), source="files")
    assert len(data.load("cifar10", "test", str(tmp_path), source="files")) == 6


def test_labels_out_of_range(tmp_path):
    write_dataset("mnist", str(tmp_path))
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.array([0, 1, 2, 3, 4, 10]))
    with pytest.raises(
        DatasetError, match=r"labels span \[0, 10\] but mnist has 10 classes \[0, 9\]"
    ):
        data.load("mnist", "test", str(tmp_path))
    # a CIFAR-100 batch where CIFAR-10 is expected: fine labels up to 99
    sub = tmp_path / "c10" / "cifar-10-batches-py"
    sub.mkdir(parents=True)
    write_cifar_batch(
        str(sub / "test_batch"), np.zeros((2, 32, 32, 3), np.uint8), [5, 99], b"labels"
    )
    with pytest.raises(DatasetError, match=r"labels span \[5, 99\] but cifar10 has 10 classes"):
        data.load("cifar10", "test", str(tmp_path / "c10"))


def test_images_of_wrong_shape(tmp_path):
    write_dataset("mnist", str(tmp_path))
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.zeros((6, 32, 32), np.uint8))
    with pytest.raises(
        DatasetError, match=r"images have shape \(32, 32, 1\) but mnist needs \(28, 28, 1\)"
    ):
        data.load("mnist", "test", str(tmp_path))
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.zeros((5, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="5 images but 6 labels"):
        data.load("mnist", "test", str(tmp_path))
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.zeros((6, 784), np.uint8))
    with pytest.raises(DatasetError, match=r"IDX images have shape \(6, 784\)"):
        data.load("mnist", "test", str(tmp_path))


def test_corrupt_file_through_load(tmp_path):
    write_dataset("kuzushiji_mnist", str(tmp_path))
    with open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x1f\x8b truncated gzip")
    with pytest.raises(DatasetError, match="cannot read .*train-images-idx3-ubyte.gz.*Re-download"):
        data.load("kuzushiji_mnist", "train", str(tmp_path))


# ------------------------------------------------------------------ cache
def test_cache_round_trip_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    ds = data.Dataset(
        rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 7).astype(np.int32),
    )
    path = data.cache_path("svhn", "test", str(tmp_path))
    assert path == os.path.join(str(tmp_path), "localjax_cache", "svhn-test.npz")
    loading._write_cache(path, ds)
    assert os.listdir(os.path.dirname(path)) == ["svhn-test.npz"]  # no temporary left
    monkeypatch.setattr(tfds_source, "load_tfds", lambda *a, **k: pytest.fail("TFDS called"))
    monkeypatch.setattr(tfds_source, "available", lambda: False)  # the cache needs no TFDS
    got = data.load("svhn", "test", str(tmp_path), source="tfds")
    np.testing.assert_array_equal(got.images, ds.images)
    np.testing.assert_array_equal(got.labels, ds.labels)
    assert got.labels.dtype == np.int32
    # auto: no local files, the cache is next
    np.testing.assert_array_equal(data.load("svhn", "test", str(tmp_path)).images, ds.images)

    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 not a zip")
    with pytest.raises(DatasetError, match="cache .*svhn-test.npz is unreadable.*Delete it"):
        data.load("svhn", "test", str(tmp_path), source="tfds")
    np.savez(path, images=ds.images, labels=ds.labels, version=99)
    with pytest.raises(DatasetError, match="format version 99.*Delete it"):
        data.load("svhn", "test", str(tmp_path), source="tfds")
    np.savez(path, images=ds.images[:, :28], labels=ds.labels, version=1)
    with pytest.raises(DatasetError, match=r"svhn-test.npz: images have shape \(28, 32, 3\)"):
        data.load("svhn", "test", str(tmp_path), source="tfds")
    np.savez(path, images=ds.images / 255.0, labels=ds.labels, version=1)
    with pytest.raises(DatasetError, match="images are float64, expected uint8"):
        data.load("svhn", "test", str(tmp_path), source="tfds")
    np.savez(path, images=ds.images[:0], labels=ds.labels[:0], version=1)
    with pytest.raises(DatasetError, match="the split holds no examples"):
        data.load("svhn", "test", str(tmp_path), source="tfds")


def test_cache_write_failure_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ds = data.Dataset(np.zeros((1, 28, 28, 1), np.uint8), np.zeros(1, np.int32))
    loading._write_cache(str(blocker / "localjax_cache" / "x.npz"), ds)  # must not raise


def test_epoch_batches_unchanged():
    batches = data.epoch_batches(10, 4, seed=0, epoch=1)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
