"""Where per-epoch metrics go: `metrics.jsonl` in the workdir.

Usage::

    with MetricWriter(workdir) as writer:
        writer.write({"epoch": 1, "test_error": 14.2})
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["MetricWriter"]


class MetricWriter:
    """Appends one JSON object per epoch to `WORKDIR/metrics.jsonl`.

    Args:
      workdir: existing directory.
      append: keep earlier lines (resumed run) instead of starting the file anew.
    """

    def __init__(self, workdir: str, append: bool = False):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a" if append else "w")

    def write(self, record: dict[str, Any]) -> None:
        """Writes one epoch's record (a flat dict of JSON-serialisable values)."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
