"""What a pipelined step sends and how fast it can run: bytes per step against a
data-parallel all-reduce, the collectives of a compiled program, and a cost model from
measured stage times and a link's latency and bandwidth (issue 16 item 6;
docs/pipeline.md, Measurements).

Usage::

    sent = pipeline_send_bytes(pipe, batch_size=128)     # activations at each cut
    ring = ring_allreduce_bytes(4 * num_params, n=2)     # data parallel, per device
    ops = hlo_collectives(compiled.as_text())           # [(op, bytes), ...]
    alpha, beta = fit_link(sizes, seconds)              # s, bytes/s
    p = predict_pipeline(stage_seconds, sent["per_sender"], alpha, beta, 128,
                         messages=3, batches_per_epoch=469)

The model. One tick runs every stage's work and then sends each cut's activation to the
next stage (`Pipeline.tick`: the `ppermute` follows the compute, nothing overlaps), so

    T(S) = max_s t_s + m·α + bytes / β

with t_s the stage's time alone on its device, m the messages per tick, α the per-message
latency (dispatch included when fitted from whole programs), β the bandwidth and bytes the
padded activation one device sends per tick. Steady-state throughput is B / T; over an
epoch of n batches (n + S − 1 ticks, the fill and the drain) it is n·B / ((n + S − 1)·T).
The fused step on one device runs every block in turn: B / Σ_s t_s, less the stages'
fixed costs counted once. FLOP balance bounds the speedup by Σ_s f_s / max_s f_s
(`ideal_speedup`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from localjax.training.stages import balance_cuts

__all__ = [
    "HLO_DTYPE_BYTES",
    "COLLECTIVES",
    "hlo_collectives",
    "collective_bytes_by_op",
    "ring_allreduce_bytes",
    "pipeline_send_bytes",
    "fit_link",
    "link_seconds",
    "predict_pipeline",
    "ideal_speedup",
]

HLO_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)

# `%name = <type> op(` where <type> is one array type or a tuple of them
_INSTRUCTION = re.compile(r"=\s*(\(.*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+([a-z-]+)\(")
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def _type_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        if dtype not in HLO_DTYPE_BYTES:
            continue
        size = math.prod(int(d) for d in dims.split(",") if d)
        total += size * HLO_DTYPE_BYTES[dtype]
    return total


def hlo_collectives(hlo_text: str) -> list[tuple[str, int]]:
    """The collectives of an HLO module's text and the bytes of each one's result.

    The result of an all-reduce, a collective-permute or an all-to-all has its operand's
    size; an all-gather's is the gathered array (n times one device's operand), a
    reduce-scatter's one device's share. Asynchronous pairs are counted once (the
    `-start`; its `-done` is skipped), from the `-start`'s operands, i.e. half of a
    `(operand, result)` tuple; contexts (u32 scalars) are ignored there.

    Args:
      hlo_text: `compiled.as_text()` (or a lowered module's HLO text).

    Returns:
      `[(op, bytes)]` in program order, op one of `COLLECTIVES`.

    Raises:
      Nothing of its own; lines it does not recognise are skipped.
    """
    out = []
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.search(line)
        if not m:
            continue
        type_text, op = m.groups()
        if op.endswith("-done"):
            continue
        start = op.endswith("-start")
        base = op[: -len("-start")] if start else op
        if base not in COLLECTIVES:
            continue
        if start and type_text.startswith("("):
            arrays = [a for a in _ARRAY.findall(type_text) if a[0] in HLO_DTYPE_BYTES]
            arrays = [a for a in arrays if not (a[0] == "u32" and a[1] == "")]
            half = arrays[: max(1, len(arrays) // 2)]
            nbytes = sum(
                math.prod(int(d) for d in dims.split(",") if d) * HLO_DTYPE_BYTES[dt]
                for dt, dims in half
            )
        else:
            nbytes = _type_bytes(type_text)
        out.append((base, nbytes))
    return out


def collective_bytes_by_op(hlo_text: str) -> dict[str, dict[str, int]]:
    """`hlo_collectives` summed per op: `{op: {"count": k, "bytes": total}}`."""
    out: dict[str, dict[str, int]] = {}
    for op, nbytes in hlo_collectives(hlo_text):
        entry = out.setdefault(op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += nbytes
    return out


def ring_allreduce_bytes(nbytes: float, n: int) -> float:
    """Bytes each device sends in a ring all-reduce of `nbytes` over n devices:
    2(n − 1)/n · nbytes (a reduce-scatter, then an all-gather)."""
    return 2.0 * (n - 1) / n * nbytes if n > 1 else 0.0


def pipeline_send_bytes(pipe: Any, batch_size: int) -> dict[str, Any]:
    """What crosses the cuts of a pipeline per step (= per tick in the steady state).

    Every stage but the last sends one tick's output to the next stage as one message
    (`stage_layout.to_message`): the activation flattened per example and padded to the
    widest cut (`Pipeline.act_width`) and the labels, each device its 1/D of the batch.

    Args:
      pipe: a `training.pipeline.Pipeline`.
      batch_size: B (global).

    Returns:
      A dict: `cut_bytes` (per cut, the activation's own bytes for the whole batch,
      without padding), `padded_bytes` (the padded activation per cut, whole batch),
      `per_sender` (bytes one sending device sends per tick: its share of the padded
      activation and labels), `per_device_mean` (averaged over all S·D devices,
      the last stage's sending nothing), `padding_fraction` (of the activation bytes
      sent).

    Raises:
      Nothing of its own.
    """
    s, d = pipe.num_stages, pipe.data_size
    item = np.dtype(pipe.act_dtype).itemsize
    label = np.dtype(pipe.label_dtype).itemsize
    widths = list(getattr(pipe, "cut_widths", ()) or [pipe.act_width] * (s - 1))
    cut_bytes = [batch_size * w * item for w in widths]
    padded = batch_size * pipe.act_width * item
    per_sender = (padded + batch_size * label) / d if s > 1 else 0.0
    sent_act = padded * (s - 1)
    return {
        "cut_bytes": cut_bytes,
        "padded_bytes": [padded] * (s - 1),
        "per_sender": per_sender,
        "per_device_mean": per_sender * (s - 1) / s,
        "padding_fraction": 1.0 - sum(cut_bytes) / sent_act if sent_act else 0.0,
    }


def fit_link(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """Latency and bandwidth: seconds ≈ α + size / β, fitted by least squares on the
    relative error (sizes spanning orders of magnitude each count alike, so α comes from
    the small messages and β from the large).

    Args:
      sizes: bytes per message (>= 2 distinct values).
      seconds: the measured time of each (> 0).

    Returns:
      `(alpha seconds, beta bytes/s)`; β is `inf` when the fitted slope is not positive
      (time independent of size), α is clipped at 0.

    Raises:
      ValueError: fewer than two distinct sizes.
    """
    x, y = np.asarray(sizes, float), np.asarray(seconds, float)
    if len(set(x.tolist())) < 2:
        raise ValueError("fit_link needs at least two distinct sizes.")
    design = np.stack([np.ones_like(x), x], axis=1) / y[:, None]
    (intercept, slope), *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
    beta = 1.0 / slope if slope > 0 else math.inf
    return max(float(intercept), 0.0), float(beta)


def link_seconds(nbytes: float, alpha: float, beta: float, messages: int = 1) -> float:
    """m·α + bytes / β: one tick's sends."""
    return messages * alpha + (nbytes / beta if beta and math.isfinite(beta) else 0.0)


def predict_pipeline(
    stage_seconds: Sequence[float],
    send_bytes: float,
    alpha: float,
    beta: float,
    batch_size: int,
    *,
    messages: int = 1,
    batches_per_epoch: int | None = None,
    fused_seconds: float | None = None,
) -> dict[str, float | None]:
    """The cost model's tick and throughput for given stage times.

    Args:
      stage_seconds: t_s, each stage's time for one batch alone on its device.
      send_bytes: bytes one sending device sends per tick (`pipeline_send_bytes`'s
        `per_sender`).
      alpha, beta: the link (`fit_link`); ignored for one stage.
      batch_size: B.
      messages: m, messages per tick (collective-permutes in the compiled tick).
      batches_per_epoch: n, for the epoch throughput (fill and drain); None: steady
        state only.
      fused_seconds: the fused step's time on one device, for the speedup; None: the
        sum of the stage times.

    Returns:
      A dict: `tick_s` (T), `comm_s`, `examples_per_s` (steady state, B / T),
      `epoch_examples_per_s` (n·B / ((n + S − 1)·T), or None), `speedup` (steady state
      against the fused step), `epoch_speedup` (or None), `bound` (Σ t_s / max t_s:
      the speedup free sends would give, from the measured stage times).

    Raises:
      ValueError: no stages.
    """
    if not stage_seconds:
        raise ValueError("predict_pipeline needs at least one stage time.")
    s = len(stage_seconds)
    comm = link_seconds(send_bytes, alpha, beta, messages) if s > 1 else 0.0
    tick = max(stage_seconds) + comm
    fused = sum(stage_seconds) if fused_seconds is None else fused_seconds
    fill = batches_per_epoch / (batches_per_epoch + s - 1) if batches_per_epoch else None
    return {
        "tick_s": tick,
        "comm_s": comm,
        "examples_per_s": batch_size / tick,
        "epoch_examples_per_s": batch_size / tick * fill if fill else None,
        "speedup": fused / tick,
        "epoch_speedup": fused / tick * fill if fill else None,
        "bound": sum(stage_seconds) / max(stage_seconds),
    }


def ideal_speedup(
    costs: Sequence[float], num_stages: int, tail: float = 0.0
) -> tuple[float, tuple[int, ...]]:
    """The speedup FLOP balance allows: Σ cost / the costliest stage of the best cut.

    Args:
      costs: per-block FLOPs (`stages.block_flops`).
      num_stages: S (<= the number of blocks).
      tail: the output layer's FLOPs (on the last stage).

    Returns:
      `(speedup, cuts)`, the cuts `stages.balance_cuts` chooses.

    Raises:
      ConfigError: S < 1 or more stages than blocks.
    """
    cuts = balance_cuts(costs, num_stages, tail)
    bounds = (0, *cuts, len(costs))
    stage = [sum(costs[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    stage[-1] += tail
    return (sum(costs) + tail) / max(stage), cuts
