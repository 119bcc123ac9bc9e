"""Resuming a run from its workdir: the newest readable checkpoint, the same trajectory,
the same data, the metrics of the epochs it holds (DESIGN.md, Training: checkpoints and
resume).

Usage::

    last_epoch, host_state = restore(ckpt, host_state, config, workdir, data=fingerprint)
    history = resumed_history(workdir, last_epoch)     # metrics.jsonl trimmed to match

A checkpoint records `trajectory_config(config)`: every field that changes what is
trained. A resume with any of them changed is refused; `RESUMABLE_CHANGES` may differ.
It also records the fingerprint of the arrays trained on (`localjax.data.fingerprint`):
a resume onto other data is refused too, wherever the files now live.

A newest checkpoint that cannot be read (damaged, partly copied) is moved aside to
`WORKDIR/unreadable_checkpoints/` with one printed line, and the run resumes from the
newest one that reads; one that reads but does not fit the model is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from jax.experimental import multihost_utils

from localjax.errors import ConfigError
from localjax.training.checkpoints import Checkpointer, CheckpointMismatch, UnreadableCheckpoint
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
}

# restore()'s status codes, broadcast from process 0 (epochs are >= 0)
_DIFFERENT_RUN, _OTHER_DATA, _OTHER_MODEL, _NONE_READABLE = -1, -2, -3, -4


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


def _read_newest(ckpt: Checkpointer, host_state, config, workdir: str, data):
    """Process 0: (status, state, message, skipped) from the newest readable checkpoint."""
    directory = ckpt.directory
    skipped: list[tuple[int, str]] = []
    for epoch in reversed(ckpt.epochs()):
        try:
            meta = ckpt.restore_meta(epoch)
            if "config" not in meta or "epoch" not in meta:
                raise UnreadableCheckpoint(epoch, "its meta lacks the run's epoch or config")
            diff = _resume_mismatch(meta["config"], trajectory_config(config))
            if diff:
                return (
                    _DIFFERENT_RUN,
                    None,
                    f"{workdir} holds a checkpoint of a different run: {'; '.join(diff)}. "
                    f"Use a new workdir (experiments.reproduce: a new --root), or delete "
                    f"{directory} to start over.",
                    skipped,
                )
            other = _data_mismatch(meta.get("data"), data)
            if other:
                return (
                    _OTHER_DATA,
                    None,
                    f"{workdir}'s checkpoint {epoch} was trained on other data than "
                    f"{config.dataset} loaded now from data_dir={config.data_dir or None!r} "
                    f"(fingerprints: {'; '.join(other)}). Point --config.data_dir at the "
                    "files it was trained on, or use a new workdir for this data.",
                    skipped,
                )
            state = ckpt.restore_state(epoch, host_state)
        except UnreadableCheckpoint as e:
            skipped.append((epoch, e.reason))
            continue
        except CheckpointMismatch as e:
            return (
                _OTHER_MODEL,
                None,
                f"checkpoint {epoch} in {directory} does not fit the model this config "
                f"builds: {e.detail}. Its recorded config matches this run's, so the model "
                "code changed since it was written or its files were edited. Use a new "
                "workdir (experiments.reproduce: a new --root), or run the code that wrote it.",
                skipped,
            )
        return int(meta["epoch"]), state, "", skipped
    if skipped:
        reasons = "; ".join(f"{epoch} ({reason})" for epoch, reason in skipped)
        return (
            _NONE_READABLE,
            None,
            f"no checkpoint in {directory} can be read: {reasons}. Nothing was changed; "
            f"to start over, move {directory} away or use a new workdir.",
            skipped,
        )
    return 0, None, "", skipped


def restore(
    ckpt: Checkpointer | None,
    host_state: TrainState,
    config,
    workdir: str,
    data: dict[str, str] | None = None,
    say: Callable[[str], None] = print,
):
    """Process 0 reads the newest readable checkpoint and broadcasts it; returns
    (epoch, state).

    Args:
      ckpt: process 0's Checkpointer, None on the other processes.
      host_state: the freshly initialised state (NumPy): the template of the restore.
      config: the run's config; its trajectory must equal the checkpoint's.
      workdir: the run's directory (for messages).
      data: the fingerprint of the data loaded now (`localjax.data.fingerprint`), or None.
      say: prints a line (process 0): one per unreadable checkpoint passed over.

    Returns:
      `(epoch, state)`; epoch 0 means no checkpoint: `host_state` comes back unchanged.

    Raises:
      ConfigError: the checkpoint is of a different run, was trained on other data, does
        not fit the model, or no checkpoint can be read.
    """
    status, state, message = 0, None, ""
    if ckpt is not None:
        status, state, message, skipped = _read_newest(ckpt, host_state, config, workdir, data)
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
        return 0, host_state
    state = state if state is not None else host_state
    return status, multihost_utils.broadcast_one_to_all(state)


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
