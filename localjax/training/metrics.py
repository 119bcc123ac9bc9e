"""Metrics of a run between the step and the files: fetched in windows, checked for
non-finite losses, summed over an epoch (DESIGN.md, Training: metrics).

Usage::

    drain(window, totals, check)      # window: [(step, metrics on device)], totals: host sums
    check_finite(metrics, step, where, workdir, checkpoint_epoch=2, lr=1e-3)
    # -> TrainingError naming step and block, what is kept, and commands that work

`TIMING_KEYS` are the metrics.jsonl fields that measure wall-clock time: the only ones a
seed does not fix.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from localjax.errors import TrainingError
from localjax.training.state import TrainState

__all__ = ["TIMING_KEYS", "check_finite", "check_state_finite", "drain", "recovery_advice"]

# metrics.jsonl fields that measure wall-clock time: the only ones a seed does not fix.
TIMING_KEYS = ("epoch_seconds", "train_seconds")


def _block_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def recovery_advice(workdir: str, checkpoint_epoch: int = 0, lr: float | None = None) -> str:
    """What is kept after a run stopped on a non-finite value, and commands that work.

    Args:
      workdir: the run's directory.
      checkpoint_epoch: the epoch of the newest checkpoint in `workdir` (0: none yet).
      lr: the run's learning rate (None: unknown), to suggest a lower one.

    Returns:
      Sentences for the end of a one-line message, str.

    The learning rate is part of a checkpoint's trajectory: a resume with another lr is
    refused, so a lower rate needs a new workdir while a checkpoint exists.
    """
    lower = f"--config.lr={lr / 2:g}" if lr else "a lower --config.lr"
    if checkpoint_epoch:
        new_dir = f"{workdir.rstrip(os.sep)}_lr{lr / 2:g}" if lr else "NEW_WORKDIR"
        return (
            f"The newest checkpoint, of epoch {checkpoint_epoch}, is kept in "
            f"{os.path.join(workdir, 'checkpoints')}. If the fault may be transient, rerun "
            "the same command unchanged: it resumes from that epoch. To train with a lower "
            f"learning rate, rerun it with a new workdir (e.g. --workdir={new_dir} {lower}): "
            "the checkpoint resumes only with its own lr. Or check the input data."
        )
    return (
        f"No checkpoint has been written yet, so there is nothing to resume: rerun the "
        f"command with a lower learning rate (e.g. {lower}; the same workdir starts over), "
        "or check the input data."
    )


def check_finite(
    metrics: dict[str, float],
    step: int,
    where: str,
    workdir: str,
    checkpoint_epoch: int = 0,
    lr: float | None = None,
) -> None:
    """Raises TrainingError naming the step and the first block whose loss is non-finite.

    Blocks run in order, so a NaN in block k reaches every later block in the same step:
    the lowest-numbered bad block is where it started. The message ends with
    `recovery_advice(workdir, checkpoint_epoch, lr)`.
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
        f"(non-finite: {', '.join(bad)}). " + recovery_advice(workdir, checkpoint_epoch, lr)
    )


def check_state_finite(
    host_state: TrainState,
    step: int,
    where: str,
    workdir: str,
    checkpoint_epoch: int = 0,
    lr: float | None = None,
) -> None:
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
            "not saved. " + recovery_advice(workdir, checkpoint_epoch, lr)
        )


def drain(window: list, totals: dict[str, float], check=None) -> None:
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
