"""The TFDS route of data.load (localjax/tfds_source.py) under `tfds.testing.mock_data`.

Mock data goes through `tfds.data_source`, which needs no TensorFlow. Skipped when
tensorflow-datasets is not installed (`pip install -e '.[tfds]'`, or the `test` extra).
"""

import dataclasses
import importlib.util
import os

import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow-datasets not installed: pip install -e '.[test]' (or '.[tfds]')",
)
pytest.importorskip(
    "importlib_resources", reason="TFDS 4.9 builders need importlib_resources: pip install it"
)

from test_readers import write_dataset  # noqa: E402

from localjax import data  # noqa: E402
from localjax.data import (  # noqa: E402
    DatasetError,
    tfds_source,
)

NAMES = sorted(data.PAPER_DATASETS)  # the ImageNet family: test_streaming.py
N = 6  # mock examples per TFDS split


@pytest.fixture(autouse=True)
def _no_default_data(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALJAX_DATA_DIR", str(tmp_path / "default"))


@pytest.mark.parametrize("name", NAMES)
def test_mock_tfds_each_dataset(tmp_path, name):
    spec = data.get_spec(name)
    with tfds.testing.mock_data(num_examples=N):
        train = data.load(name, "train", str(tmp_path), source="tfds")
        test = data.load(name, "test", str(tmp_path), source="tfds")
    size = spec.image_size
    want_train = N * len(spec.train_splits)  # SVHN: train + extra
    assert train.images.shape == (want_train, size, size, spec.channels)
    assert test.images.shape == (N, size, size, spec.channels)
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
        assert 0 <= ds.labels.min() and ds.labels.max() < spec.num_classes
    assert train.images.std() > 0  # random mock pixels, not an empty buffer
    # the conversion is cached: later runs read it without TFDS
    for split, ds in (("train", train), ("test", test)):
        path = data.cache_path(name, split, str(tmp_path))
        assert os.path.exists(path)
        with np.load(path) as z:
            np.testing.assert_array_equal(z["images"], ds.images)
            np.testing.assert_array_equal(z["labels"], ds.labels)


def test_svhn_train_concatenates_train_and_extra(tmp_path, monkeypatch):
    calls = []
    real = tfds.data_source

    def spy(name, split, **kwargs):
        calls.append((name, split, kwargs["download"]))
        return real(name, split=split, **kwargs)

    monkeypatch.setattr(tfds, "data_source", spy)
    with tfds.testing.mock_data(num_examples=3):
        ds = data.load("svhn", "train", str(tmp_path), source="tfds")
    # local first (download=False): no network when the data is there
    assert calls == [("svhn_cropped", "train", False), ("svhn_cropped", "extra", False)]
    assert len(ds) == 6


def test_cache_round_trip_without_tfds(tmp_path, monkeypatch):
    with tfds.testing.mock_data(num_examples=N):
        first = data.load("cifar100", "test", str(tmp_path), source="tfds")
    monkeypatch.setattr(tfds_source, "load_tfds", lambda *a, **k: pytest.fail("TFDS read again"))
    again = data.load("cifar100", "test", str(tmp_path), source="tfds")
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.labels.dtype == np.int32


def test_auto_prefers_local_files_then_falls_back_to_tfds(tmp_path):
    want = write_dataset("mnist", str(tmp_path / "files"), n_train=4, n_test=3)
    with tfds.testing.mock_data(num_examples=N):
        files = data.load("mnist", "test", str(tmp_path / "files"))
        via_tfds = data.load("mnist", "test", str(tmp_path / "empty"))
    np.testing.assert_array_equal(files.images, want["test"][0])
    assert len(via_tfds) == N
    assert not os.path.exists(data.cache_path("mnist", "test", str(tmp_path / "files")))
    assert os.path.exists(data.cache_path("mnist", "test", str(tmp_path / "empty")))


def test_not_prepared_without_download(tmp_path):
    """Real TFDS (no mock), nothing prepared, downloading not allowed: a fast clear error."""
    with pytest.raises(DatasetError) as err:
        data.load("cifar10", "test", str(tmp_path), source="tfds", download=False)
    msg = str(err.value)
    assert "TFDS dataset 'cifar10' split 'test' is not prepared in" in msg
    assert f"no folder {tmp_path}/tfds/cifar10" in msg and "download=True" in msg
    # auto mode names the local-file route too
    with pytest.raises(DatasetError, match="cifar10 test split not found.*TFDS could not supply"):
        data.load("cifar10", "test", str(tmp_path), download=False)
    assert not os.path.exists(data.cache_path("cifar10", "test", str(tmp_path)))


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None,
    reason="TensorFlow installed: would download",
)
def test_preparing_needs_tensorflow(tmp_path):
    with pytest.raises(DatasetError, match=r"preparing it needs TensorFlow.*tensorflow-cpu"):
        data.load("stl10", "test", str(tmp_path), source="tfds", download=True)


def test_mock_labels_out_of_range_rejected(tmp_path, monkeypatch):
    """A TFDS dataset whose labels do not fit the spec (here: CIFAR-100 read as CIFAR-10)."""
    wrong = dataclasses.replace(data.SPECS["cifar10"], tfds_name="cifar100")
    monkeypatch.setitem(data.SPECS, "cifar10", wrong)
    with tfds.testing.mock_data(num_examples=40):
        with pytest.raises(
            DatasetError, match=r"TFDS cifar100:test: labels span .* cifar10 has 10"
        ):
            data.load("cifar10", "test", str(tmp_path), source="tfds")
    assert not os.path.exists(data.cache_path("cifar10", "test", str(tmp_path)))
