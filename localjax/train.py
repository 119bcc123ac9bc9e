"""The whole training run: data, sharded fused steps, evaluation, metrics, checkpoints.

Usage::

    summary = train_and_evaluate(config, workdir)   # config as in experiments/configs/

The per-step math lives in `localjax.step`, the device layout in `localjax.sharding`, the
checkpoint format in `localjax.checkpoint`; this module owns the loop around them:

- one `('data',)` mesh over every device (of every process): state and datasets
  replicated, each batch's indices split over the devices, the step jitted for the global
  batch (BatchNorm statistics and similarity matrices over all B examples);
- metrics fetched every `sync_every` steps (this bounds the queue of dispatched steps and
  names the exact step, and block, where a loss first turns non-finite);
- `WORKDIR/metrics.jsonl`: one line per epoch; for a seed every value but the wall-clock
  `epoch_seconds` (`TIMING_KEYS`) is identical from run to run, resumed or not;
- `WORKDIR/checkpoints/<epoch>`: every `checkpoint_every` epochs and at the end, the last
  `keep` retained; a workdir holding one is resumed from it, continuing metrics.jsonl;
- process 0 alone writes files and prints.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from localjax import augment as augment_lib
from localjax import data as data_lib
from localjax import sampling
from localjax import sharding as sharding_lib
from localjax.checkpoint import Checkpointer
from localjax.metric_writer import MetricWriter
from localjax.models import build_model, count_params
from localjax.step import (
    TrainState,
    conv_wgrad_context,
    create_train_state,
    epoch_learning_rate,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

__all__ = [
    "TrainingError",
    "train_and_evaluate",
    "TrainState",
    "DTYPES",
    "RESUMABLE_CHANGES",
    "TIMING_KEYS",
]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and why.

    Args:
      message: str naming the step, the block whose local loss (or the output loss) first
        turned non-finite, and the workdir.

    Raises:
      Nothing of its own; `train_and_evaluate` raises it.

    Part of the training loop's checks (DESIGN.md, What flows where: train.py, metrics).
    """


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# metrics.jsonl fields that measure wall-clock time: the only ones a seed does not fix.
TIMING_KEYS = ("epoch_seconds", "train_seconds")

# Config fields a resumed run may change: they do not alter the training trajectory.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "progress_bar",
        "sync_every",
        "eval_batch_size",
        "checkpoint_every",
        "keep",
        "coordinator_address",
        "num_processes",
        "process_id",
        "num_devices",
        "data_dir",
        "data_source",
        "row",
        "published_error",
        "conv_wgrad",  # same math; only float rounding of conv weight gradients differs
    }
)


# ---------------------------------------------------------------- helpers
def _model_from_config(config, num_classes: int) -> nn.Module:
    name = config.get("dtype", "float32")
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}.")
    return build_model(
        config.model,
        num_classes,
        config.loss,
        num_layers=config.num_layers,
        num_hidden=config.num_hidden,
        feat_mult=config.feat_mult,
        nonlin=config.nonlin,
        dropout=config.dropout,
        beta=config.beta,
        dim_in_decoder=config.dim_in_decoder,
        bio=config.bio,
        target_proj_size=config.get("target_proj_size", 128),
        unsup=config.get("unsup", "none"),
        alpha=config.get("alpha", 0.0),
        detach=config.get("detach", True),
        dtype=DTYPES[name],
    )


def _check_run_options(config, workdir: str) -> None:
    """Refuses settings that would train nonsense silently, before any data is loaded."""
    fields = ("sync_every", "checkpoint_every", "keep", "epochs", "batch_size", "eval_batch_size")
    for field in fields:
        value = config.get(field, 1)
        if value < 1:
            raise ValueError(f"{field}={value} must be >= 1.")
    for field in ("train_limit", "test_limit"):
        if config.get(field, 0) < 0:
            raise ValueError(f"{field}={config.get(field)} must be >= 0 (0 = every example).")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout={config.dropout} must be in [0, 1).")
    if config.lr <= 0 or config.get("lr_decay", 0.25) <= 0:
        raise ValueError(f"lr={config.lr} and lr_decay={config.get('lr_decay')} must be > 0.")
    if config.num_layers < 0 or (config.num_layers > 0 and config.num_hidden < 1):
        raise ValueError(
            f"num_layers={config.num_layers} must be >= 0 and num_hidden={config.num_hidden}"
            " >= 1 (the paper's MLP: num_layers=3, num_hidden=1024)."
        )
    num_classes = data_lib.get_spec(config.dataset).num_classes
    if config.get("classes_per_batch", 0) > num_classes:
        raise ValueError(
            f"classes_per_batch={config.classes_per_batch} exceeds {config.dataset}'s "
            f"{num_classes} classes; use at most {num_classes} (0 = plain shuffling)."
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir} is a file, not a directory; pass a directory.")
    conv_wgrad_context(config.get("conv_wgrad", "auto"))  # refuses an unknown choice early


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


def _summarize(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Batch sums -> means: loss, error in percent, per-block local loss/error."""
    n = sums["count"]
    out = {
        f"{prefix}_loss": sums["loss"] / n,
        f"{prefix}_error": 100.0 * (1.0 - sums["correct"] / n),
    }
    for key, value in sums.items():
        if key.startswith("local_loss/"):
            out[key] = value / n
        elif key.startswith("local_correct/"):
            out["local_error/" + key.split("/", 1)[1]] = 100.0 * (1.0 - value / n)
    return out


def _block_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def _check_finite(metrics: dict[str, float], step: int, where: str, workdir: str) -> None:
    """Raises TrainingError naming the step and the first block whose loss is non-finite.

    Blocks run in order, so a NaN in block k reaches every later block in the same step:
    the lowest-numbered bad block is where it started.
    """
    losses = [k for k in metrics if k in ("loss", "objective") or k.startswith("local_loss/")]
    bad = [k for k in losses if not math.isfinite(metrics[k])]
    if not bad:
        return
    blocks = sorted((k for k in bad if k.startswith("local_loss/")), key=_block_index)
    first = blocks[0] if blocks else "loss" if "loss" in bad else bad[0]
    culprit = f"the local loss of {first.split('/', 1)[1]}" if blocks else "the output layer's loss"
    raise TrainingError(
        f"non-finite loss at step {step} ({where}): {culprit} is {metrics[first]} "
        f"(non-finite: {', '.join(bad)}). The last good checkpoint in "
        f"{os.path.join(workdir, 'checkpoints')} is kept, and rerunning with the same "
        "workdir resumes from it; first lower the learning rate (--config.lr) or check "
        "the input data."
    )


def _check_state_finite(host_state: TrainState, step: int, where: str, workdir: str) -> None:
    """Raises TrainingError if an update left non-finite values in the state to be saved."""
    bad = [
        jax.tree_util.keystr(path)
        for path, x in jax.tree_util.tree_leaves_with_path(host_state)
        if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all()
    ]
    if bad:
        raise TrainingError(
            f"non-finite values after step {step} (the last of {where}) in {bad[0]}"
            f"{f' and {len(bad) - 1} more arrays' if len(bad) > 1 else ''}; this state is "
            f"not saved. The last good checkpoint in {os.path.join(workdir, 'checkpoints')} "
            "is kept, and rerunning with the same workdir resumes from it; first lower the "
            "learning rate (--config.lr) or check the input data."
        )


def _drain(window: list, totals: dict[str, float], check=None) -> None:
    """Fetches queued `(step, metrics)` pairs, checks each step, adds them to host totals.

    Waiting on these results also bounds how many steps are in flight (PITFALLS.md: jaxlib
    0.10.2 on CPU aborts with ~50 queued collective steps).
    """
    fetched = jax.device_get([m for _, m in window])
    for (step, _), metrics in zip(window, fetched, strict=True):
        metrics = {k: float(v) for k, v in metrics.items()}
        if check is not None:
            check(step, metrics)
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + v
    window.clear()


def _train_epoch(
    train_fn, state, data, batches, mesh, step_count, sync_every, name, workdir, show_progress
):
    """Runs one epoch's steps; returns (state, metric sums, step count).

    Every `sync_every` steps the queued metrics are fetched and each step's losses are
    checked, so a non-finite loss is reported with its exact step (and batch) number.
    """
    from tqdm import tqdm  # only the full run draws a progress bar

    first, totals, window = step_count + 1, {}, []

    def check(step, metrics):
        where = f"{name}, batch {step - first + 1} of {len(batches)}"
        _check_finite(metrics, step, where, workdir)

    for idx in tqdm(batches, desc=name, leave=False, disable=not show_progress):
        idx = sharding_lib.put_batch(np.asarray(idx, np.int32), mesh)
        state, metrics = train_fn(state, *data, idx)
        step_count += 1
        window.append((step_count, metrics))
        if len(window) == sync_every:
            _drain(window, totals, check)
    _drain(window, totals, check)
    return state, totals, step_count


def _evaluate(eval_fn, state, images, labels, batch_size: int, sync_every: int, mesh):
    totals: dict[str, float] = {}
    window: list = []
    n = labels.shape[0]
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n), dtype=np.int32)
        window.append((start, eval_fn(state, images, labels, sharding_lib.put_batch(idx, mesh))))
        if len(window) == sync_every:
            _drain(window, totals)
    _drain(window, totals)
    return totals


def _trajectory_config(config) -> dict[str, Any]:
    """The config fields that define the training trajectory, JSON-normalised."""
    as_json = json.loads(json.dumps(config.to_dict(), default=str))
    return {k: v for k, v in as_json.items() if k not in RESUMABLE_CHANGES}


def _resume_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{k} (checkpoint {saved.get(k)!r}, now {current.get(k)!r})"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def _restore(ckpt: Checkpointer | None, host_state: TrainState, config, workdir: str):
    """Process 0 reads the newest checkpoint and broadcasts it; returns (epoch, state).

    epoch 0 means no checkpoint: `host_state` comes back unchanged.
    """
    status, restored = 0, None
    if ckpt is not None:
        restored = ckpt.restore_latest(host_state)
        if restored is not None:
            diff = _resume_mismatch(restored[1]["config"], _trajectory_config(config))
            status = -1 if diff else int(restored[1]["epoch"])
    status = int(multihost_utils.broadcast_one_to_all(np.int32(status)))
    if status < 0:
        detail = f": {'; '.join(diff)}" if ckpt is not None else " (see process 0's log)"
        raise ValueError(
            f"{workdir} holds a checkpoint of a different run{detail}. Use a new workdir "
            f"(experiments.reproduce: a new --root), or delete "
            f"{os.path.join(workdir, 'checkpoints')} to start over."
        )
    if status == 0:
        return 0, host_state
    state = restored[0] if restored is not None else host_state
    return status, multihost_utils.broadcast_one_to_all(state)


def _resumed_history(workdir: str, last_epoch: int) -> list[dict[str, Any]]:
    """Keeps metrics.jsonl's records of epochs <= last_epoch (those the checkpoint holds).

    Lines of epochs trained after the checkpoint (the killed run's) and a torn last line
    are dropped, so the resumed run continues the file exactly. Rewritten atomically.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("epoch", last_epoch + 1) <= last_epoch:
                    kept.append(record)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
    return kept


# ---------------------------------------------------------------- the whole run
def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains and evaluates one configuration, resuming from `workdir`'s checkpoint if any.

    Runs the recipe of METHOD.md, Training, data parallel over every device of every
    process (DESIGN.md, Decisions: data parallel): the results equal a one-device run's
    up to float summation order. With a coordinator
    (`config.coordinator_address` or `JAX_COORDINATOR_ADDRESS`) it first joins the
    multi-process run; every process loads the dataset and feeds its devices' share of
    each global batch. Only process 0 writes files.

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
      ValueError: unknown dataset, model, loss, dtype or conv_wgrad; batch_size or eval_batch_size
        below 1 or not divisible by the device count; a negative train/test limit; dropout
        outside [0, 1); a non-positive lr or lr_decay; num_hidden < 1; classes_per_batch above
        the dataset's class count; a workdir that is a file; a workdir checkpoint of a
        different run.
      data.DatasetError: missing or corrupt data files.
      TrainingError: a non-finite loss (no checkpoint of that epoch is written).
    """
    sharding_lib.initialize_distributed(
        config.get("coordinator_address", ""),
        config.get("num_processes", 0),
        config.get("process_id", -1),
    )
    primary = sharding_lib.is_primary()
    _check_run_options(config, workdir)
    mesh = sharding_lib.make_mesh(config.get("num_devices", 0))
    sharding_lib.check_divisible(config.batch_size, mesh, "batch_size")
    sharding_lib.check_divisible(config.eval_batch_size, mesh, "eval_batch_size")
    os.makedirs(workdir, exist_ok=True)

    spec = data_lib.get_spec(config.dataset)
    train = data_lib.load(
        config.dataset, "train", config.data_dir or None, source=config.get("data_source", "auto")
    )
    test = data_lib.load(
        config.dataset, "test", config.data_dir or None, source=config.get("data_source", "auto")
    )
    if config.train_limit:
        train = data_lib.Dataset(
            train.images[: config.train_limit], train.labels[: config.train_limit]
        )
    if config.get("test_limit", 0):
        test = data_lib.Dataset(test.images[: config.test_limit], test.labels[: config.test_limit])

    model = _model_from_config(config, spec.num_classes)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    milestones = tuple(config.milestones)
    tx = make_optimizer(config.lr, milestones, steps_per_epoch, config.lr_decay)
    sample = augment_lib.normalize(jnp.asarray(train.images[:2]), spec)
    host_state = jax.device_get(
        create_train_state(
            model, tx, jax.random.key(config.seed), sample, jnp.asarray(train.labels[:2])
        )
    )
    params_inference, params_total = count_params(host_state.params)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep) if primary else None
    try:
        last_epoch, host_state = _restore(ckpt, host_state, config, workdir)
        state = sharding_lib.put_replicated(host_state, mesh)
        step_count = int(host_state.step)
        del host_state
        train_images, train_labels, test_images, test_labels = sharding_lib.put_replicated(
            (train.images, train.labels, test.images, test.labels), mesh
        )

        step_fn = make_train_step(
            model,
            tx,
            preprocess=lambda im, k: augment_lib.augment(
                im, k, spec, cutout_length=config.get("cutout_length", 0)
            ),
            seed=config.seed,
        )
        step_fn = _with_conv_wgrad(step_fn, config.get("conv_wgrad", "auto"))
        eval_step = make_eval_step(model, preprocess=lambda im: augment_lib.normalize(im, spec))
        train_fn = sharding_lib.data_parallel(
            lambda s, images, labels, idx: step_fn(s, images[idx], labels[idx]), mesh
        )
        eval_fn = sharding_lib.data_parallel(
            lambda s, images, labels, idx: eval_step(s, images[idx], labels[idx]),
            mesh,
            donate_first=False,
        )

        history = _resumed_history(workdir, last_epoch) if primary and last_epoch else []
        say = print if primary else (lambda *a, **k: None)
        say(
            f"{config.model} {config.loss} ({config.get('dtype', 'float32')}) on "
            f"{config.dataset}: {len(train)} train / {len(test)} test examples, "
            f"{params_inference:,} inference parameters ({params_total:,} with local "
            f"heads), {steps_per_epoch} steps per epoch, {mesh.size} device(s) in "
            f"{jax.process_count()} process(es)"
            + (f"; resuming after epoch {last_epoch} (step {step_count})" if last_epoch else ""),
            flush=True,
        )
        run_start = time.perf_counter()
        writer = MetricWriter(workdir, append=bool(last_epoch)) if primary else None
        try:
            for epoch in range(last_epoch + 1, config.epochs + 1):
                start = time.perf_counter()
                batches = sampling.epoch_order(
                    train.labels,
                    config.batch_size,
                    config.seed,
                    epoch,
                    config.get("classes_per_batch", 0),
                    config.get("classes_per_batch_until_epoch", 0),
                )
                state, totals, step_count = _train_epoch(
                    train_fn,
                    state,
                    (train_images, train_labels),
                    batches,
                    mesh,
                    step_count,
                    config.sync_every,
                    f"epoch {epoch}",
                    workdir,
                    show_progress=config.progress_bar and primary,
                )
                train_seconds = time.perf_counter() - start
                record = {
                    "epoch": epoch,
                    "lr": epoch_learning_rate(config.lr, milestones, epoch, config.lr_decay),
                }
                record.update(_summarize(totals, "train"))
                record["train_objective"] = totals["objective"] / totals["count"]
                test_sums = _evaluate(
                    eval_fn,
                    state,
                    test_images,
                    test_labels,
                    config.eval_batch_size,
                    config.sync_every,
                    mesh,
                )
                record.update(_summarize(test_sums, "test"))
                record["train_seconds"] = train_seconds
                record["epoch_seconds"] = time.perf_counter() - start
                history.append(record)
                save = epoch % config.checkpoint_every == 0 or epoch == config.epochs
                host_state = jax.device_get(state) if save else None
                if save:  # the losses were finite, but the last update may not be
                    _check_state_finite(host_state, step_count, f"epoch {epoch}", workdir)
                if primary:
                    writer.write(record)  # before the checkpoint: a resume trims later lines
                    if save:
                        meta = {
                            "epoch": epoch,
                            "step": step_count,
                            "data_order": {"seed": config.seed, "next_epoch": epoch + 1},
                            "config": _trajectory_config(config),
                        }
                        ckpt.save(epoch, host_state, meta)
                del host_state
                local = " ".join(f"{record[k]:.2f}" for k in record if k.startswith("local_error/"))
                say(
                    f"epoch {epoch:3d}  lr {record['lr']:.2e}  "
                    f"train loss {record['train_loss']:.4f} error {record['train_error']:.2f}%  "
                    f"test loss {record['test_loss']:.4f} error {record['test_error']:.2f}%  "
                    f"local errors [{local}]  {record['epoch_seconds']:.1f}s",
                    flush=True,
                )
        finally:
            if writer is not None:
                writer.close()
    finally:
        if ckpt is not None:
            ckpt.close()

    summary = {
        "config": config.to_dict(),
        "params_inference": params_inference,
        "params_total": params_total,
        "epochs": config.epochs,
        "final_test_error": history[-1]["test_error"] if history else None,
        "final_train_error": history[-1]["train_error"] if history else None,
        "published_error": config.get("published_error", None),
        "jax_backend": jax.default_backend(),
        "num_devices": mesh.size,
        "num_processes": jax.process_count(),
        "resumed_from_epoch": last_epoch,
        "steps": step_count,
        "train_seconds": time.perf_counter() - run_start,
    }
    if primary:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return summary
