"""The whole training run: set up, then per epoch train, evaluate, record and save.

Usage::

    summary = train_and_evaluate(config, workdir)   # config as in experiments/configs/

The per-step math lives in `training.steps`, the device layout in `training.sharding`, the
checkpoint format in `training.checkpoints`, resuming in `training.resume`; this module
owns the loop around them:

- one `('data',)` mesh over every device (of every process): state and datasets
  replicated, each batch's indices split over the devices, the step jitted for the global
  batch (BatchNorm statistics and similarity matrices over all B examples);
- with `pipeline_stages` = S > 1, training runs pipelined over the same devices as an
  S × (n / S) `('stage', 'data')` mesh (`training.pipeline`, docs/pipeline.md), the state
  unpacked to the ordinary replicated `TrainState` after every epoch, so evaluation,
  checkpoints and resume are unchanged;
- metrics fetched every `sync_every` steps (this bounds the queue of dispatched steps and
  names the exact step, and block, where a loss first turns non-finite);
- `WORKDIR/metrics.jsonl`: one line per epoch; for a seed every value but the wall-clock
  `epoch_seconds` (`TIMING_KEYS`) is identical from run to run, resumed or not;
- `WORKDIR/checkpoints/<epoch>`: every `checkpoint_every` epochs and at the end, the last
  `keep` retained; a workdir holding one is resumed from the newest that reads (on the
  same data: its fingerprint is recorded), continuing metrics.jsonl and rewriting the
  TensorBoard events from it;
- `WORKDIR/run.lock`: held for the run, so a second run in the same workdir stops at once;
- process 0 alone prints and writes metrics.jsonl, TensorBoard events and summary.json;
  every process writes its own shards of each checkpoint into `WORKDIR/checkpoints/`, so
  a multi-process run needs one workdir every process reaches (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from localjax import data as data_lib
from localjax.data import fingerprint, sampling
from localjax.errors import ConfigError, DatasetError, TrainingError
from localjax.network import LocalNetwork, count_params
from localjax.objective import summarize_metrics
from localjax.ops.conv_wgrad import conv_wgrad_context
from localjax.training import pipeline as pipeline_lib
from localjax.training import sharding as sharding_lib
from localjax.training.checkpoints import Checkpointer
from localjax.training.config import check_last_batch, model_from_config, validate
from localjax.training.metric_writer import MetricWriter
from localjax.training.metrics import TIMING_KEYS, check_finite, check_state_finite, drain
from localjax.training.optimizer import epoch_learning_rate, make_optimizer
from localjax.training.resume import RESUMABLE_CHANGES, restore, resumed_history, trajectory_config
from localjax.training.state import TrainState, create_train_state
from localjax.training.steps import make_eval_step, make_train_step
from localjax.training.workdir_lock import WorkdirLock

__all__ = [
    "train_and_evaluate",
    "TrainState",
    "TrainingError",
    "ConfigError",
    "DatasetError",
    "RESUMABLE_CHANGES",
    "TIMING_KEYS",
]


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains and evaluates one configuration, resuming from `workdir`'s checkpoint if any.

    Runs the recipe of METHOD.md, Training, data parallel over every device of every
    process (DESIGN.md, Decisions: data parallel): the results equal a one-device run's
    up to float summation order. With a coordinator
    (`config.coordinator_address` or `JAX_COORDINATOR_ADDRESS`) it first joins the
    multi-process run; every process loads the dataset and feeds its devices' share of
    each global batch. Only process 0 writes metrics and the summary; every process
    writes its shards of each checkpoint, so all processes need the same `workdir` on a
    file system they all reach (docs/scaling.md).

    Args:
      config: an `ml_collections.ConfigDict` as in `experiments/configs/` (dataset,
        data_dir, model, loss, recipe fields, dtype, epochs, batch_size, seed,
        train_limit, checkpoint_every, keep, num_devices, coordinator fields, ...).
      workdir: output directory; created if needed. Writes `metrics.jsonl` (one JSON
        object per epoch: epoch, lr, train/test loss and error in percent, per-block
        local loss and error, epoch_seconds; all but `TIMING_KEYS` identical for a
        seed, resumed or not),
        `checkpoints/<epoch>/` (Orbax) and `summary.json`.

    Returns:
      The summary dict (config, parameter counts, final test error in percent, device
      and process counts, the epoch resumed from, this invocation's training seconds).

    Raises:
      ConfigError (a ValueError): unknown dataset, model, loss, dtype or conv_wgrad;
        batch_size or eval_batch_size below 1 or not divisible by the device count; a
        negative train/test limit; dropout outside [0, 1); a non-positive lr or lr_decay;
        num_hidden < 1; classes_per_batch above the dataset's class count; a pipeline
        that cannot be built (docs/pipeline.md: backprop or deep supervision, more stages
        than blocks, bad cuts, stages that do not divide the devices, a batch that does
        not divide over a stage's devices); a workdir that
        is a file; a workdir checkpoint of a different run, of other data, of a model of
        other shapes, or with no readable checkpoint (an unreadable newest one is moved
        aside and an older one resumed).
      DatasetError: missing or corrupt data files, or another dataset's files.
      TrainingError: a non-finite loss (no checkpoint of that epoch is written), another
        run holding the workdir, a full disk while writing metrics or a checkpoint.
    """
    from localjax.training import streamed  # imports this module

    if streamed.wants_stream(config):  # too large for the device, or asked: data.streaming
        return streamed.train_and_evaluate(config, workdir)
    run = _setup(config, workdir)
    state = run.state
    try:
        for epoch in range(run.last_epoch + 1, config.epochs + 1):
            state, record = _train_and_evaluate_epoch(run, state, epoch)
            _record_and_save(run, state, epoch, record)
        summary = _write_summary(run)  # still holding the workdir's lock
    except BaseException:
        run.close(quiet=True)  # a failing close must not hide why the run stopped
        raise
    run.close()
    return summary


@dataclasses.dataclass
class _Run:
    """What the epochs of one run share: config, devices, data, model, compiled steps."""

    config: Any
    workdir: str
    primary: bool
    mesh: Any
    spec: data_lib.DatasetSpec
    train: data_lib.Dataset
    test: data_lib.Dataset
    model: LocalNetwork
    steps_per_epoch: int
    params_inference: int
    params_total: int
    ckpt: Checkpointer | None
    last_epoch: int
    step_count: int
    lock: WorkdirLock | None = None
    data_fingerprint: dict | None = None  # process 0: recorded in each checkpoint
    checkpoint_epoch: int = 0  # the newest checkpoint in the workdir (0: none)
    state: Any = None
    device_data: tuple = ()
    train_fn: Callable | None = None
    eval_fn: Callable | None = None
    history: list = dataclasses.field(default_factory=list)
    writer: MetricWriter | None = None
    start: float = 0.0
    pipeline_mesh: Any = None  # the ('stage', 'data') mesh when pipeline_stages > 1
    pipeline: Any = None  # its `pipeline.Pipeline` (docs/pipeline.md)

    def say(self, message: str) -> None:
        if self.primary:
            print(message, flush=True)

    def close(self, quiet: bool = False) -> None:
        """Closes the metrics writer and the checkpointer, then releases the workdir.

        quiet: log (not raise) their errors, while another exception is on its way out.
        """
        try:
            for part in (self.writer, self.ckpt):
                if part is None:
                    continue
                try:
                    part.close()
                except Exception as e:
                    if not quiet:
                        raise
                    logging.warning(
                        "while stopping: closing the %s failed: %s", type(part).__name__, e
                    )
        finally:
            if self.lock is not None:
                self.lock.release()


def _setup(config, workdir: str) -> _Run:
    """Joins the processes, validates, loads data, builds and restores the state, compiles."""
    sharding_lib.initialize_distributed(
        config.get("coordinator_address", ""),
        config.get("num_processes", 0),
        config.get("process_id", -1),
    )
    validate(config, workdir)
    mesh = sharding_lib.make_mesh(config.get("num_devices", 0))
    pipeline_mesh = None
    if config.get("pipeline_stages", 1) > 1:  # the batch splits over each stage's devices
        pipeline_mesh = pipeline_lib.make_pipeline_mesh(mesh, config.pipeline_stages)
        pipeline_lib.check_batch_divisible(config.batch_size, pipeline_mesh)
    else:
        sharding_lib.check_divisible(config.batch_size, mesh, "batch_size")
    sharding_lib.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    os.makedirs(workdir, exist_ok=True)
    primary = sharding_lib.is_primary()
    lock = _lock_workdir(workdir, primary)
    try:
        return _setup_locked(config, workdir, mesh, primary, lock, pipeline_mesh)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _lock_workdir(workdir: str, primary: bool) -> WorkdirLock | None:
    """Process 0 locks the workdir for the run; every process stops if it cannot."""
    lock, error = (WorkdirLock(workdir) if primary else None), None
    if lock is not None:
        try:
            lock.acquire()
        except TrainingError as e:
            error = e
    locked = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if error is not None:
        raise error
    if not locked:
        raise TrainingError(f"another run is training in {workdir} (see process 0's log).")
    return lock


def fresh_state(config, spec, num_train: int, images, labels):
    """The model, optimizer, steps per epoch and freshly initialised state of a run.

    Shared by the in-memory loop and the streamed one (`training.streamed`), so both
    build the same model and initial state from the same config.

    Args:
      config: the run's config (`model_from_config`'s fields, `batch_size`, `lr`,
        `milestones`, `lr_decay`, `optim`, `momentum`, `weight_decay`, `seed`).
      spec: the dataset's `DatasetSpec` (classes, normalisation).
      num_train: N, training examples per epoch.
      images: `[2, H, W, C]` uint8 sample images (only their shapes matter).
      labels: `[2]` integer sample labels.

    Returns:
      `(model, tx, steps_per_epoch, host_state)`: the network, the optax optimizer (its
      milestone schedule in epochs of ceil(N / batch_size) steps), that step count, and
      the `TrainState` from `jax.random.key(config.seed)` as host NumPy arrays.

    Raises:
      ConfigError: an unknown model or optimizer setting, or a last batch that cannot be
        split over the devices (`check_last_batch`).
    """
    model = model_from_config(config, spec.num_classes)
    steps_per_epoch = math.ceil(num_train / config.batch_size)
    check_last_batch(config, num_train)
    tx = make_optimizer(
        config.lr,
        tuple(config.milestones),
        steps_per_epoch,
        config.lr_decay,
        optim=config.get("optim", "adam"),
        momentum=config.get("momentum", 0.0),
        weight_decay=config.get("weight_decay", 0.0),
    )
    sample = data_lib.normalize(jnp.asarray(images), spec)
    host_state = jax.device_get(
        create_train_state(model, tx, jax.random.key(config.seed), sample, jnp.asarray(labels))
    )
    return model, tx, steps_per_epoch, host_state


def _setup_locked(config, workdir: str, mesh, primary: bool, lock, pipeline_mesh=None) -> _Run:
    """`_setup` once the workdir is locked: data, model, state, restore, compiled steps
    (and, with `pipeline_mesh`, the pipeline's stages and programs)."""
    spec = data_lib.get_spec(config.dataset)
    train, test = (_load_split(config, split) for split in ("train", "test"))

    model, tx, steps_per_epoch, host_state = fresh_state(
        config, spec, len(train), train.images[:2], train.labels[:2]
    )
    params_inference, params_total = count_params(host_state.params)
    # every process: each writes and reads its own shards of the shared checkpoints dir
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep)
    run = _Run(
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
        data_fingerprint=fingerprint.fingerprints({"train": train, "test": test})
        if primary
        else None,
    )
    try:
        # the fresh state placed on the mesh: the layout the checkpoint is read into
        run.last_epoch, run.state = restore(
            ckpt,
            sharding_lib.put_replicated(host_state, mesh),
            config,
            workdir,
            data=run.data_fingerprint,
            say=run.say,
        )
        run.checkpoint_epoch = run.last_epoch
        run.step_count = int(jax.device_get(run.state.step))
        run.device_data = sharding_lib.put_replicated(
            (train.images, train.labels, test.images, test.labels), mesh
        )
        run.train_fn, run.eval_fn = _compiled_steps(model, tx, spec, config, mesh)
        if pipeline_mesh is not None:
            run.pipeline_mesh = pipeline_mesh
            run.pipeline = pipeline_lib.make_pipeline(
                model,
                tx,
                host_state,
                pipeline_mesh,
                sample=(train.images[:2], train.labels[:2]),
                batch_size=config.batch_size,
                cuts=tuple(config.get("pipeline_cuts", ())) or None,
                preprocess=_train_preprocess(spec, config),
                seed=config.seed,
                conv_wgrad=config.get("conv_wgrad", "auto"),
                state_mesh=mesh,
            )
        if primary and run.last_epoch:
            run.history = resumed_history(workdir, run.last_epoch)
        run.say(_banner(run))
        if primary:  # a resume rewrites the TensorBoard events from the kept records
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


def _load_split(config, split: str) -> data_lib.Dataset:
    ds = data_lib.load(
        config.dataset, split, config.data_dir or None, source=config.get("data_source", "auto")
    )
    limit = config.get("train_limit" if split == "train" else "test_limit", 0)
    return data_lib.Dataset(ds.images[:limit], ds.labels[:limit]) if limit else ds


def _train_preprocess(spec, config) -> Callable:
    """`(images u8, key) -> float images`: the training augmentation and normalisation."""
    return lambda im, k: data_lib.augment(
        im,
        k,
        spec,
        cutout_length=config.get("cutout_length", 0),
        n_holes=config.get("n_holes", 1),
    )


def _compiled_steps(model, tx, spec, config, mesh) -> tuple[Callable, Callable]:
    """The data-parallel train and eval steps, indexing the on-device datasets."""
    step_fn = make_train_step(
        model,
        tx,
        preprocess=_train_preprocess(spec, config),
        seed=config.seed,
    )
    step_fn = _with_conv_wgrad(step_fn, config.get("conv_wgrad", "auto"))
    eval_step = make_eval_step(model, preprocess=lambda im: data_lib.normalize(im, spec))
    train_fn = sharding_lib.data_parallel(
        lambda s, images, labels, idx: step_fn(s, images[idx], labels[idx]), mesh
    )
    eval_fn = sharding_lib.data_parallel(
        lambda s, images, labels, idx: eval_step(s, images[idx], labels[idx]),
        mesh,
        donate_first=False,
    )
    return train_fn, eval_fn


def _banner(run: _Run) -> str:
    c = run.config
    resumed = (
        f"; resuming after epoch {run.last_epoch} (step {run.step_count})" if run.last_epoch else ""
    )
    if run.pipeline is not None:
        resumed = pipeline_lib.describe(run.pipeline) + resumed
    # bio changes how every local head learns (feedback alignment): name it with the loss
    loss = f"{c.loss}, bio" if c.get("bio", False) else c.loss
    return (
        f"{c.model} {loss} ({c.get('dtype', 'float32')}) on {c.dataset}: "
        f"{len(run.train)} train / {len(run.test)} test examples, "
        f"{run.params_inference:,} inference parameters ({run.params_total:,} with local "
        f"heads), {run.steps_per_epoch} steps per epoch, {run.mesh.size} device(s) in "
        f"{jax.process_count()} process(es)" + resumed
    )


def _with_conv_wgrad(step_fn: Callable, choice: str) -> Callable:
    """The train step, traced inside `shifted_wgrad_convs` when `choice` asks for it.

    XLA:CPU computes a 3×3 conv's weight gradient ~10× slower than its forward pass
    (README, Performance); shifted matmuls give the same gradient ~2× faster per VGG step.
    `auto` uses them on the CPU backend only, where that gap was measured; on other
    backends it keeps XLA's convolution.
    """

    def step(*args):
        with conv_wgrad_context(choice):
            return step_fn(*args)

    return step


def _train_and_evaluate_epoch(run: _Run, state, epoch: int):
    """One epoch's updates, then the test set; returns (state, metrics.jsonl record)."""
    config = run.config
    start = time.perf_counter()
    batches = sampling.epoch_order(
        run.train.labels,
        config.batch_size,
        config.seed,
        epoch,
        config.get("classes_per_batch", 0),
        config.get("classes_per_batch_until_epoch", 0),
    )
    train_images, train_labels, test_images, test_labels = run.device_data
    train_epoch = _train_epoch if run.pipeline is None else _pipelined_epoch(run.pipeline)
    state, totals, run.step_count = train_epoch(
        run.train_fn,
        state,
        (train_images, train_labels),
        batches,
        run.mesh,
        run.step_count,
        config.sync_every,
        f"epoch {epoch}",
        (run.workdir, run.checkpoint_epoch, config.lr),
        show_progress=config.progress_bar and run.primary,
    )
    train_seconds = time.perf_counter() - start
    lr = epoch_learning_rate(config.lr, tuple(config.milestones), epoch, config.lr_decay)
    record = {"epoch": epoch, "lr": lr}
    record.update(summarize_metrics(totals, prefix="train_", percent=True))
    test_sums = _evaluate(
        run.eval_fn,
        state,
        test_images,
        test_labels,
        config.eval_batch_size,
        config.sync_every,
        run.mesh,
    )
    record.update(summarize_metrics(test_sums, prefix="test_", percent=True))
    record["train_seconds"] = train_seconds
    record["epoch_seconds"] = time.perf_counter() - start
    return state, record


def _record_and_save(run: _Run, state, epoch: int, record: dict[str, Any]) -> None:
    """Writes the epoch's metrics line, then (on a checkpoint epoch) the checkpoint."""
    config = run.config
    run.history.append(record)
    save = epoch % config.checkpoint_every == 0 or epoch == config.epochs
    if save:  # the losses were finite, but the last update may not be
        check_state_finite(
            jax.device_get(_finite_probe(state)),  # one value per array, not the state
            run.step_count,
            f"epoch {epoch}",
            run.workdir,
            checkpoint_epoch=run.checkpoint_epoch,
            lr=config.lr,
        )
    meta = {
        "epoch": epoch,
        "step": run.step_count,
        "data_order": {"seed": config.seed, "next_epoch": epoch + 1},
        "config": trajectory_config(config),
        "data": run.data_fingerprint,  # process 0's meta is the one written
    }
    try:
        if run.primary:
            run.writer.write(record)  # before the checkpoint: a resume trims later lines
        if save and run.ckpt is not None:  # every process writes its own shards
            run.ckpt.save(epoch, state, meta)
    except Exception as e:
        cause = _os_error(e)
        if cause is None:
            raise
        raise TrainingError(_write_failure(run, epoch, save, cause)) from e
    if save:
        run.checkpoint_epoch = epoch
    local = " ".join(f"{record[k]:.2f}" for k in record if k.startswith("local_error/"))
    # sim and bio train no local classifier, so there is no local error to show
    local = f"local errors [{local}]  " if local else ""
    run.say(
        f"epoch {epoch:3d}  lr {record['lr']:.2e}  "
        f"train loss {record['train_loss']:.4f} error {record['train_error']:.2f}%  "
        f"test loss {record['test_loss']:.4f} error {record['test_error']:.2f}%  "
        f"{local}{record['epoch_seconds']:.1f}s"
    )


@jax.jit
def _finite_probe(state):
    """Each floating array of `state` reduced where it lives to a 0-d float32 that is
    finite iff all its elements are (the sum of 0·x: inf and nan give nan), any other
    array to a 0-d int32 zero: what `check_state_finite` reads before a save, so no
    process fetches the state's arrays."""

    def leaf(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.sum(x * 0, dtype=jnp.float32)
        return jnp.zeros((), jnp.int32)

    return jax.tree_util.tree_map(leaf, state)


def _os_error(error: BaseException) -> BaseException | None:
    """The OSError (a full disk, a quota, a read-only or vanished file system) that
    caused `error`, following its causes and contexts; None if there is none.

    Orbax and TensorStore may wrap the OS's error in their own exceptions, so an error
    whose message carries the OS's text for a full disk or quota counts as well.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return error
        if any(text in str(error) for text in ("No space left on device", "Disk quota exceeded")):
            return error
        error = error.__cause__ or error.__context__
    return None


def _write_failure(run: _Run, epoch: int, save: bool, cause: BaseException) -> str:
    """The one-line message of a failed write of epoch `epoch`'s metrics or checkpoint."""
    what = (
        f"the checkpoint of epoch {epoch} to {run.ckpt.directory}"
        if save
        else f"the metrics of epoch {epoch} to {os.path.join(run.workdir, 'metrics.jsonl')}"
    )
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if run.checkpoint_epoch:
        kept = (
            f"The previous checkpoint, of epoch {run.checkpoint_epoch}, is intact (a "
            "checkpoint is renamed into place only once complete). Free space (or fix the "
            f"file system) and rerun the same command: it resumes from epoch "
            f"{run.checkpoint_epoch}."
        )
    else:
        kept = (
            "No earlier checkpoint exists. Free space (or fix the file system) and rerun "
            "the same command: it starts over."
        )
    return f"cannot write {what}: {reason}. {kept}"


def _train_epoch(
    train_fn, state, data, batches, mesh, step_count, sync_every, name, advice, show_progress
):
    """Runs one epoch's steps; returns (state, metric sums, step count).

    Every `sync_every` steps the queued metrics are fetched and each step's losses are
    checked, so a non-finite loss is reported with its exact step (and batch) number;
    `advice` is `(workdir, newest checkpoint epoch, lr)` for the message's last part.
    """
    from tqdm import tqdm  # only the full run draws a progress bar

    first, totals, window = step_count + 1, {}, []

    def check(step, metrics):
        where = f"{name}, batch {step - first + 1} of {len(batches)}"
        check_finite(metrics, step, where, *advice)

    for idx in tqdm(batches, desc=name, leave=False, disable=not show_progress):
        idx = sharding_lib.put_batch(np.asarray(idx, np.int32), mesh)
        state, metrics = train_fn(state, *data, idx)
        step_count += 1
        window.append((step_count, metrics))
        if len(window) == sync_every:
            drain(window, totals, check)
    drain(window, totals, check)
    return state, totals, step_count


def _pipelined_epoch(pipe) -> Callable:
    """`_train_epoch` for a pipelined run: the same arguments (`train_fn` and `mesh` unused)
    and results, the epoch run by `pipeline.run_epoch` (fill, train, drain, unpack)."""

    def train_epoch(
        train_fn, state, data, batches, mesh, step_count, sync_every, name, advice, show_progress
    ):
        from tqdm import tqdm  # only the full run draws a progress bar

        del train_fn, mesh
        first = step_count + 1

        def check(step, metrics):
            where = f"{name}, batch {step - first + 1} of {len(batches)}"
            check_finite(metrics, step, where, *advice)

        with tqdm(total=len(batches), desc=name, leave=False, disable=not show_progress) as bar:
            state, totals, updates = pipeline_lib.run_epoch(
                pipe,
                state,
                *data,
                batches,
                sync_every=sync_every,
                check=check,
                progress=lambda done: bar.update(done - bar.n),
                free_state=True,
            )
        return state, totals, step_count + updates

    return train_epoch


def _evaluate(eval_fn, state, images, labels, batch_size: int, sync_every: int, mesh):
    totals: dict[str, float] = {}
    window: list = []
    n = labels.shape[0]
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n), dtype=np.int32)
        window.append((start, eval_fn(state, images, labels, sharding_lib.put_batch(idx, mesh))))
        if len(window) == sync_every:
            drain(window, totals)
    drain(window, totals)
    return totals


def _write_summary(run: _Run) -> dict[str, Any]:
    config, history = run.config, run.history
    summary = {
        "config": config.to_dict(),
        "params_inference": run.params_inference,
        "params_total": run.params_total,
        "epochs": config.epochs,
        "final_test_error": history[-1]["test_error"] if history else None,
        "final_train_error": history[-1]["train_error"] if history else None,
        "published_error": config.get("published_error", None),
        "jax_backend": jax.default_backend(),
        "num_devices": run.mesh.size,
        "num_processes": jax.process_count(),
        "resumed_from_epoch": run.last_epoch,
        "steps": run.step_count,
        "train_seconds": time.perf_counter() - run.start,
    }
    if run.primary:
        path = os.path.join(run.workdir, "summary.json")
        try:
            with open(path, "w") as f:
                json.dump(summary, f, indent=2, default=str)
        except OSError as e:
            raise TrainingError(
                f"cannot write {path}: {e}. metrics.jsonl and the checkpoint of epoch "
                f"{run.checkpoint_epoch} are complete; free space (or fix the file system) "
                "and rerun the same command to write it."
            ) from e
    return summary
