"""The streamed input pipeline (grain): each process decodes and augments its share of
every global batch on host CPU workers, with prefetch, and hands the step global arrays
sharded over the data axis.

Usage::

    train, test = sources.open_sources(spec, data_dir)           # data.sources
    stream = BatchStream(train, batch_size=256, mode="train", image_size=224, seed=0,
                         num_devices=mesh.size, workers=8)
    it = stream.epoch(1)                     # or stream.epoch(1, state) to resume
    for batch in it:                         # host dict: this process's rows
        images, labels = to_global(batch, mesh)   # [B, S, S, 3] uint8, [B] int32
        ...
    state = it.get_state()                   # JSON dict: epoch, batches done, grain's state
    it.close()

What each epoch holds is decided up front, for the global batch: the batches of
`sampling.epoch_order` (plain shuffling or the classes-per-batch sampler; a function of
(seed, epoch) only). Process p of P (grain's `ShardOptions(p, P)`) reads rows
[p·B/P, (p+1)·B/P) of each batch, the rows its devices hold in the `('data',)` mesh, so
the global array equals a one-process run's. A last batch that does not split evenly over
the devices is read whole by every process and replicated (as `sharding.put_batch` does).
Each example's random crop and flip draw from `np.random.default_rng([seed, epoch, i])`
(i its index), so the pixels do not depend on the number of processes or workers.

grain runs the per-batch work (`_LoadBatch`: read, decode, transform, stack) in threads,
or in `workers` processes (`mp_prefetch`), and its iterator's state (`get_state` /
`set_state`) resumes an epoch at any batch.

Modes: `train` (RandomResizedCrop(S) + flip, `data.transforms`), `eval` (Resize + CenterCrop
(S)), `raw` (fixed-size images as stored; augmented on the device by `data.augmentation`).
Images stay uint8 [B, S, S, C]; normalisation and cutout run in the step.

Unreadable images (a corrupt JPEG) are counted and logged, and their slot is filled by the
next example of the same class, so every batch keeps its size and labels; `BadImages`
stops the run (DatasetError) once more than a fraction `max_bad_fraction` of a split is
bad in one pass over it (docs/datasets.md, "Corrupt images").

Letters: N examples, B global batch, b this process's rows, S image side, C channels,
P processes, n devices.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from localjax.data import sampling, transforms
from localjax.data.image_folder import CorruptImage
from localjax.data.specs import DatasetSpec
from localjax.errors import ConfigError, DatasetError

__all__ = [
    "PIPELINES",
    "MODES",
    "MEMORY_LIMIT_BYTES",
    "choose_pipeline",
    "LocalBatch",
    "epoch_plan",
    "BatchStream",
    "StreamIterator",
    "BadImages",
    "to_global",
]

PIPELINES = ("auto", "memory", "stream")
MODES = ("train", "eval", "raw")
# `auto` holds a dataset on the device when its uint8 training images take at most this
# (imagenet_resized_32: 3.7 GiB, held; imagenet_resized_64: 14.7 GiB, streamed)
MEMORY_LIMIT_BYTES = 4 * 2**30
_MAX_SUBSTITUTES = 10  # stand-ins tried for one unreadable example
_LOGGED_BAD = 20  # unreadable files logged one by one per split (then only counted)


def choose_pipeline(spec: DatasetSpec, choice: str = "auto", num_train: int = 0) -> str:
    """`memory` (held on the device, augmented in the step) or `stream` (this module).

    Args:
      spec: the dataset's spec.
      choice: the config's `data_pipeline`: `auto`, `memory` or `stream`.
      num_train: training examples, if known; 0 = `spec.num_train`.

    Returns:
      `"memory"` or `"stream"`. `auto` streams images of any size (`spec.variable_size`)
      and datasets whose uint8 training images exceed `MEMORY_LIMIT_BYTES`.

    Raises:
      ConfigError: an unknown choice, or `memory` for a dataset of any-size images.
    """
    if choice not in PIPELINES:
        raise ConfigError(f"unknown data_pipeline {choice!r}; choose one of {list(PIPELINES)}.")
    if spec.variable_size:
        if choice == "memory":
            raise ConfigError(
                f"data_pipeline='memory' cannot hold {spec.name}: its images (JPEG) have "
                "any size. Use data_pipeline='auto' or 'stream'."
            )
        return "stream"
    if choice != "auto":
        return choice
    n = num_train or spec.num_train
    size = n * spec.image_size * spec.image_size * spec.channels
    return "stream" if size > MEMORY_LIMIT_BYTES else "memory"


@dataclasses.dataclass(frozen=True)
class LocalBatch:
    """What one process reads for one global batch.

    Attributes:
      number: the batch's position in the epoch (0-based).
      rows: `[b]` int64 example indices, in the order they take in the global batch.
      replicated: True when every process reads the whole batch (it does not split
        evenly over the devices) and it is replicated; else the rows are this process's
        slice.
      global_size: B of this batch.

    Raises:
      Nothing of its own.
    """

    number: int
    rows: np.ndarray
    replicated: bool
    global_size: int


def epoch_plan(
    batches: list[np.ndarray], num_devices: int, shard: grain.sharding.ShardOptions
) -> list[LocalBatch]:
    """This process's share of each global batch.

    Args:
      batches: the epoch's global batches of example indices (`sampling.epoch_order`).
      num_devices: n, devices in the data mesh (a multiple of `shard.shard_count`, the
        processes; each has n / P of them).
      shard: this process (`shard_index` p) among `shard_count` P.

    Returns:
      One `LocalBatch` per global batch: rows [p·B/P, (p+1)·B/P) when n divides B, else
      the whole batch, replicated.

    Raises:
      ValueError: n is not a multiple of P.
    """
    p, count = shard.shard_index, shard.shard_count
    if num_devices % count:
        raise ValueError(f"{num_devices} devices do not split evenly over {count} processes.")
    plan = []
    for number, idx in enumerate(batches):
        idx = np.asarray(idx, np.int64)
        size = len(idx)
        if size % num_devices == 0:
            per = size // count
            plan.append(LocalBatch(number, idx[p * per : (p + 1) * per], False, size))
        else:
            plan.append(LocalBatch(number, idx, True, size))
    return plan


class _LoadBatch:
    """grain's map: one `LocalBatch` -> `{images [b, S, S, C] u8, labels [b] i32, ...}`.

    Runs in grain's threads or worker processes, so it holds only picklable state.
    """

    def __init__(self, source, mode: str, size: int, seed: int, epoch: int, flip: bool):
        self.source, self.mode, self.size = source, mode, size
        self.seed, self.epoch, self.flip = seed, epoch, flip

    def _transform(self, pixels: np.ndarray, i: int, j: int) -> np.ndarray:
        """Example j's pixels, transformed with example i's random draws (j is i, or
        stands in for an unreadable i)."""
        if self.mode == "raw":
            if pixels.shape[0] != self.size or pixels.shape[1] != self.size:
                raise DatasetError(
                    f"{self._where(j)} is {pixels.shape[0]}x{pixels.shape[1]} px but the "
                    f"dataset's images are {self.size}x{self.size}. Is this another dataset?"
                )
            return pixels
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        if self.mode == "eval":
            return transforms.eval_transform(pixels, self.size)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return transforms.train_transform(pixels, self.size, rng, flip=self.flip)

    def _where(self, i: int) -> str:
        where = getattr(self.source, "where", None)
        return where(i) if where is not None else f"example {i} of {self.source.describe()}"

    def __call__(self, batch: LocalBatch) -> dict[str, Any]:
        images, bad = [], []
        for i in batch.rows:
            i = int(i)
            for k in range(_MAX_SUBSTITUTES + 1):
                j = i if k == 0 else self.source.substitute(i, k)
                try:
                    pixels = self.source.read(j)
                    break
                except CorruptImage as e:
                    bad.append((self._where(j), e.reason))
            else:
                raise DatasetError(
                    f"{self._where(i)} and the {_MAX_SUBSTITUTES} next files of its class "
                    f"cannot be decoded ({bad[-1][1]}); check the dataset's files."
                )
            images.append(self._transform(pixels, i, j))
        labels = np.asarray([self.source.label(int(i)) for i in batch.rows], np.int32)
        return {
            "images": np.stack(images),
            "labels": labels,
            "number": batch.number,
            "replicated": batch.replicated,
            "global_size": batch.global_size,
            "bad": tuple(bad),
        }


class BatchStream:
    """One split, streamed in batches: the epoch's order, this process's share, grain.

    Args:
      source: a `data.sources` source (`len`, `read`, `label`, `labels`, `substitute`).
      batch_size: B, the global batch size.
      mode: `train`, `eval` or `raw` (see the module docstring).
      image_size: S, the output side in px (for `raw`, the images' own side).
      seed: run seed; the order and the crops depend only on (seed, epoch).
      num_devices: n, devices in the data mesh.
      shard: this process's `grain.sharding.ShardOptions`; None = `ShardByJaxProcess()`.
      shuffle: shuffle each epoch (`sampling.epoch_order`); False = in order (evaluation).
      classes_per_batch, classes_per_batch_until_epoch: the classes-per-batch sampler.
      flip: random horizontal flips in `train` mode.
      workers: grain worker processes (`mp_prefetch`); 0 = threads of this process.
      threads: threads of this process when `workers` is 0 (0 = min(16, CPU count));
        each loads whole batches, so up to max(threads, prefetch) batches are in flight.
      prefetch: batches read ahead (per worker with `workers`).

    Raises:
      ConfigError: an unknown mode, or B, S, workers or prefetch out of range.
    """

    def __init__(
        self,
        source,
        *,
        batch_size: int,
        mode: str,
        image_size: int,
        seed: int = 0,
        num_devices: int = 1,
        shard: grain.sharding.ShardOptions | None = None,
        shuffle: bool = True,
        classes_per_batch: int = 0,
        classes_per_batch_until_epoch: int = 0,
        flip: bool = True,
        workers: int = 0,
        threads: int = 0,
        prefetch: int = 2,
    ):
        if mode not in MODES:
            raise ConfigError(f"unknown stream mode {mode!r}; choose one of {list(MODES)}.")
        if batch_size < 1 or image_size < 1 or workers < 0 or prefetch < 1 or threads < 0:
            raise ConfigError(
                f"batch_size={batch_size} and image_size={image_size} must be >= 1, "
                f"data_workers={workers} >= 0 and prefetch={prefetch} >= 1."
            )
        self.source, self.batch_size, self.mode, self.image_size = (
            source,
            batch_size,
            mode,
            image_size,
        )
        self.seed, self.num_devices, self.shuffle, self.flip = seed, num_devices, shuffle, flip
        self.shard = shard if shard is not None else grain.sharding.ShardByJaxProcess()
        self.classes_per_batch = classes_per_batch
        self.classes_per_batch_until_epoch = classes_per_batch_until_epoch
        self.workers, self.prefetch = workers, prefetch
        self.threads = threads or min(16, os.cpu_count() or 1)

    def __len__(self) -> int:
        """Batches per epoch: ceil(N / B)."""
        return -(-len(self.source) // self.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's global batches of example indices (int32), the last maybe short.

        Raises:
          ValueError: as `sampling.epoch_order` (an epoch below 1).
        """
        n = len(self.source)
        if not self.shuffle:
            return [
                np.arange(s, min(s + self.batch_size, n), dtype=np.int32)
                for s in range(0, n, self.batch_size)
            ]
        active = sampling.classes_per_batch_active(
            self.classes_per_batch, self.classes_per_batch_until_epoch, epoch
        )
        # plain shuffling needs only N; the sampler reads the labels (TFDS: once, cached)
        labels = self.source.labels if active else np.zeros(n, np.int32)
        return sampling.epoch_order(
            labels,
            self.batch_size,
            self.seed,
            epoch,
            self.classes_per_batch,
            self.classes_per_batch_until_epoch,
        )

    def dataset(self, epoch: int) -> grain.IterDataset:
        """The epoch as a grain `IterDataset` of host batches (dicts, see `StreamIterator`).

        Raises:
          ValueError: as `batches` and `epoch_plan`.
        """
        plan = epoch_plan(self.batches(epoch), self.num_devices, self.shard)
        load = _LoadBatch(self.source, self.mode, self.image_size, self.seed, epoch, self.flip)
        ds = grain.MapDataset.source(plan).map(load)
        if self.workers:
            if not flags.FLAGS.is_parsed():  # grain's workers read an absl flag: its default
                flags.FLAGS.mark_as_parsed()
            return ds.to_iter_dataset(
                grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
            ).mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.workers, per_worker_buffer_size=self.prefetch
                )
            )
        # each thread loads one whole batch: keep as many batches in flight as threads
        buffer = max(self.prefetch, self.threads)
        return ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=buffer)
        )

    def epoch(self, epoch: int, state: dict[str, Any] | None = None) -> StreamIterator:
        """An iterator over this process's batches of `epoch` (1-based).

        Args:
          epoch: the epoch.
          state: a `StreamIterator.get_state()` of this epoch to resume from, or None.

        Returns:
          A `StreamIterator`; close it when done (it may hold worker processes).

        Raises:
          ValueError: `state` is of another epoch.
        """
        return StreamIterator(self, epoch, state)


class StreamIterator(Iterator[dict[str, Any]]):
    """This process's batches of one epoch, with a state to resume from.

    Each item is a dict: `images` `[b, S, S, C]` uint8, `labels` `[b]` int32, `number`
    (batch in the epoch), `replicated`, `global_size` (B of this batch), `bad` (tuple of
    `(file, reason)` for the unreadable images replaced in it).

    Args:
      stream: the `BatchStream`.
      epoch: 1-based epoch.
      state: a `get_state()` of the same epoch, or None (from the first batch).

    Raises:
      ValueError: `state` is of another epoch.
    """

    def __init__(self, stream: BatchStream, epoch: int, state: dict[str, Any] | None = None):
        self.stream, self.epoch_number = stream, epoch
        self._iterator = iter(stream.dataset(epoch))
        self.batches_done = 0
        if state is not None:
            self.set_state(state)

    def __next__(self) -> dict[str, Any]:
        try:
            batch = dict(next(self._iterator))
        except StopIteration:
            self.close()  # the epoch is over: stop grain's threads or workers now
            raise
        # worker processes hand over shared memory (grain's SharedMemoryArray): copy it
        # out now so that the segment is released at once, not at some later collection
        batch["images"], batch["labels"] = np.array(batch["images"]), np.array(batch["labels"])
        self.batches_done += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """The position in the epoch, JSON-serialisable: `{"epoch", "batches_done",
        "grain"}` (grain's own iterator state). Equal on every process at the same batch."""
        grain_state = json.loads(json.dumps(self._iterator.get_state(), default=_jsonable))
        return {"epoch": self.epoch_number, "batches_done": self.batches_done, "grain": grain_state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues after the batches `state` records (grain's `set_state`).

        Raises:
          ValueError: `state` is of another epoch.
        """
        if int(state["epoch"]) != self.epoch_number:
            raise ValueError(
                f"iterator state of epoch {state['epoch']} given to epoch {self.epoch_number}."
            )
        self._iterator.set_state(state["grain"])
        self.batches_done = int(state["batches_done"])

    def close(self) -> None:
        """Stops grain's threads or worker processes."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{type(value).__name__} in grain's iterator state is not JSON")


class BadImages:
    """Counts and logs a split's unreadable images per pass; stops past a fraction of it.

    Counted per pass over the split (an epoch, or one evaluation): within a pass every
    example is read once, by one process (a replicated batch is read by all; count its
    files on one process only, `add(..., count=False)` on the others), so the counts of
    the processes add up to the pass's unreadable files. Each file is logged once per
    process (the first `_LOGGED_BAD` by name).

    Args:
      split: `train` or `test`, for messages.
      num_examples: N of the split.
      max_fraction: stop once more than this fraction of N is bad in one pass (0 = stop
        at the first).

    Raises:
      Nothing of its own.
    """

    def __init__(self, split: str, num_examples: int, max_fraction: float):
        self.split, self.num_examples, self.max_fraction = split, num_examples, max_fraction
        self.files: dict[str, str] = {}  # this pass's, on this process
        self.logged: set[str] = set()

    def start_pass(self) -> None:
        """Forgets the previous pass's count (the files logged stay logged)."""
        self.files = {}

    def add(self, bad: tuple[tuple[str, str], ...] | list, count: bool = True) -> None:
        """Records the `(file, reason)` pairs of one batch and logs the new files.

        Args:
          bad: the batch's `bad` entry.
          count: False for a replicated batch on all processes but one.

        Raises:
          Nothing of its own (`check` applies the limit).
        """
        for where, reason in bad:
            if count:
                self.files.setdefault(where, reason)
            if where not in self.logged and len(self.logged) < _LOGGED_BAD:
                self.logged.add(where)
                logging.warning(
                    "unreadable image %s (%s): replaced by the next image of its class "
                    "(%d unreadable in this pass over the %s split so far)",
                    where,
                    reason,
                    len(self.files),
                    self.split,
                )

    def check(self, count: int | None = None) -> None:
        """Raises if `count` bad files (default: this process's; or the sum over the
        processes) exceed the limit.

        Raises:
          DatasetError: count > max_fraction · N.
        """
        count = len(self.files) if count is None else count
        if count > self.max_fraction * self.num_examples:
            first = next(iter(self.files.items()), None)
            example = f", e.g. {first[0]} ({first[1]})" if first else ""
            raise DatasetError(
                f"{count} unreadable images in one pass over the {self.split} split of "
                f"{self.num_examples} (more than max_bad_fraction={self.max_fraction})"
                f"{example}. Replace or delete the bad files (the run resumes from its last "
                "checkpoint), or raise --config.max_bad_fraction."
            )


def to_global(batch: dict[str, Any], mesh) -> tuple[Any, Any]:
    """A host batch of `StreamIterator` -> global `(images, labels)` over the data mesh.

    Args:
      batch: the iterator's dict (this process's rows, or the whole batch if replicated).
      mesh: the 1-D `('data',)` mesh.

    Returns:
      `images` `[B, S, S, C]` uint8 and `labels` `[B]` int32 global `jax.Array`s, split
      over the mesh's axis (replicated for a batch that does not split evenly).

    Raises:
      Nothing of its own; JAX raises if the processes' shares disagree in shape.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    axis = mesh.axis_names[0]
    spec = PartitionSpec() if batch["replicated"] else PartitionSpec(axis)
    sharding = NamedSharding(mesh, spec)
    size = int(batch["global_size"])
    return tuple(
        jax.make_array_from_process_local_data(sharding, x, (size, *x.shape[1:]))
        for x in (batch["images"], batch["labels"])
    )
