"""Resuming a run from its workdir: the newest checkpoint, the same trajectory, the
metrics of the epochs it holds (DESIGN.md, Training: checkpoints and resume).

Usage::

    last_epoch, host_state = restore(ckpt, host_state, config, workdir)   # 0: fresh run
    history = resumed_history(workdir, last_epoch)     # metrics.jsonl trimmed to match

A checkpoint records `trajectory_config(config)`: every field that changes what is
trained. A resume with any of them changed is refused; `RESUMABLE_CHANGES` may differ.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from jax.experimental import multihost_utils

from localjax.errors import ConfigError
from localjax.training.checkpoints import Checkpointer
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


def trajectory_config(config) -> dict[str, Any]:
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


def restore(ckpt: Checkpointer | None, host_state: TrainState, config, workdir: str):
    """Process 0 reads the newest checkpoint and broadcasts it; returns (epoch, state).

    epoch 0 means no checkpoint: `host_state` comes back unchanged.
    """
    status, restored = 0, None
    if ckpt is not None:
        restored = ckpt.restore_latest(host_state)
        if restored is not None:
            diff = _resume_mismatch(restored[1]["config"], trajectory_config(config))
            status = -1 if diff else int(restored[1]["epoch"])
    status = int(multihost_utils.broadcast_one_to_all(np.int32(status)))
    if status < 0:
        detail = f": {'; '.join(diff)}" if ckpt is not None else " (see process 0's log)"
        raise ConfigError(
            f"{workdir} holds a checkpoint of a different run{detail}. Use a new workdir "
            f"(experiments.reproduce: a new --root), or delete "
            f"{os.path.join(workdir, 'checkpoints')} to start over."
        )
    if status == 0:
        return 0, host_state
    state = restored[0] if restored is not None else host_state
    return status, multihost_utils.broadcast_one_to_all(state)


def resumed_history(workdir: str, last_epoch: int) -> list[dict[str, Any]]:
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
