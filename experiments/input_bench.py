r"""The streamed ImageNet input pipeline measured (issue 15 item 6; docs/datasets.md,
"Streaming"): images/s of the grain pipeline per data worker, and its memory against the
number of files.

Usage::

    # the full measurement: about 2 minutes on 2 quiet cores (the first run writes the
    # folders, ~0.5 GB on disk for 110,000 tiny files; later runs reuse them)
    python -m experiments.input_bench --workdir=runs/input_bench --out=runs/input_bench.json
    # every path at tiny sizes (64 files, 2 windows, memory at 500 and 2000 files): < 1 min
    python -m experiments.input_bench --small --out=/tmp/input_bench_small.json
    # one part, more workers (a bigger machine)
    python -m experiments.input_bench --parts=throughput --workers=0,4,8,16

Everything goes through the code the training loop runs (`training.streamed`): the
sources of `data.sources.open_sources` (ImageFolder layout, `imagenet` spec) and the
training `BatchStream` that `training.streamed._streams` builds from the ImageNet config
(`experiments/configs/imagenet.py`, row `resnet18_predsim`) with `image_size`,
`batch_size`, `data_workers` and `data_prefetch` set here; batches are taken from its
epoch iterator as the loop takes them (host batches; the copy to the device,
`streaming.to_global`, is not timed). Three parts (`--parts`), in this order:

- `per_image`: one image at a time in this process, no grain: `FolderSource.read`
  (open + JPEG decode, PIL) and `transforms.train_transform` (RandomResizedCrop to
  `--image_size` + flip), `--per_image_count` images; median ms of each, and the images/s
  of one core doing nothing else. The ceiling for one worker.
- `throughput`: a synthetic ImageFolder of `--num_files` photo-like JPEGs (smooth
  gradients, soft blobs, texture and noise; `--width` x `--height`, quality
  `--quality`, over `--num_classes` classes; written with PIL into `--workdir` once, then
  reused) streamed for training, for each `--workers` value (`data_workers`; 0 = threads of
  the training process, `min(16, cores)` of them): `--warmup_batches` untimed batches
  (this includes starting the worker processes: `first_batch_s`) plus as many as the
  pipeline holds ready (read ahead during the start-up), then `--windows` timed windows
  of `--window_batches` batches (default: twice the batches loaded in parallel, by the
  workers or threads, which arrive nearly together). Reported: images/s (median over the
  windows, over all of them, and each window's), images/s per worker (per process for 0
  workers), CPU seconds per image and cores busy (this process and its worker processes,
  from /proc); one worker's rate against `per_image`'s shows grain's overhead. The
  listing is repeated (same files, a longer epoch) when the run needs more batches than
  one pass holds, so the files are read from the page cache: disk reads are not measured.
- `memory`: for each `--memory_files` count, a folder of that many tiny JPEGs
  (`--memory_side` px square, a few distinct encoded images copied, `--memory_classes`
  classes) and, in a fresh subprocess of this module (`--role=memory`) per count and per
  `--memory_workers` value: the resident memory (VmRSS) after the imports, after listing
  the files (`open_sources`), and after `--memory_batches` batches (crops of
  `--memory_image_size` px), the peak (`ru_maxrss`, over the process's life: the imports
  included) and the worker processes' VmRSS. The listing costs ~40 bytes a file
  (`index_bytes`); nothing else should grow with the count.

Time (2 cores): writing the folders up to ~1 min (kept in `--workdir` for the next run),
each throughput setting ~(warm-up + windows · window_batches) · batch_size / (images/s),
~5 s at ~700 images/s, a memory subprocess ~5-10 s. Prints a summary and writes one JSON
object (`--out`). Every part records the load average before and after (`load`): timing
on a loaded machine is distorted, CPU seconds per image much less so. Linux only for the
CPU and memory numbers (/proc); elsewhere they are null.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from absl import app, flags

from experiments.bench_record import finish_record, load_average, start_record

__all__ = [
    "photo_like",
    "write_image_folder",
    "write_tiny_folder",
    "train_stream",
    "measure_per_image",
    "measure_throughput",
    "memory_probe",
    "measure_memory",
    "main",
]

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines this module's flags; called only when it runs as the main module, so
    that importing its functions (the tests do) defines no flags that could clash
    with other experiments modules' (`--out`, `--workdir`, `--batch_size`)."""
    flags.DEFINE_enum("role", "launcher", ["launcher", "memory"], "memory: one memory probe.")
    flags.DEFINE_list("parts", ["per_image", "throughput", "memory"], "Parts to run, in order.")
    flags.DEFINE_string("workdir", "", "Where the folders are written ('' = a new temp dir).")
    flags.DEFINE_string("out", "", "Write the results JSON here.")
    flags.DEFINE_integer("image_size", 224, "Training crop side S in px (the config's image_size).")
    flags.DEFINE_integer("batch_size", 128, "Global batch size B (the reference's 128).")
    flags.DEFINE_list("workers", ["0", "1", "2"], "data_workers values (0 = threads).")
    flags.DEFINE_integer("prefetch", 2, "data_prefetch: batches read ahead (per worker).")
    flags.DEFINE_integer("num_files", 320, "JPEG files of the throughput folder.")
    flags.DEFINE_integer("num_classes", 5, "Classes of the throughput folder.")
    flags.DEFINE_integer("width", 500, "Width of its JPEGs in px (ImageNet's typical 500x375).")
    flags.DEFINE_integer("height", 375, "Height of its JPEGs in px.")
    flags.DEFINE_integer("quality", 90, "JPEG quality of its files.")
    flags.DEFINE_integer("warmup_batches", 2, "Untimed batches first (worker start-up included).")
    flags.DEFINE_integer("windows", 5, "Timed windows per workers setting.")
    flags.DEFINE_integer(
        "window_batches", 0, "Batches per window; 0 = 2 x the workers (x the threads for 0)."
    )
    flags.DEFINE_integer("per_image_count", 100, "Images timed one by one in `per_image`.")
    flags.DEFINE_list("memory_files", ["10000", "100000"], "File counts of the memory part.")
    flags.DEFINE_list("memory_workers", ["0", "1"], "data_workers values of the memory part.")
    flags.DEFINE_integer("memory_classes", 10, "Classes of the memory folders.")
    flags.DEFINE_integer("memory_side", 32, "Side of the memory folders' JPEGs in px.")
    flags.DEFINE_integer("memory_image_size", 32, "Crop side of the memory part's batches.")
    flags.DEFINE_integer("memory_batches", 20, "Batches each memory probe reads.")
    flags.DEFINE_integer("memory_batch_size", 128, "Batch size of the memory probes.")
    flags.DEFINE_integer("seed", 0, "Seed of the images written and of the stream.")
    flags.DEFINE_integer("timeout", 600, "Seconds a memory subprocess may take.")
    flags.DEFINE_bool(
        "small",
        False,
        "Every path at tiny sizes (< 1 minute): 64 files, batch 16, 1 warm-up batch, 2 windows, "
        "16 images per_image, memory at 500 and 2000 files, 4 batches of 32.",
    )
    # role=memory only
    flags.DEFINE_string("memory_root", "", "memory: the folder to probe.")
    flags.DEFINE_integer("memory_probe_workers", 0, "memory: data_workers of this probe.")
    flags.DEFINE_string("result", "", "memory: write this probe's JSON result here.")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = ".input_bench.json"  # in a folder's root: what was written there, once complete
PARTIAL = ".input_bench.partial"  # in a folder's root while it is written
CONFIG_ROW = "resnet18_predsim"  # the experiments/configs/imagenet.py row streamed
SMALL = {
    "num_files": 64,
    "batch_size": 16,
    "warmup_batches": 1,
    "windows": 2,
    "per_image_count": 16,
    "memory_files": ["500", "2000"],
    "memory_batches": 4,
    "memory_batch_size": 32,
}


# ------------------------------------------------------------------ /proc readings
def _process_tree(pid: int | None = None) -> list[int]:
    """`pid` (default this process) and its descendants (Linux; [pid] elsewhere)."""
    pid = os.getpid() if pid is None else pid
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def _rss_bytes(pid: int) -> int | None:
    """VmRSS of a process in bytes, or None (no /proc, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of the processes (/proc/<pid>/stat), or None."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, seen = 0.0, False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        seen = True
    return total if seen else None


# ------------------------------------------------------------------ the folders
def photo_like(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A synthetic photo: a colour gradient, a few soft blobs, texture at two scales and
    fine noise, so that JPEG files have about a photo's size and decoding cost (a flat
    image decodes faster; white noise is far bigger than a photo). At 500 x 375 px and
    quality 90: ~75 KiB a file (ImageNet's training JPEGs: ~110 KB on average).

    Args:
      rng: NumPy generator (consumed).
      height, width: H and W in px (> 0).

    Returns:
      `[H, W, 3]` uint8 RGB.

    Raises:
      Nothing of its own.
    """
    from PIL import Image

    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, width / height, width, dtype=np.float32)[None, :, None]
    image = rng.uniform(60, 190, 3) + rng.uniform(-70, 70, 3) * y + rng.uniform(-70, 70, 3) * x
    for _ in range(int(rng.integers(3, 8))):
        cy, cx = rng.uniform(0, 1), rng.uniform(0, width / height)
        radius = rng.uniform(0.05, 0.3)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
        image = image + rng.uniform(-90, 90, 3) * blob
    for cell, amplitude in ((12, 25), (3, 25)):  # texture at two scales, upsampled noise
        grid = rng.normal(128, amplitude, (max(2, height // cell), max(2, width // cell), 3))
        texture = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB")
        texture = texture.resize((width, height), Image.Resampling.BICUBIC)
        image = image + (np.asarray(texture, np.float32) - 128)
    image = image + rng.normal(0, 5, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _class_names(num_classes: int) -> list[str]:
    return [f"n{c:08d}" for c in range(num_classes)]  # ImageNet-like synset names


def _complete(root: str, params: dict) -> bool:
    """Whether `root` holds a complete folder written with `params`."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def _start_writing(root: str) -> None:
    """Clears what an earlier call wrote in `root` (any other arguments, or interrupted);
    refuses a `train/` or `val/` this module did not write."""
    ours = os.path.exists(os.path.join(root, MARKER)) or os.path.exists(os.path.join(root, PARTIAL))
    splits = [os.path.join(root, s) for s in ("train", "val")]
    if not ours and any(os.path.exists(s) for s in splits):
        raise ValueError(f"{root} holds a train/ or val/ not written here; use another workdir.")
    for split in splits:
        shutil.rmtree(split, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    for name in (MARKER, PARTIAL):
        if os.path.exists(os.path.join(root, name)):
            os.remove(os.path.join(root, name))
    open(os.path.join(root, PARTIAL), "w").close()


def _finish_writing(root: str, params: dict) -> None:
    with open(os.path.join(root, MARKER), "w") as f:
        json.dump(params, f)
    os.remove(os.path.join(root, PARTIAL))


def _per_class(total: int, num_classes: int) -> list[int]:
    """`total` files over the classes, as even as possible (the first ones get one more)."""
    return [total // num_classes + (c < total % num_classes) for c in range(num_classes)]


def _folder_info(root: str, params: dict, seconds: float, reused: bool) -> dict[str, Any]:
    train = os.path.join(root, "train")
    sizes = [e.stat().st_size for d in os.scandir(train) if d.is_dir() for e in os.scandir(d.path)]
    return {
        "root": root,
        **params,
        "train_files": len(sizes),
        "mean_file_bytes": float(np.mean(sizes)) if sizes else 0.0,
        "write_seconds": seconds,
        "reused": reused,
    }


def _write_folder(root: str, params: dict, write: Any) -> dict[str, Any]:
    """The ImageFolder walk both writers share: unless `root` already holds a complete
    folder of `params` (`num_files` training files over `num_classes` classes, one per
    class in `val/`), marks it as being written, calls `write(folder, class name, index
    in class, index over all files)` for every file, and marks it complete. Returns
    `_folder_info`."""
    if _complete(root, params):
        return _folder_info(root, params, 0.0, True)
    start = time.perf_counter()
    num_files, num_classes = params["num_files"], params["num_classes"]
    names = _class_names(num_classes)
    _start_writing(root)
    k_file = 0
    for split, total in (("train", num_files), ("val", num_classes)):
        for name, count in zip(names, _per_class(total, num_classes), strict=True):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for k in range(count):
                write(folder, name, k, k_file)
                k_file += 1
    _finish_writing(root, params)
    return _folder_info(root, params, time.perf_counter() - start, False)


def write_image_folder(
    root: str,
    num_files: int,
    num_classes: int,
    width: int = 500,
    height: int = 375,
    quality: int = 90,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes an ImageFolder of photo-like JPEGs (`photo_like`):
    `root/train/<class>/<class>_<k>.JPEG`, `num_files` over `num_classes` classes (as even
    as possible), and one file per class in `root/val/` (the layout needs both splits).
    A folder already written with the same arguments (its marker file) is kept; one
    written here with other arguments, or interrupted, is replaced.

    Args:
      root: the folder (created).
      num_files: training files N (>= num_classes).
      num_classes: K classes (>= 1).
      width, height: the images' size in px.
      quality: JPEG quality (PIL).
      seed: seed of the pixels.

    Returns:
      A dict: `root`, the arguments, `train_files`, `mean_file_bytes`, `write_seconds`
      (float s) and `reused` (bool).

    Raises:
      ValueError: num_classes < 1 or num_files < num_classes, or `root` holds a `train/`
        or `val/` this module did not write.
      OSError: the folder cannot be written.
    """
    from PIL import Image

    if num_classes < 1 or num_files < num_classes:
        raise ValueError(
            f"need num_classes >= 1 and num_files >= num_classes, got "
            f"{num_files} files over {num_classes} classes."
        )
    params = dict(
        kind="photos",
        num_files=num_files,
        num_classes=num_classes,
        width=width,
        height=height,
        quality=quality,
        seed=seed,
    )
    rng = np.random.default_rng(seed)

    def write(folder: str, name: str, k: int, k_file: int) -> None:
        image = Image.fromarray(photo_like(rng, height, width), "RGB")
        image.save(os.path.join(folder, f"{name}_{k}.JPEG"), quality=quality)

    return _write_folder(root, params, write)


def write_tiny_folder(
    root: str,
    num_files: int,
    num_classes: int,
    side: int = 32,
    variants: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Writes an ImageFolder of many tiny JPEGs quickly: `variants` distinct `side` px
    images are encoded once and their bytes copied into `num_files` training files
    (`root/train/<class>/<class>_<k>.JPEG`, over `num_classes` classes) and one file per
    class in `root/val/`. A folder already written with the same arguments is kept;
    one written here with other arguments, or interrupted, is replaced.

    Args:
      root: the folder (created).
      num_files: training files N (>= num_classes).
      num_classes: K classes (>= 1).
      side: the images' side in px.
      variants: distinct encoded images (>= 1).
      seed: seed of the pixels.

    Returns:
      As `write_image_folder`.

    Raises:
      ValueError: num_classes < 1, num_files < num_classes or variants < 1, or `root`
        holds a `train/` or `val/` this module did not write.
      OSError: the folder cannot be written.
    """
    from PIL import Image

    if num_classes < 1 or num_files < num_classes or variants < 1:
        raise ValueError(
            f"need num_classes >= 1, num_files >= num_classes and variants >= 1, "
            f"got {num_files}, {num_classes}, {variants}."
        )
    params = dict(
        kind="tiny",
        num_files=num_files,
        num_classes=num_classes,
        side=side,
        variants=variants,
        seed=seed,
    )
    if _complete(root, params):  # before encoding the variants
        return _folder_info(root, params, 0.0, True)
    rng = np.random.default_rng(seed)
    encoded = []
    for _ in range(variants):
        buffer = io.BytesIO()
        Image.fromarray(photo_like(rng, side, side), "RGB").save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())

    def write(folder: str, name: str, k: int, k_file: int) -> None:
        with open(os.path.join(folder, f"{name}_{k:07d}.JPEG"), "wb") as f:
            f.write(encoded[k_file % variants])

    return _write_folder(root, params, write)


# ------------------------------------------------------------------ the pipeline
def train_stream(
    root: str,
    *,
    batch_size: int,
    image_size: int,
    workers: int,
    prefetch: int = 2,
    seed: int = 0,
    min_batches: int = 0,
):
    """The training loop's stream of an ImageFolder: `data.sources.open_sources` (the
    `imagenet` spec, data_source `files`) and the training `BatchStream` of
    `training.streamed._streams`, built from the ImageNet config (`CONFIG_ROW`) with
    these fields set, on a one-device mesh (this process reads whole batches).

    Args:
      root: the folder holding `train/` and `val/`.
      batch_size: B.
      image_size: S, the crop side in px.
      workers: `data_workers` (0 = threads of this process).
      prefetch: `data_prefetch`.
      seed: the config's seed (order and crops).
      min_batches: when one pass over the files holds fewer full batches than this, the
        listing is repeated (the same files; `FolderSource` of a longer `FolderIndex`).

    Returns:
      `(stream, source)`: the `data.streaming.BatchStream` (mode `train`: RandomResizedCrop
      + flip; `stream.epoch(1)` yields dicts with `images` `[B, S, S, 3]` uint8 and
      `labels` `[B]` int32) and the training source it reads.

    Raises:
      DatasetError: `root` is not an ImageFolder (as `open_sources`).
      ConfigError: B, S, workers or prefetch out of range (as `BatchStream`).
    """
    from experiments.configs import imagenet
    from localjax import data as data_lib
    from localjax.data import sources
    from localjax.training import sharding, streamed

    config = imagenet.get_config(CONFIG_ROW)
    config.update(
        dict(
            data_dir=root,
            data_source="files",
            image_size=image_size,
            seed=seed,
            batch_size=batch_size,
            data_workers=workers,
            data_prefetch=prefetch,
        )
    )
    spec = data_lib.get_spec(config.dataset)
    train, test = sources.open_sources(spec, root, "files")
    need = min_batches * batch_size
    if need > len(train):
        index = train.index
        reps = -(-need // len(index))
        index = dataclasses.replace(
            index, files=np.tile(index.files, reps), labels=np.tile(index.labels, reps)
        )
        train = sources.FolderSource(index)
    spec = dataclasses.replace(  # as training.streamed._setup_locked
        spec, num_classes=train.num_classes, image_size=config.image_size or spec.image_size
    )
    mesh = sharding.make_mesh(1)
    stream, _ = streamed._streams(config, spec, train, test, mesh)
    return stream, train


def measure_per_image(root: str, *, image_size: int, count: int, seed: int = 0) -> dict[str, Any]:
    """Times the per-image work alone, in this process, without grain: the training
    source's `read` (open + decode) and `transforms.train_transform` (RandomResizedCrop to
    S + flip), one image after another (the files cycled), after one untimed image.

    Args:
      root: an ImageFolder (`write_image_folder`).
      image_size: S in px.
      count: images timed (>= 1).
      seed: seed of the crops.

    Returns:
      A dict: `count`, `image_size`, median `decode_ms`, `crop_ms` and `total_ms` (ms per
      image), `images_per_s` (1000 / median total: one core), `cpu_ms` (mean process CPU
      ms per image), `source_shape` (the first image's `[H, W, 3]`), `load`.

    Raises:
      ValueError: count < 1.
      DatasetError: `root` is not an ImageFolder.
    """
    from localjax import data as data_lib
    from localjax.data import sources, transforms

    if count < 1:
        raise ValueError(f"count={count} must be >= 1.")
    load_before = load_average()
    train, _ = sources.open_sources(data_lib.get_spec("imagenet"), root, "files")
    first = train.read(0)  # untimed: imports PIL, warms the file cache
    transforms.train_transform(first, image_size, np.random.default_rng([seed, 0]))
    decode, crop = [], []
    cpu0 = time.process_time()
    for k in range(count):
        t0 = time.perf_counter()
        pixels = train.read(k % len(train))
        t1 = time.perf_counter()
        transforms.train_transform(pixels, image_size, np.random.default_rng([seed, 1, k]))
        t2 = time.perf_counter()
        decode.append(t1 - t0)
        crop.append(t2 - t1)
    cpu = time.process_time() - cpu0
    total = [a + b for a, b in zip(decode, crop, strict=True)]
    total_ms = 1000 * statistics.median(total)
    return {
        "count": count,
        "image_size": image_size,
        "decode_ms": 1000 * statistics.median(decode),
        "crop_ms": 1000 * statistics.median(crop),
        "total_ms": total_ms,
        "images_per_s": 1000 / total_ms,
        "cpu_ms": 1000 * cpu / count,
        "source_shape": list(first.shape),
        "load": [load_before, load_average()],
    }


def measure_throughput(
    root: str,
    *,
    workers: int,
    batch_size: int,
    image_size: int,
    prefetch: int = 2,
    warmup_batches: int = 2,
    windows: int = 5,
    window_batches: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Streams the folder for training (`train_stream`) and times windows of batches.

    Args:
      root: an ImageFolder.
      workers: `data_workers` (0 = threads of this process).
      batch_size, image_size, prefetch, seed: as `train_stream`.
      warmup_batches: untimed batches first (>= 1; the worker start-up falls here),
        plus as many as the pipeline can hold ready (workers · (prefetch + 1); with 0
        workers max(prefetch, threads) + threads), so that the windows time the steady
        rate, not batches read ahead during the start-up.
      windows: timed windows (>= 1).
      window_batches: batches per window (>= 1); 0 = twice the batches loaded in
        parallel (workers, or threads for 0 workers): they arrive nearly together, so a
        shorter window's rate depends on where it starts.

    Returns:
      A dict: `workers`, `threads` (of this process, used when workers is 0),
      `batch_size`, `image_size`, `prefetch`, `first_batch_s` (s from creating the
      iterator to the first batch), `warmup_batches_run` (warm-up batches read),
      `window_batches` (as used), `images_per_s` (median over the windows),
      `images_per_s_overall` (all windows' images / their time), `images_per_s_windows`
      (each window's), `images_per_s_per_worker` (median / workers; / 1 for 0 workers:
      the one training process), `cpu_s_per_image` (CPU s of this process and its
      workers per image over the windows) and `cores_busy` (that CPU time / wall time),
      both null without /proc, `epoch_files` (the listing's length), `image_shape` (a
      batch's `images` shape, `[B, S, S, 3]`), `load` (load averages before, after).

    Raises:
      ValueError: warmup_batches or windows < 1, or window_batches < 0.
      DatasetError, ConfigError: as `train_stream`.
    """
    if min(warmup_batches, windows) < 1 or window_batches < 0:
        raise ValueError(
            f"warmup_batches={warmup_batches} and windows={windows} must be >= 1, "
            f"window_batches={window_batches} >= 0."
        )
    load_before = load_average()
    threads = min(16, os.cpu_count() or 1)  # BatchStream's default, as the loop uses it
    buffered = workers * (prefetch + 1) if workers else max(prefetch, threads) + threads
    warmup = warmup_batches + buffered
    window_batches = window_batches or 2 * (workers or threads)
    needed = warmup + windows * window_batches
    stream, source = train_stream(
        root,
        batch_size=batch_size,
        image_size=image_size,
        workers=workers,
        prefetch=prefetch,
        seed=seed,
        min_batches=needed + 1,
    )
    start = time.perf_counter()
    it = stream.epoch(1)
    rates, cpu_total, wall_total = [], 0.0, 0.0
    try:
        batch = next(it)
        first_batch_s = time.perf_counter() - start
        shape = list(batch["images"].shape)
        for _ in range(warmup - 1):
            next(it)
        for _ in range(windows):
            pids = _process_tree()
            cpu0, t0 = _cpu_seconds(pids), time.perf_counter()
            images = sum(len(next(it)["labels"]) for _ in range(window_batches))
            dt = time.perf_counter() - t0
            cpu1 = _cpu_seconds(pids)  # the same processes (workers outlive a window)
            rates.append(images / dt)
            wall_total += dt
            cpu_total = (
                None
                if cpu0 is None or cpu1 is None or cpu_total is None
                else (cpu_total + cpu1 - cpu0)
            )
    finally:
        it.close()
        del it
        gc.collect()  # finalise the worker processes' locks and queues now
    median = statistics.median(rates)
    n_images = windows * window_batches * batch_size
    return {
        "workers": workers,
        "threads": stream.threads,
        "batch_size": batch_size,
        "image_size": image_size,
        "prefetch": prefetch,
        "first_batch_s": first_batch_s,
        "warmup_batches_run": warmup,
        "window_batches": window_batches,
        "images_per_s": median,
        "images_per_s_overall": n_images / wall_total,
        "images_per_s_windows": rates,
        "images_per_s_per_worker": median / max(workers, 1),
        "cpu_s_per_image": None if cpu_total is None else cpu_total / n_images,
        "cores_busy": None if cpu_total is None else cpu_total / wall_total,
        "epoch_files": len(source),
        "image_shape": shape,
        "load": [load_before, load_average()],
    }


def memory_probe(
    root: str,
    *,
    batches: int,
    batch_size: int,
    image_size: int,
    workers: int = 0,
    prefetch: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Resident memory of this process around listing a folder and reading batches of it
    through the training stream (meant for a fresh process: `measure_memory`).

    Args:
      root: an ImageFolder (`write_tiny_folder`).
      batches: batches to read (at most one epoch's).
      batch_size: B.
      image_size: S of the crops.
      workers, prefetch, seed: as `train_stream`.

    Returns:
      A dict of ints: `num_files` (N), `index_bytes` (the listing's arrays), `batches`
      (read), `rss_start_bytes` (VmRSS after the imports and JAX's backend start),
      `rss_source_bytes` (after `open_sources` and the stream), `rss_end_bytes` (after
      the batches, iterator open), `workers_rss_bytes` (sum of VmRSS of the descendant
      processes then: grain's workers and multiprocessing's resource tracker),
      `peak_rss_bytes` (`ru_maxrss` of this process, over its life); plus `workers` and
      `seconds` (float). The RSS fields are null without /proc.

    Raises:
      DatasetError, ConfigError: as `train_stream`.
    """
    import jax
    import PIL.Image  # noqa: F401 (imported before the first reading, not counted)

    from experiments.configs import imagenet  # noqa: F401 (likewise)
    from localjax.training import streamed  # noqa: F401 (likewise: grain, flax, ...)

    jax.devices()  # the backend, started before the first reading (the mesh needs it)
    start = time.perf_counter()
    gc.collect()
    rss_start = _rss_bytes(os.getpid())
    stream, source = train_stream(
        root,
        batch_size=batch_size,
        image_size=image_size,
        workers=workers,
        prefetch=prefetch,
        seed=seed,
    )
    rss_source = _rss_bytes(os.getpid())
    it = stream.epoch(1)
    done = 0
    try:
        for _ in range(min(batches, len(stream))):
            next(it)
            done += 1
        gc.collect()
        rss_end = _rss_bytes(os.getpid())
        children = [_rss_bytes(p) for p in _process_tree()[1:]]
        workers_rss = sum(r for r in children if r is not None) if rss_end is not None else None
    finally:
        it.close()
    index = source.index
    return {
        "num_files": len(source),
        "index_bytes": int(index.files.nbytes + index.labels.nbytes),
        "workers": workers,
        "batches": done,
        "rss_start_bytes": rss_start,
        "rss_source_bytes": rss_source,
        "rss_end_bytes": rss_end,
        "workers_rss_bytes": workers_rss,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": time.perf_counter() - start,
    }


def measure_memory(
    root: str,
    *,
    batches: int,
    batch_size: int,
    image_size: int,
    workers: int = 0,
    prefetch: int = 2,
    seed: int = 0,
    timeout: float = 600,
) -> dict[str, Any]:
    """`memory_probe` in a fresh subprocess of this module (`--role=memory`, CPU JAX), so
    that nothing measured before counts.

    Args:
      root, batches, batch_size, image_size, workers, prefetch, seed: as `memory_probe`.
      timeout: seconds the subprocess may take.

    Returns:
      `memory_probe`'s dict, plus `growth_bytes` (rss_end - rss_start, or null).

    Raises:
      RuntimeError: the subprocess failed or timed out (with the end of its output).
    """
    with tempfile.TemporaryDirectory(prefix="input_bench_memory_") as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable,
            "-m",
            "experiments.input_bench",
            "--role=memory",
            f"--memory_root={root}",
            f"--memory_batches={batches}",
            f"--memory_batch_size={batch_size}",
            f"--memory_image_size={image_size}",
            f"--memory_probe_workers={workers}",
            f"--prefetch={prefetch}",
            f"--seed={seed}",
            f"--result={result}",
        ]
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS") or "cpu"}
        try:
            run = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"memory probe of {root} timed out after {timeout} s") from e
        if run.returncode != 0:
            tail = (run.stdout + run.stderr)[-3000:]
            raise RuntimeError(f"memory probe of {root} exited with {run.returncode}:\n{tail}")
        with open(result) as f:
            out = json.load(f)
    start, end = out["rss_start_bytes"], out["rss_end_bytes"]
    out["growth_bytes"] = None if start is None or end is None else end - start
    return out


# ------------------------------------------------------------------ the launcher
def _mib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def _apply_small() -> None:
    for name, value in SMALL.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def _print_per_image(r: dict) -> None:
    print(
        f"per image (one core, no grain), {r['source_shape'][1]}x{r['source_shape'][0]} JPEG "
        f"-> {r['image_size']} px: decode {r['decode_ms']:.2f} ms + crop {r['crop_ms']:.2f} "
        f"ms = {r['total_ms']:.2f} ms, {r['images_per_s']:.0f} images/s",
        flush=True,
    )


def _print_throughput(rows: list[dict], per_image: dict | None) -> None:
    print(
        f"{'workers':>7} {'threads':>7} {'img/s':>8} {'overall':>8} {'/worker':>8} "
        f"{'cpu ms/img':>10} {'cores':>6} {'1st batch s':>11}"
    )
    for r in rows:
        cpu = "n/a" if r["cpu_s_per_image"] is None else f"{1000 * r['cpu_s_per_image']:.2f}"
        cores = "n/a" if r["cores_busy"] is None else f"{r['cores_busy']:.2f}"
        print(
            f"{r['workers']:>7} {r['threads'] if r['workers'] == 0 else '-':>7} "
            f"{r['images_per_s']:>8.1f} {r['images_per_s_overall']:>8.1f} "
            f"{r['images_per_s_per_worker']:>8.1f} {cpu:>10} "
            f"{cores:>6} {r['first_batch_s']:>11.2f}",
            flush=True,
        )
    one = [r for r in rows if r["workers"] == 1]
    if per_image and one:
        ratio = one[0]["images_per_s"] / per_image["images_per_s"]
        print(f"1 worker reaches {100 * ratio:.0f} % of one core's per-image rate", flush=True)


def _print_memory(rows: list[dict]) -> None:
    print(
        f"{'files':>8} {'workers':>7} {'index MiB':>9} {'start':>8} {'listed':>8} "
        f"{'end':>8} {'growth':>8} {'peak':>8} {'children':>8}  (RSS MiB)"
    )
    for r in rows:
        print(
            f"{r['num_files']:>8} {r['workers']:>7} {_mib(r['index_bytes']):>9} "
            f"{_mib(r['rss_start_bytes']):>8} {_mib(r['rss_source_bytes']):>8} "
            f"{_mib(r['rss_end_bytes']):>8} {_mib(r['growth_bytes']):>8} "
            f"{_mib(r['peak_rss_bytes']):>8} {_mib(r['workers_rss_bytes']):>8}",
            flush=True,
        )


def _launcher() -> None:
    if FLAGS.small:
        _apply_small()
    unknown = set(FLAGS.parts) - {"per_image", "throughput", "memory"}
    if unknown:
        raise app.UsageError(
            f"unknown parts {sorted(unknown)}; choose per_image, throughput, memory."
        )
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="input_bench_")
    os.makedirs(workdir, exist_ok=True)
    settings = (
        "image_size",
        "batch_size",
        "workers",
        "prefetch",
        "num_files",
        "num_classes",
        "width",
        "height",
        "quality",
        "warmup_batches",
        "windows",
        "window_batches",
        "per_image_count",
        "memory_files",
        "memory_workers",
        "memory_classes",
        "memory_side",
        "memory_image_size",
        "memory_batches",
        "memory_batch_size",
        "seed",
        "small",
    )
    summary = start_record(
        "input_bench", workdir, settings={name: FLAGS[name].value for name in settings}
    )
    photos = os.path.join(workdir, "photos")
    if {"per_image", "throughput"} & set(FLAGS.parts):
        summary["folder"] = write_image_folder(
            photos,
            FLAGS.num_files,
            FLAGS.num_classes,
            FLAGS.width,
            FLAGS.height,
            FLAGS.quality,
            FLAGS.seed,
        )
        f = summary["folder"]
        print(
            f"folder: {f['train_files']} files of {f['width']}x{f['height']} px, "
            f"{f['mean_file_bytes'] / 1024:.0f} KiB each, written in "
            f"{f['write_seconds']:.1f} s{' (reused)' if f['reused'] else ''}",
            flush=True,
        )
    per_image = None
    for part in FLAGS.parts:
        if part == "per_image":
            per_image = summary["per_image"] = measure_per_image(
                photos, image_size=FLAGS.image_size, count=FLAGS.per_image_count, seed=FLAGS.seed
            )
            _print_per_image(per_image)
        elif part == "throughput":
            rows = []
            for w in FLAGS.workers:
                rows.append(
                    measure_throughput(
                        photos,
                        workers=int(w),
                        batch_size=FLAGS.batch_size,
                        image_size=FLAGS.image_size,
                        prefetch=FLAGS.prefetch,
                        warmup_batches=FLAGS.warmup_batches,
                        windows=FLAGS.windows,
                        window_batches=FLAGS.window_batches,
                        seed=FLAGS.seed,
                    )
                )
                print(f"  workers={w}: {rows[-1]['images_per_s']:.1f} images/s", flush=True)
            summary["throughput"] = rows
            _print_throughput(rows, per_image)
        elif part == "memory":
            rows = []
            for n in FLAGS.memory_files:
                root = os.path.join(workdir, f"tiny_{int(n)}")
                info = write_tiny_folder(
                    root, int(n), FLAGS.memory_classes, FLAGS.memory_side, seed=FLAGS.seed
                )
                print(
                    f"  {n} tiny files written in {info['write_seconds']:.1f} s"
                    f"{' (reused)' if info['reused'] else ''}",
                    flush=True,
                )
                for w in FLAGS.memory_workers:
                    r = measure_memory(
                        root,
                        batches=FLAGS.memory_batches,
                        batch_size=FLAGS.memory_batch_size,
                        image_size=FLAGS.memory_image_size,
                        workers=int(w),
                        prefetch=FLAGS.prefetch,
                        seed=FLAGS.seed,
                        timeout=FLAGS.timeout,
                    )
                    r["folder"] = info
                    rows.append(r)
            summary["memory"] = rows
            _print_memory(rows)
    finish_record(summary, FLAGS.out)


def main(argv):
    """Runs the parts (`--role=launcher`) or one memory probe (`--role=memory`, writing
    its JSON to `--result`).

    Raises:
      app.UsageError: too many arguments or an unknown part.
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.role == "memory":
        result = memory_probe(
            FLAGS.memory_root,
            batches=FLAGS.memory_batches,
            batch_size=FLAGS.memory_batch_size,
            image_size=FLAGS.memory_image_size,
            workers=FLAGS.memory_probe_workers,
            prefetch=FLAGS.prefetch,
            seed=FLAGS.seed,
        )
        with open(FLAGS.result, "w") as f:
            json.dump(result, f)
    else:
        _launcher()


if __name__ == "__main__":
    _define_flags()
    app.run(main)
