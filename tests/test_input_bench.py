"""experiments/input_bench.py at tiny sizes: the folders it writes, the per-image timing,
the streamed throughput (threads and one worker process) and the memory probe in a
subprocess return the documented keys with positive numbers (no timing thresholds)."""

import os

import numpy as np
import pytest

from experiments import input_bench
from localjax.data import image_folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("input_bench") / "photos")
    info = input_bench.write_image_folder(root, 12, 3, width=64, height=48, quality=85)
    assert info["train_files"] == 12 and not info["reused"] and info["mean_file_bytes"] > 0
    return root


def test_photo_like_is_rgb_uint8():
    pixels = input_bench.photo_like(np.random.default_rng(0), 30, 40)
    assert pixels.shape == (30, 40, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 5  # not flat


def test_folders_are_image_folders_and_reused(photos, tmp_path):
    train, val = image_folder.index_splits(photos)
    assert len(train) == 12 and len(val) == 3 and len(train.classes) == 3
    assert image_folder.decode_image(train.path(0)).shape == (48, 64, 3)
    again = input_bench.write_image_folder(photos, 12, 3, width=64, height=48, quality=85)
    assert again["reused"] and again["write_seconds"] == 0.0
    tiny = input_bench.write_tiny_folder(str(tmp_path / "tiny"), 25, 4, side=8, variants=3)
    assert tiny["train_files"] == 25 and not tiny["reused"]
    train, val = image_folder.index_splits(str(tmp_path / "tiny"))
    assert np.array_equal(np.bincount(train.labels), [7, 6, 6, 6]) and len(val) == 4
    # other arguments: written anew; a train/ this module did not write: refused
    tiny = input_bench.write_tiny_folder(str(tmp_path / "tiny"), 10, 2, side=8, variants=3)
    assert tiny["train_files"] == 10 and not tiny["reused"]
    os.makedirs(tmp_path / "foreign" / "train" / "a")
    with pytest.raises(ValueError, match="not written here"):
        input_bench.write_tiny_folder(str(tmp_path / "foreign"), 10, 2)


def test_per_image(photos):
    r = input_bench.measure_per_image(photos, image_size=32, count=4)
    assert r["source_shape"] == [48, 64, 3] and r["count"] == 4
    for key in ("decode_ms", "crop_ms", "total_ms", "images_per_s", "cpu_ms"):
        assert r[key] > 0, key


@pytest.mark.parametrize("workers", [0, 1])
def test_throughput(photos, workers):
    r = input_bench.measure_throughput(
        photos,
        workers=workers,
        batch_size=4,
        image_size=32,
        prefetch=1,
        warmup_batches=1,
        windows=2,
    )
    assert r["workers"] == workers and r["image_shape"] == [4, 32, 32, 3]
    assert len(r["images_per_s_windows"]) == 2
    assert r["window_batches"] == 2 * (workers or r["threads"])  # the default: 0 = auto
    # the listing is repeated to hold the warm-up and the windows
    needed = r["warmup_batches_run"] + 2 * r["window_batches"]
    assert r["epoch_files"] >= 4 * needed and r["epoch_files"] % 12 == 0
    keys = ("images_per_s", "images_per_s_overall", "images_per_s_per_worker", "first_batch_s")
    for key in keys:
        assert r[key] > 0, key
    if os.path.exists("/proc/self/stat"):  # CPU time counts in 10 ms ticks: may be 0 here
        assert r["cpu_s_per_image"] >= 0 and r["cores_busy"] >= 0


def test_memory_probe_in_a_subprocess(tmp_path):
    root = str(tmp_path / "tiny")
    input_bench.write_tiny_folder(root, 40, 4, side=16, variants=2)
    r = input_bench.measure_memory(root, batches=2, batch_size=8, image_size=16, timeout=300)
    assert r["num_files"] == 40 and r["batches"] == 2 and r["workers"] == 0
    assert r["index_bytes"] > 0 and r["seconds"] > 0 and r["peak_rss_bytes"] > 0
    if os.path.exists("/proc/self/status"):
        for key in ("rss_start_bytes", "rss_source_bytes", "rss_end_bytes"):
            assert r[key] > 0, key
        assert r["growth_bytes"] == r["rss_end_bytes"] - r["rss_start_bytes"]
        assert r["workers_rss_bytes"] >= 0
