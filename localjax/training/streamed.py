"""The training run on streamed data (ImageNet and other datasets too large for the
device): the loop of `training.loop`, fed batch by batch by `data.streaming`.

Usage::

    if wants_stream(config):                       # training.loop.train_and_evaluate does this
        summary = train_and_evaluate(config, workdir)

Everything but the data is `training.loop`'s: the mesh, the workdir lock, validation, the
model and optimizer, the epoch checkpoints, metrics.jsonl, TensorBoard and the summary.
What differs:

- the data are `data.sources` (an ImageFolder, TFDS, or host arrays) read by grain in
  this process's share of each global batch (`data.streaming.BatchStream`), never whole;
  batches reach the step as global arrays sharded over `('data',)`;
- on the device the step only normalises (and applies cutout); the host did
  RandomResizedCrop and flip for any-size images, while fixed-size images (e.g.
  `imagenet_resized_32`) keep the on-device crop and flip of `data.augmentation`. So a
  fixed-size dataset streamed trains exactly as it does held in memory;
- the model's class count is the folder's (a subset of ImageNet's classes works) and the
  training resolution is the config's `image_size` (0 = the dataset's: 224 for ImageNet);
- with `checkpoint_every_steps` = N > 0, the run also writes a checkpoint every N steps
  inside an epoch to `WORKDIR/checkpoints_mid/` (the newest kept), holding the state, the
  grain iterator's state (each process's, `streams`) and the epoch's metric sums so far; a
  run restarted in the same workdir continues from it when it continues the newest epoch
  checkpoint, and its metrics equal an uninterrupted run's;
- unreadable images are counted, logged and replaced (`data.streaming.BadImages`);
- checkpoints (epoch and mid-epoch) are the loop's per-process sharded checkpoints
  (`training.checkpoints`): every process constructs both `Checkpointer`s on the shared
  workdir and saves and restores the global state, each writing and reading its own
  shards, with no gather of the state onto one host; the meta (epoch, step, stream
  states, metric sums, config, data fingerprint) is process 0's JSON. The processes agree
  on each restore step (`checkpoints.gather_json`), so they resume, pass over or delete a
  mid-epoch checkpoint together. Checkpoints written by the earlier process-0 protocol
  (NumPy states, one stream state) restore alike.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from localjax import data as data_lib
from localjax.data import sources as sources_lib
from localjax.data import streaming
from localjax.errors import ConfigError
from localjax.network import count_params
from localjax.objective import summarize_metrics
from localjax.training import loop as loop_lib
from localjax.training import sharding as sharding_lib
from localjax.training.checkpoints import (
    Checkpointer,
    CheckpointLayoutError,
    CheckpointMismatch,
    UnreadableCheckpoint,
    gather_json,
)
from localjax.training.config import validate
from localjax.training.metric_writer import MetricWriter
from localjax.training.metrics import check_finite, drain
from localjax.training.optimizer import epoch_learning_rate
from localjax.training.resume import (
    _resume_mismatch,
    restore,
    resumed_history,
    trajectory_config,
)
from localjax.training.steps import make_eval_step, make_train_step

__all__ = ["wants_stream", "check_data_config", "train_and_evaluate", "MID_DIR"]

MID_DIR = "checkpoints_mid"  # the mid-epoch checkpoints, beside `checkpoints/`


def check_data_config(config) -> None:
    """Refuses bad data-pipeline fields up front, for both pipelines.

    Checks `data_pipeline` (`auto`, `memory` or `stream`; `memory` cannot hold any-size
    images), `image_size` (>= 0; only any-size datasets resize, so a fixed-size dataset
    takes 0 or its own size), `data_workers` >= 0, `data_prefetch` >= 1,
    `max_bad_fraction` in [0, 1], `checkpoint_every_steps` >= 0, and that a streamed run
    is not pipelined (`pipeline_stages` 1).

    Args:
      config: the run's config (experiments/configs/default.py).

    Raises:
      ConfigError: the first bad field, with its value and the fix.
    """
    spec = data_lib.get_spec(config.dataset)
    pipeline = streaming.choose_pipeline(spec, config.get("data_pipeline", "auto"))
    size = config.get("image_size", 0)
    if not isinstance(size, int) or size < 0:
        raise ConfigError(f"image_size={size!r} must be an integer >= 0 (0 = the dataset's).")
    if size and not spec.variable_size and size != spec.image_size:
        raise ConfigError(
            f"image_size={size}: {spec.name}'s images are {spec.image_size} px and are not "
            "resized; use image_size=0 (only any-size datasets such as imagenet resize)."
        )
    checks = (
        ("data_workers", 0, "grain worker processes; 0 = threads"),
        ("data_prefetch", 1, "batches read ahead"),
        ("checkpoint_every_steps", 0, "0 = only at epoch ends"),
    )
    for field, low, what in checks:
        value = config.get(field, low)
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{field}={value!r} must be an integer >= {low} ({what}).")
    fraction = config.get("max_bad_fraction", 0.001)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(
            f"max_bad_fraction={fraction} must be in [0, 1] (the fraction of a split's "
            "images that may be unreadable before the run stops; 0 = none)."
        )
    if pipeline == "stream" and config.get("pipeline_stages", 1) > 1:
        raise ConfigError(
            f"pipeline_stages={config.pipeline_stages} with streamed data ({spec.name}) is "
            "not supported yet; use pipeline_stages=1, or data_pipeline='memory' for a "
            "fixed-size dataset that fits the device."
        )


def wants_stream(config) -> bool:
    """Whether this config trains on streamed data (`data.streaming.choose_pipeline`).

    Args:
      config: the run's config.

    Returns:
      True for `data_pipeline='stream'`, and for `auto` with images of any size or a
      training set above `data.streaming.MEMORY_LIMIT_BYTES`.

    Raises:
      ConfigError: as `check_data_config` (an unknown dataset or data field).
    """
    check_data_config(config)
    spec = data_lib.get_spec(config.dataset)
    return streaming.choose_pipeline(spec, config.get("data_pipeline", "auto")) == "stream"


@dataclasses.dataclass
class _StreamRun(loop_lib._Run):
    """`loop._Run` plus the streams, the mid-epoch checkpoints and the bad-image counts."""

    train_stream: Any = None
    test_stream: Any = None
    mid_ckpt: Checkpointer | None = None
    resume: dict | None = None  # {"epoch", "stream", "totals"} of a mid-epoch checkpoint
    bad: dict = dataclasses.field(default_factory=dict)  # split -> streaming.BadImages

    def close(self, quiet: bool = False) -> None:
        """Closes the mid-epoch checkpointer, then as `loop._Run.close`."""
        try:
            if self.mid_ckpt is not None:
                try:
                    self.mid_ckpt.close()
                except Exception as e:
                    if not quiet:
                        raise
                    logging.warning("while stopping: closing the mid-epoch checkpointer: %s", e)
        finally:
            super().close(quiet)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains and evaluates one configuration on streamed data, resuming from `workdir`.

    The same run as `training.loop.train_and_evaluate` (which calls this when
    `wants_stream(config)`), with the data streamed (module docstring).

    Args:
      config: an `ml_collections.ConfigDict` as in `experiments/configs/` (plus the
        streamed fields: data_pipeline, image_size, data_workers, data_prefetch,
        max_bad_fraction, checkpoint_every_steps).
      workdir: output directory, as for `training.loop.train_and_evaluate`.

    Returns:
      The summary dict of `training.loop.train_and_evaluate`.

    Raises:
      ConfigError: as `training.loop.train_and_evaluate`, and `check_data_config`'s.
      DatasetError: a missing folder, a train/val class mismatch, an empty class folder,
        a TFDS name not prepared and not preparable here, or too many unreadable images.
      TrainingError: as `training.loop.train_and_evaluate`.
    """
    run = _setup(config, workdir)
    state = run.state
    try:
        for epoch in range(run.last_epoch + 1, config.epochs + 1):
            state, record = _train_and_evaluate_epoch(run, state, epoch)
            loop_lib._record_and_save(run, state, epoch, record)
        summary = loop_lib._write_summary(run)
    except BaseException:
        run.close(quiet=True)
        raise
    run.close()
    return summary


def _setup(config, workdir: str) -> _StreamRun:
    """As `loop._setup`: join the processes, validate, mesh, lock, then `_setup_locked`."""
    sharding_lib.initialize_distributed(
        config.get("coordinator_address", ""),
        config.get("num_processes", 0),
        config.get("process_id", -1),
    )
    validate(config, workdir)
    check_data_config(config)
    mesh = sharding_lib.make_mesh(config.get("num_devices", 0))
    sharding_lib.check_divisible(config.batch_size, mesh, "batch_size")
    sharding_lib.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    os.makedirs(workdir, exist_ok=True)
    primary = sharding_lib.is_primary()
    lock = loop_lib._lock_workdir(workdir, primary)
    try:
        return _setup_locked(config, workdir, mesh, primary, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _streams(config, spec, train, test, mesh):
    """The train and test `BatchStream`s: host crop/flip for any-size images, else raw."""
    common = dict(
        image_size=spec.image_size,
        seed=config.seed,
        num_devices=mesh.size,
        workers=config.get("data_workers", 0),
        prefetch=config.get("data_prefetch", 2),
    )
    train_stream = streaming.BatchStream(
        train,
        batch_size=config.batch_size,
        mode="train" if spec.variable_size else "raw",
        classes_per_batch=config.get("classes_per_batch", 0),
        classes_per_batch_until_epoch=config.get("classes_per_batch_until_epoch", 0),
        flip=spec.flip,
        **common,
    )
    test_stream = streaming.BatchStream(
        test,
        batch_size=config.eval_batch_size,
        mode="eval" if spec.variable_size else "raw",
        shuffle=False,
        **common,
    )
    return train_stream, test_stream


def _setup_locked(config, workdir: str, mesh, primary: bool, lock) -> _StreamRun:
    """Sources, model, state, restore (epoch, then mid-epoch), compiled steps."""
    spec = data_lib.get_spec(config.dataset)
    train, test = sources_lib.open_sources(
        spec,
        config.data_dir or None,
        config.get("data_source", "auto"),
        train_limit=config.get("train_limit", 0),
        test_limit=config.get("test_limit", 0),
    )
    spec = dataclasses.replace(
        spec,
        num_classes=train.num_classes,
        image_size=config.get("image_size", 0) or spec.image_size,
    )
    if config.get("classes_per_batch", 0) > spec.num_classes:
        raise ConfigError(
            f"classes_per_batch={config.classes_per_batch} exceeds the {spec.num_classes} "
            f"classes of {train.describe()}; use at most {spec.num_classes}."
        )
    channels = 3 if spec.variable_size else spec.channels
    model, tx, steps_per_epoch, host_state = loop_lib.fresh_state(
        config,
        spec,
        len(train),
        np.zeros((2, spec.image_size, spec.image_size, channels), np.uint8),
        np.zeros((2,), np.int32),
    )
    params_inference, params_total = count_params(host_state.params)
    # every process: each writes and reads its own shards of the shared directories
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep)
    mid = None
    if config.get("checkpoint_every_steps", 0):
        try:
            mid = Checkpointer(os.path.join(workdir, MID_DIR), 1)
        except BaseException:
            ckpt.close()
            raise
    train_stream, test_stream = _streams(config, spec, train, test, mesh)
    fraction = config.get("max_bad_fraction", 0.001)
    run = _StreamRun(
        config=config,
        workdir=workdir,
        primary=primary,
        mesh=mesh,
        spec=spec,
        train=train,
        test=test,
        model=model,
        steps_per_epoch=steps_per_epoch,
        params_inference=params_inference,
        params_total=params_total,
        ckpt=ckpt,
        last_epoch=0,
        step_count=0,
        lock=lock,
        data_fingerprint={"train": train.fingerprint(), "test": test.fingerprint()}
        if primary
        else None,
        train_stream=train_stream,
        test_stream=test_stream,
        mid_ckpt=mid,
        bad={
            "train": streaming.BadImages("train", len(train), fraction),
            "test": streaming.BadImages("test", len(test), fraction),
        },
    )
    try:
        # the fresh state placed on the mesh: the layout the checkpoints are read into
        run.last_epoch, state = restore(
            ckpt,
            sharding_lib.put_replicated(host_state, mesh),
            config,
            workdir,
            data=run.data_fingerprint,
            say=run.say,
        )
        run.checkpoint_epoch = run.last_epoch
        run.step_count = int(jax.device_get(state.step))
        run.state = _restore_mid(run, state)
        step = int(jax.device_get(run.state.step))
        run.train_fn, run.eval_fn = _compiled_steps(model, tx, spec, config, mesh)
        if primary and run.last_epoch:
            run.history = resumed_history(workdir, run.last_epoch)
        banner = loop_lib._banner(run) + f"; streamed from {train.describe()}"
        if run.resume is not None:
            banner += (
                f"; resuming epoch {run.resume['epoch']} after batch "
                f"{run.resume['stream']['batches_done']} (step {step})"
            )
        run.say(banner)
        run.step_count = step  # past the mid-epoch checkpoint's steps
        if primary:
            run.writer = MetricWriter(
                workdir,
                append=bool(run.last_epoch),
                history=run.history if run.last_epoch else None,
            )
    except BaseException:
        run.close(quiet=True)
        raise
    run.start = time.perf_counter()
    return run


def _device_spec(spec):
    """The spec the step augments with: any-size images were cropped and flipped on the
    host, so only normalisation (and cutout) remain; fixed-size ones keep the spec's."""
    return dataclasses.replace(spec, crop_padding=0, flip=False) if spec.variable_size else spec


def _compiled_steps(model, tx, spec, config, mesh):
    """The data-parallel train and eval steps on batches of images (not indices)."""
    device_spec = _device_spec(spec)
    step_fn = make_train_step(
        model,
        tx,
        preprocess=lambda im, k: data_lib.augment(
            im,
            k,
            device_spec,
            cutout_length=config.get("cutout_length", 0),
            n_holes=config.get("n_holes", 1),
        ),
        seed=config.seed,
    )
    step_fn = loop_lib._with_conv_wgrad(step_fn, config.get("conv_wgrad", "auto"))
    eval_step = make_eval_step(model, preprocess=lambda im: data_lib.normalize(im, spec))
    train_fn = sharding_lib.data_parallel(step_fn, mesh)
    eval_fn = sharding_lib.data_parallel(eval_step, mesh, donate_first=False)
    return train_fn, eval_fn


# ------------------------------------------------------------------ mid-epoch checkpoints
def _agreed(why: str) -> str:
    """Every process's reason to give up a mid-epoch checkpoint, combined (a collective):
    process 0's if it has one, else the first other process's (prefixed with its
    number); "" when no process has one."""
    for i, reason in enumerate(gather_json(why)):
        if reason:
            return reason if i == 0 else f"on process {i}: {reason}"
    return ""


def _own_stream(meta: dict) -> dict:
    """This process's grain iterator state in a mid-epoch checkpoint's meta: its entry of
    `streams` (one per process, in process order) when the checkpoint was written by as
    many processes as run now, else `stream` (process 0's; checkpoints of the earlier
    protocol hold only that). Both work on any process: the state is the position in
    the epoch's list of global batches, which every process's plan has in full."""
    streams = meta.get("streams")
    if isinstance(streams, list) and len(streams) == jax.process_count():
        return streams[jax.process_index()]
    return meta["stream"]


def _mid_meta_problem(run: _StreamRun, step: int) -> tuple[str, dict | None]:
    """This process's verdict on a mid-epoch checkpoint's meta: ("", meta) when it
    continues the state restored so far (its epoch follows the newest epoch checkpoint,
    same run, same data: the data is checked on process 0, which holds the fingerprint),
    else (reason, None); the reason `stale` for one of an epoch already checkpointed."""
    try:
        meta = run.mid_ckpt.restore_meta(step)
    except UnreadableCheckpoint as e:
        return str(e), None
    if not all(k in meta for k in ("epoch", "stream", "totals")):
        return f"checkpoint {step} cannot be read: its meta lacks the epoch, stream or sums", None
    if int(meta["epoch"]) != run.last_epoch + 1 or step <= run.step_count:
        return "stale", None
    if _resume_mismatch(meta.get("config", {}), trajectory_config(run.config)):
        return "written by another config", None
    if run.data_fingerprint is not None and meta.get("data") != run.data_fingerprint:
        return "written for other data", None
    return "", meta


def _read_mid(run: _StreamRun, template):
    """Every process: (state, resume dict) of the newest mid-epoch checkpoint when it
    continues the state restored so far (`_mid_meta_problem`), each process reading its
    own shards laid out like `template`, else (None, None). The processes agree on the
    meta, then on the state (`_agreed`); one that does not apply is deleted (with a line
    saying why, unless it is merely of an epoch already checkpointed), so that the
    checkpoints written from here on are the newest."""
    if run.mid_ckpt is None:  # the same on every process: checkpoint_every_steps = 0
        return None, None
    steps = gather_json(run.mid_ckpt.epochs())[0]  # process 0's listing
    if not steps:
        return None, None
    step, state = steps[-1], None
    why, meta = _mid_meta_problem(run, step)
    why = _agreed(why)
    if not why:
        try:
            state = run.mid_ckpt.restore_state(step, template)
        except (UnreadableCheckpoint, CheckpointMismatch, CheckpointLayoutError) as e:
            why = str(e)
        why = _agreed(why)
    if why:
        if why != "stale":
            run.say(f"deleting mid-epoch checkpoint {step}: {why}; resuming from the epoch's.")
        _clear_mid(run)
        return None, None
    resume = {"epoch": int(meta["epoch"]), "stream": _own_stream(meta), "totals": meta["totals"]}
    return state, resume


def _clear_mid(run: _StreamRun) -> None:
    """Every process: deletes every mid-epoch checkpoint (process 0 removes the folder
    while the others wait) and opens the folder anew."""
    directory = run.mid_ckpt.directory
    run.mid_ckpt.close()
    run.mid_ckpt = None  # closed: not closed again if reopening fails
    if jax.process_index() == 0:
        shutil.rmtree(directory, ignore_errors=True)
    gather_json(None)  # a barrier: nobody opens the folder before it is gone
    run.mid_ckpt = Checkpointer(directory, 1)


def _restore_mid(run: _StreamRun, state):
    """Continues from a mid-epoch checkpoint if one applies (`_read_mid`): sets
    `run.resume` and returns the state to train on (else `state`, unchanged)."""
    restored, resume = _read_mid(run, state)
    if resume is None:
        return state
    run.resume = resume
    return restored


def _save_mid(run: _StreamRun, state, epoch: int, stream_state: dict, totals: dict) -> None:
    """Every process writes its shards of the mid-epoch checkpoint of the current step
    (the newest kept); the meta, process 0's, holds every process's stream state."""
    streams = gather_json(stream_state)
    meta = {
        "epoch": epoch,
        "step": run.step_count,
        "stream": streams[0],
        "streams": streams,
        "totals": totals,
        "config": trajectory_config(run.config),
        "data": run.data_fingerprint,  # process 0's meta is the one written
    }
    try:
        run.mid_ckpt.save(run.step_count, state, meta)
    except Exception as e:
        cause = loop_lib._os_error(e)
        if cause is None:
            raise
        logging.warning(
            "could not write the mid-epoch checkpoint of step %d: %s", run.step_count, e
        )


# ------------------------------------------------------------------ epochs
def _count_bad(run: _StreamRun, split: str, batch: dict) -> None:
    """Records a batch's unreadable images; a replicated batch's count on process 0 only
    (every process read it)."""
    count = not batch["replicated"] or jax.process_index() == 0
    run.bad[split].add(batch["bad"], count=count)


def _check_bad(run: _StreamRun, split: str) -> None:
    """Stops every process alike once the bad images of this pass over `split` (summed
    over the processes) exceed the limit."""
    counter = run.bad[split]
    count = len(counter.files)
    if jax.process_count() > 1:
        count = int(np.sum(multihost_utils.process_allgather(np.int32(count))))
    counter.check(count)


def _train_and_evaluate_epoch(run: _StreamRun, state, epoch: int):
    """One epoch's updates (from a mid-epoch checkpoint's batch, if resuming into this
    epoch), then the test set; returns (state, metrics.jsonl record)."""
    config = run.config
    start = time.perf_counter()
    resume, run.resume = (run.resume if run.resume and run.resume["epoch"] == epoch else None), None
    iterator = run.train_stream.epoch(epoch, resume["stream"] if resume else None)
    run.bad["train"].start_pass()
    totals = dict(resume["totals"]) if resume else {}
    try:
        state, totals = _train_epoch(run, state, iterator, epoch, totals)
    finally:
        iterator.close()
    train_seconds = time.perf_counter() - start
    lr = epoch_learning_rate(config.lr, tuple(config.milestones), epoch, config.lr_decay)
    record = {"epoch": epoch, "lr": lr}
    record.update(summarize_metrics(totals, prefix="train_", percent=True))
    record.update(summarize_metrics(_evaluate(run, state), prefix="test_", percent=True))
    record["train_seconds"] = train_seconds
    record["epoch_seconds"] = time.perf_counter() - start
    return state, record


def _train_epoch(run: _StreamRun, state, iterator, epoch: int, totals: dict):
    """The epoch's remaining steps; returns (state, metric sums of the whole epoch)."""
    from tqdm import tqdm  # only the full run draws a progress bar

    config, stream = run.config, run.train_stream
    every = config.get("checkpoint_every_steps", 0)
    first = run.step_count - iterator.batches_done + 1  # the epoch's first step
    name = f"epoch {epoch}"
    advice = (run.workdir, run.checkpoint_epoch, config.lr)
    window: list = []

    def check(step, metrics):
        where = f"{name}, batch {step - first + 1} of {len(stream)}"
        check_finite(metrics, step, where, *advice)

    show = config.progress_bar and run.primary
    bar = tqdm(
        total=len(stream), initial=iterator.batches_done, desc=name, leave=False, disable=not show
    )
    with bar:
        for batch in iterator:
            _count_bad(run, "train", batch)
            images, labels = streaming.to_global(batch, run.mesh)
            state, metrics = run.train_fn(state, images, labels)
            run.step_count += 1
            window.append((run.step_count, metrics))
            bar.update(1)
            if len(window) == config.sync_every:
                drain(window, totals, check)
                _check_bad(run, "train")
            if every and run.step_count % every == 0 and iterator.batches_done < len(stream):
                drain(window, totals, check)  # the sums up to this step, in step order
                _save_mid(run, state, epoch, iterator.get_state(), dict(totals))
    drain(window, totals, check)
    _check_bad(run, "train")
    return state, totals


def _evaluate(run: _StreamRun, state) -> dict[str, float]:
    """The test split's metric sums, streamed in order."""
    totals: dict[str, float] = {}
    window: list = []
    iterator = run.test_stream.epoch(1)
    run.bad["test"].start_pass()
    try:
        for batch in iterator:
            _count_bad(run, "test", batch)
            images, labels = streaming.to_global(batch, run.mesh)
            window.append((batch["number"], run.eval_fn(state, images, labels)))
            if len(window) == run.config.sync_every:
                drain(window, totals)
    finally:
        iterator.close()
    drain(window, totals)
    _check_bad(run, "test")
    return totals
