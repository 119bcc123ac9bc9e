"""The JSON record a benchmark module writes: how it was run, the machine's load before
and after, and its wall time (`experiments.pipeline_bench`, `experiments.input_bench`).

Timing on a loaded machine is distorted, so every record carries the load averages it
was taken under; a reader can refuse a number taken while other jobs ran.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable processes, `os.getloadavg`), rounded
    to 0.01.

    Raises:
      OSError: the platform reports no load average.
    """
    return [round(x, 2) for x in os.getloadavg()]


def start_record(name: str, workdir: str, **fields: Any) -> dict[str, Any]:
    """A new record: the command line, the core count, the load now, `workdir` and
    `fields`; prints `NAME: workdir W, N cores, load [..]`. `finish_record` completes it.

    Args:
      name: the benchmark's name, for the printed line.
      workdir: where its logs and per-worker results go.
      **fields: more JSON-able entries (e.g. `settings`).

    Returns:
      The record (a dict; `_start` holds the start time, removed by `finish_record`).
    """
    record: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "cores": os.cpu_count(),
        "load_at_start": load_average(),
        "workdir": workdir,
        **fields,
        "_start": time.time(),
    }
    print(
        f"{name}: workdir {workdir}, {record['cores']} cores, load {record['load_at_start']}",
        flush=True,
    )
    return record


def finish_record(record: dict[str, Any], out: str) -> None:
    """Adds the load at the end and the wall time (seconds), prints them, and writes the
    record as JSON to `out` (its directory made; '' writes nothing).

    Raises:
      OSError: `out` cannot be written.
      TypeError: a value of the record is not JSON-able.
    """
    record["load_at_end"] = load_average()
    record["wall_seconds"] = time.time() - record.pop("_start")
    print(f"done in {record['wall_seconds']:.0f} s, load {record['load_at_end']}", flush=True)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {out}")
