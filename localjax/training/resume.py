"""Resuming a run from its workdir: the newest readable checkpoint, the same trajectory,
the same data, the metrics of the epochs it holds (DESIGN.md, Training: checkpoints and
resume).

Usage (every process)::

    state = put_replicated(fresh_host_state, mesh)            # the layout to restore into
    last_epoch, state = restore(ckpt, state, config, workdir, data=fingerprint)
    history = resumed_history(workdir, last_epoch)     # process 0: metrics.jsonl trimmed

A checkpoint records `trajectory_config(config)`: every field that changes what is
trained. A resume with any of them changed is refused; `RESUMABLE_CHANGES` may differ.
It also records the fingerprint of the arrays trained on (`localjax.data.fingerprint`):
a resume onto other data is refused too, wherever the files now live.

A newest checkpoint that cannot be read (damaged, partly copied) is moved aside to
`WORKDIR/unreadable_checkpoints/` with one printed line, and the run resumes from the
newest one that reads; one that reads but does not fit the model, or cannot be laid out
on this run's devices, is refused.

Every process reads its own shards from the shared checkpoint directory
(`training.checkpoints`); at each step (meta, then state) the processes exchange their
verdicts (`gather_json`), so they skip, refuse or resume together and a refusal is the
same line on every process. Process 0 moves unreadable checkpoints aside while the others
wait.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from localjax.errors import ConfigError
from localjax.training.checkpoints import (
    Checkpointer,
    CheckpointLayoutError,
    CheckpointMismatch,
    UnreadableCheckpoint,
    gather_json,
)
from localjax.training.state import TrainState

__all__ = ["RESUMABLE_CHANGES", "trajectory_config", "restore", "resumed_history"]

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
        "pipeline_stages",  # the same updates, skewed in time (docs/pipeline.md)
        "pipeline_cuts",
        "data_workers",  # streamed data: the same batches whatever the worker count
        "data_prefetch",
        "max_bad_fraction",
        "checkpoint_every_steps",
    }
)

# Fields added to the config after checkpoints were already written: a checkpoint without
# one was trained as this value does, so it is compared as if it held it.
LEGACY_VALUES = {
    "optim": "adam",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "n_holes": 1,
    "similarity_std": True,
    "pre_act": False,
    "no_batch_norm": False,
    "data_pipeline": "auto",
    "image_size": 0,
    "final_pool": "reference",
}

# `_read_newest`'s status for a refused resume (epochs are >= 0)
_REFUSED = -1


def trajectory_config(config) -> dict[str, Any]:
    """The config fields that define the training trajectory, JSON-normalised."""
    as_json = json.loads(json.dumps(config.to_dict(), default=str))
    return {k: v for k, v in as_json.items() if k not in RESUMABLE_CHANGES}


def _resume_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    saved = {**LEGACY_VALUES, **saved}
    keys = sorted(set(saved) | set(current))
    return [
        f"{k} (checkpoint {saved.get(k)!r}, now {current.get(k)!r})"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def _data_mismatch(saved: dict[str, str] | None, current: dict[str, str] | None) -> list[str]:
    """The splits whose fingerprints differ (none when either side has no fingerprint:
    checkpoints written before fingerprints were recorded resume as before)."""
    if not saved or not current:
        return []
    return [
        f"{split} {saved.get(split, '?')[:12]}, now {current.get(split, '?')[:12]}"
        for split in sorted(set(saved) | set(current))
        if saved.get(split) != current.get(split)
    ]


def _check_meta(
    ckpt: Checkpointer, epoch: int, config, workdir: str, data
) -> tuple[str, str, dict | None]:
    """This process's verdict on one checkpoint's meta: `("ok", "", meta)`, `("skip",
    reason, None)` (unreadable) or `("refuse", one-line message, None)` (a different run,
    other data)."""
    try:
        meta = ckpt.restore_meta(epoch)
    except UnreadableCheckpoint as e:
        return "skip", e.reason, None
    if "config" not in meta or "epoch" not in meta:
        return "skip", "its meta lacks the run's epoch or config", None
    diff = _resume_mismatch(meta["config"], trajectory_config(config))
    if diff:
        return (
            "refuse",
            f"{workdir} holds a checkpoint of a different run: {'; '.join(diff)}. "
            f"Use a new workdir (experiments.reproduce: a new --root), or delete "
            f"{ckpt.directory} to start over.",
            None,
        )
    other = _data_mismatch(meta.get("data"), data)
    if other:
        return (
            "refuse",
            f"{workdir}'s checkpoint {epoch} was trained on other data than "
            f"{config.dataset} loaded now from data_dir={config.data_dir or None!r} "
            f"(fingerprints: {'; '.join(other)}). Point --config.data_dir at the "
            "files it was trained on, or use a new workdir for this data.",
            None,
        )
    return "ok", "", meta


def _check_state(ckpt: Checkpointer, epoch: int, template) -> tuple[str, str, Any]:
    """This process's verdict on reading one checkpoint's state into `template`:
    `("ok", "", state)`, `("skip", reason, None)` or `("refuse", message, None)`."""
    try:
        return "ok", "", ckpt.restore_state(epoch, template)
    except UnreadableCheckpoint as e:
        return "skip", e.reason, None
    except CheckpointMismatch as e:
        return (
            "refuse",
            f"checkpoint {epoch} in {ckpt.directory} does not fit the model this config "
            f"builds: {e.detail}. Its recorded config matches this run's, so the model "
            "code changed since it was written or its files were edited. Use a new "
            "workdir (experiments.reproduce: a new --root), or run the code that wrote it.",
            None,
        )
    except CheckpointLayoutError as e:
        return "refuse", f"{ckpt.directory}: {e}", None


def _agree(kind: str, text: str) -> tuple[str, str]:
    """Every process's verdict combined (a collective): a refusal anywhere refuses, else
    an unreadable part anywhere skips, else ok; the text is the first such process's
    (prefixed with its number when it is not process 0)."""
    verdicts = gather_json([kind, text])
    for wanted in ("refuse", "skip"):
        for i, (k, t) in enumerate(verdicts):
            if k == wanted:
                return k, (t if i == 0 or wanted == "refuse" else f"on process {i}: {t}")
    return "ok", ""


def _no_checkpoint_readable(directory: str, skipped: list[tuple[int, str]]) -> ConfigError:
    reasons = "; ".join(f"{epoch} ({reason})" for epoch, reason in skipped)
    return ConfigError(
        f"no checkpoint in {directory} can be read: {reasons}. Nothing was changed; "
        f"to start over, move {directory} away or use a new workdir."
    )


def _restore_sharded(ckpt: Checkpointer, state, config, workdir: str, data, say):
    """Every process: (epoch, state, meta) from the newest checkpoint all can read."""
    skipped: list[tuple[int, str]] = []
    for epoch in reversed(gather_json(ckpt.epochs())[0]):  # process 0's listing
        kind, text, meta = _check_meta(ckpt, epoch, config, workdir, data)
        kind, text = _agree(kind, text)
        if kind == "ok":
            kind, text, restored = _check_state(ckpt, epoch, state)
            kind, text = _agree(kind, text)
        if kind == "refuse":
            raise ConfigError(text)
        if kind == "skip":
            skipped.append((epoch, text))
            continue
        for old, reason in skipped:  # every process: process 0 moves, the others wait
            where = ckpt.set_aside(old)
            say(
                f"skipped checkpoint {old}: it cannot be read ({reason}); moved it to "
                f"{where} and resuming from checkpoint {epoch}."
            )
        return int(meta["epoch"]), restored, meta
    if skipped:
        raise _no_checkpoint_readable(ckpt.directory, skipped)
    return 0, state, None


def _read_newest(ckpt: Checkpointer, host_state, config, workdir: str, data):
    """Process 0 alone (a process-0 `Checkpointer`): (epoch or error status, state, meta,
    message, skipped) from the newest readable checkpoint."""
    skipped: list[tuple[int, str]] = []
    for epoch in reversed(ckpt.epochs()):
        kind, text, meta = _check_meta(ckpt, epoch, config, workdir, data)
        if kind == "ok":
            kind, text, state = _check_state(ckpt, epoch, host_state)
        if kind == "refuse":
            return _REFUSED, None, None, text, skipped
        if kind == "skip":
            skipped.append((epoch, text))
            continue
        return int(meta["epoch"]), state, meta, "", skipped
    if skipped:
        return _REFUSED, None, None, str(_no_checkpoint_readable(ckpt.directory, skipped)), []
    return 0, None, None, "", skipped


def _restore_from_process_0(ckpt, host_state, config, workdir: str, data, say):
    """The earlier protocol: process 0 reads, the state is broadcast through the host."""
    status, state, meta, message = 0, None, None, ""
    if ckpt is not None:
        status, state, meta, message, skipped = _read_newest(
            ckpt, host_state, config, workdir, data
        )
        if status > 0:
            for epoch, reason in skipped:
                where = ckpt.set_aside(epoch)
                say(
                    f"skipped checkpoint {epoch}: it cannot be read ({reason}); moved it to "
                    f"{where} and resuming from checkpoint {status}."
                )
    status = int(multihost_utils.broadcast_one_to_all(np.int32(status)))
    if status < 0:
        raise ConfigError(message or f"{workdir}: cannot resume (see process 0's log).")
    if status == 0:
        return 0, host_state, None
    state = state if state is not None else host_state
    if jax.process_count() > 1:
        state = multihost_utils.broadcast_one_to_all(state)
        meta = gather_json(meta)[0]
    return status, state, meta


def restore(
    ckpt: Checkpointer | None,
    state: TrainState,
    config,
    workdir: str,
    data: dict[str, str] | None = None,
    say: Callable[[str], None] = print,
    with_meta: bool = False,
):
    """Resumes from the newest checkpoint that every process can read; returns
    (epoch, state), or (epoch, state, meta) with `with_meta`.

    With a `Checkpointer` of `all_processes` on every process (the training loop's),
    every process reads its own devices' part of the state from the shared directory,
    laid out like `state`; the processes agree on each step (`gather_json`), so a
    checkpoint one process cannot read is passed over by all. With a `Checkpointer` made
    with `all_processes=False` on process 0 (None elsewhere), process 0 reads and the
    host state is broadcast, as before sharded checkpoints.

    Args:
      ckpt: this process's Checkpointer (None on processes > 0 in the process-0 mode).
      state: the freshly initialised state: placed on the mesh (global `jax.Array`s,
        any sharding: the restored arrays come back with the same shardings, whatever
        the device count the checkpoint was written on), or NumPy (restored as NumPy;
        the process-0 mode).
      config: the run's config; its trajectory must equal the checkpoint's.
      workdir: the run's directory (for messages).
      data: the fingerprint of the data loaded now (`localjax.data.fingerprint`), or None
        (processes > 0 pass None: process 0's check decides).
      say: prints a line (process 0): one per unreadable checkpoint passed over, which
        is moved to `WORKDIR/unreadable_checkpoints/` (by process 0, then a barrier).
      with_meta: also return the checkpoint's meta dict, unchanged (None when epoch is 0).

    Returns:
      `(epoch, state)` (or `(epoch, state, meta)`); epoch 0 means no checkpoint: `state`
      comes back unchanged.

    Raises:
      ConfigError (one line, on every process): the checkpoint is of a different run,
        was trained on other data, does not fit the model (`CheckpointMismatch`), cannot
        be laid out on this run's devices (`CheckpointLayoutError`), or no checkpoint can
        be read.
    """
    if ckpt is not None and ckpt.all_processes:
        epoch, state, meta = _restore_sharded(ckpt, state, config, workdir, data, say)
    else:
        epoch, state, meta = _restore_from_process_0(ckpt, state, config, workdir, data, say)
    return (epoch, state, meta) if with_meta else (epoch, state)


def resumed_history(workdir: str, last_epoch: int) -> list[dict[str, Any]]:
    """Keeps metrics.jsonl's records of epochs <= last_epoch (those the checkpoint holds).

    Lines of epochs trained after the checkpoint (the killed run's, or those of a
    checkpoint that could not be read) and a torn last line are dropped, so the resumed
    run continues the file exactly, one line per epoch. Rewritten atomically.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    kept: dict[int, dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                epoch = record.get("epoch", last_epoch + 1) if isinstance(record, dict) else None
                if isinstance(epoch, int) and epoch <= last_epoch:
                    kept[epoch] = record  # one line per epoch: the last one written
    records = [kept[e] for e in sorted(kept)]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)
    return records
