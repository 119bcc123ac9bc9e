"""Where per-epoch metrics go: `metrics.jsonl` in the workdir, plus TensorBoard events.

Usage::

    with MetricWriter(workdir) as writer:
        writer.write({"epoch": 1, "test_error": 14.2, "local_error/block_0": 20.1})
    MetricWriter(workdir, append=True, history=kept)   # resumed: events rebuilt from `kept`

    tensorboard --logdir WORKDIR      # scalars test_error, local_error/block_0, ...

Each record becomes one JSON line; its numeric values also become TensorBoard scalars
(tag = the record's key, step = `record["epoch"]`) in `events.out.tfevents.*` files
beside `metrics.jsonl`, written with tensorboardX (no TensorFlow needed). Without
tensorboardX only the JSON lines are written, after a one-time warning.
"""

from __future__ import annotations

import glob
import json
import math
import numbers
import os
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["MetricWriter", "tensorboard_available"]

_WARNED_NO_TENSORBOARD = False


def _summary_writer_class():
    """tensorboardX's SummaryWriter, or None (warning once) when it is not installed."""
    global _WARNED_NO_TENSORBOARD
    try:
        from tensorboardX import SummaryWriter  # lazy: an optional dependency
    except ImportError:
        if not _WARNED_NO_TENSORBOARD:
            warnings.warn(
                "tensorboardX is not installed: metrics go to metrics.jsonl only. "
                "`pip install tensorboardX` (or the package's [plots] extra) for "
                "TensorBoard event files.",
                stacklevel=3,
            )
            _WARNED_NO_TENSORBOARD = True
        return None
    return SummaryWriter


def tensorboard_available() -> bool:
    """Whether tensorboardX can be imported (warns once when it cannot).

    Returns:
      Python bool.

    Raises:
      Nothing of its own (a failed import only warns).

    Part of the metrics files (DESIGN.md, What flows where: metrics files, plots).
    """
    return _summary_writer_class() is not None


class MetricWriter:
    """Appends one JSON object per epoch to `WORKDIR/metrics.jsonl`, and writes the
    same numbers as TensorBoard scalars beside it (DESIGN.md, What flows where: metrics
    files).

    Args:
      workdir: existing directory.
      append: keep earlier lines (resumed run) instead of starting the file anew. A new
        run (`append=False`) also removes earlier `events.out.tfevents.*` files in
        `workdir`, so TensorBoard does not mix two runs.
      tensorboard: also write TensorBoard event files (needs tensorboardX; without it a
        one-time warning is issued and only the JSON lines are written).
      history: with `append`, the records metrics.jsonl keeps (`resume.resumed_history`):
        the event files are rewritten from them (one new file; the old ones, which may
        hold a killed run's partial epoch or epochs trained past its checkpoint, are
        removed), so TensorBoard shows exactly what metrics.jsonl holds. None: the
        earlier event files are kept as they are.

    Raises:
      OSError: if `workdir` does not exist or is not writable.
    """

    def __init__(
        self,
        workdir: str,
        append: bool = False,
        tensorboard: bool = True,
        history: Sequence[dict[str, Any]] | None = None,
    ):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a" if append else "w")
        self._tb = None
        self._next_step = 0
        if tensorboard:
            writer_cls = _summary_writer_class()
            if writer_cls is not None:
                old = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
                if not append:
                    _remove(old)
                # a unique suffix: a resumed run started within the same second must not
                # overwrite the earlier event file (tensorboardX names files by time)
                self._tb = writer_cls(logdir=workdir, filename_suffix=f".{uuid.uuid4().hex[:8]}")
                if append and history is not None:
                    # the events of `history` anew, then the old files (a killed run's
                    # partial epochs and epochs it trained past the checkpoint) go
                    for record in history:
                        self._write_scalars(record)
                    self._tb.flush()
                    _remove(old)

    def write(self, record: dict[str, Any]) -> None:
        """Writes one epoch's record.

        Args:
          record: a flat dict of JSON-serialisable values; `epoch` (int) is the
            TensorBoard step (records without it get consecutive steps). Finite real
            numbers other than `epoch` become scalars tagged by their key; other values
            (strings, booleans, None, NaN) go to the JSON line only.
        """
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is None:
            return
        self._write_scalars(record)
        self._tb.flush()

    def _write_scalars(self, record: dict[str, Any]) -> None:
        step = record.get("epoch", self._next_step)
        step = int(step) if isinstance(step, numbers.Real) else self._next_step
        self._next_step = step + 1
        for key, value in record.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if math.isfinite(float(value)):
                self._tb.add_scalar(key, float(value), global_step=step)

    def close(self) -> None:
        """Closes the JSON file and the event file (idempotent)."""
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _remove(paths: Sequence[str]) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
