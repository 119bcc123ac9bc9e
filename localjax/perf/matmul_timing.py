"""Matmul throughput of this machine: the large-square peak, and the ceiling on given shapes.

The yardsticks of `experiments/benchmark.py` (issue 6): a step's achieved FLOP/s is read
against the float32 peak of a large square matmul and against what the same kernels reach
on the step's own (thin, batch-sized) products, each timed alone.

Usage::

    peak = matmul_peak_gflops(2048)
    ceiling = matmul_ceiling_gflops(dense_matmuls(model, 128, (28, 28, 1)))
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from localjax.perf.flops import MATMUL_LAYOUTS

__all__ = ["matmul_peak_gflops", "matmul_ceiling_gflops"]


def _median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(size: int = 2048, dtype: Any = jnp.float32, reps: int = 10) -> float:
    """The machine's matmul throughput: median time of `size`² @ `size`² products.

    Args:
      size: side of the square operands.
      dtype: operand dtype (float32 on CPU, bf16 on accelerators).
      reps: timed repetitions after one warm-up.

    Returns:
      GFLOP/s (2·size³ FLOPs per product).

    Raises:
      Nothing of its own (a non-positive `size` fails in `jax.random.normal`).

    The "matmul peak" of the benchmark (docs/performance.md).
    """
    a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(2), (size, size), jnp.float32).astype(dtype)
    mm = jax.jit(jnp.dot)
    jax.block_until_ready(mm(a, b))
    seconds = _median_seconds(lambda: mm(a, b), reps)
    return 2.0 * size**3 / seconds / 1e9


_LAYOUT_FNS = {
    "nn": lambda a, b: a @ b,
    "tn": lambda a, b: a.T @ b,
    "nt": lambda a, b: a @ b.T,
}


def matmul_ceiling_gflops(
    ops: list[tuple[str, int, int, int, str]],
    dtype: Any = jnp.float32,
    reps: int = 10,
    calls: int = 5,
) -> float:
    """What the matmul kernels reach on a step's own shapes, each timed alone.

    A step cannot run faster than its matmuls do in isolation; at batch 128 these are
    thin products (M or K = 128) that reach less than a large square matmul. This is
    the ceiling the step's achieved FLOP/s should be compared with, beside the peak.

    Args:
      ops: `(role, m, k, n, layout)` tuples from `localjax.flops.dense_matmuls`.
      dtype: operand dtype.
      reps: timed rounds; each round times every distinct shape once (round-robin, so
        all shapes see the same machine load), the median per shape is kept.
      calls: products queued per timing (dispatch overhead is spread over them).

    Returns:
      GFLOP/s: Σ 2·m·k·n over `ops` divided by Σ of their median times.

    Raises:
      ValueError: `ops` is empty or a layout is not in `localjax.flops.MATMUL_LAYOUTS`.

    A yardstick for the benchmark (docs/performance.md).
    """
    if not ops:
        raise ValueError("matmul_ceiling_gflops needs at least one matmul.")
    shapes: dict[tuple[int, int, int, str], int] = {}
    for _, m, k, n, layout in ops:
        if layout not in MATMUL_LAYOUTS:
            raise ValueError(
                f"unknown matmul layout {layout!r}; use one of {list(MATMUL_LAYOUTS)}."
            )
        shapes[(m, k, n, layout)] = shapes.get((m, k, n, layout), 0) + 1
    runs = {}
    for m, k, n, layout in shapes:
        a_shape = (k, m) if layout == "tn" else (m, k)
        b_shape = (n, k) if layout == "nt" else (k, n)
        a = jax.random.normal(jax.random.key(1), a_shape).astype(dtype)
        b = jax.random.normal(jax.random.key(2), b_shape).astype(dtype)
        fn = jax.jit(_LAYOUT_FNS[layout]).lower(a, b).compile()
        jax.block_until_ready(fn(a, b))
        runs[(m, k, n, layout)] = (fn, a, b)
    times: dict[tuple[int, int, int, str], list[float]] = {key: [] for key in runs}
    for _ in range(reps):
        for key, (fn, a, b) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready([fn(a, b) for _ in range(calls)])
            times[key].append((time.perf_counter() - t0) / calls)
    flops = sum(2.0 * m * k * n * count for (m, k, n, _), count in shapes.items())
    seconds = sum(statistics.median(times[key]) * count for key, count in shapes.items())
    return flops / seconds / 1e9
