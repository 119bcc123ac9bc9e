"""Timing a pipelined step: the tick, each stage alone, and the bubble (issue 16 item 6;
docs/pipeline.md).

Usage::

    r = benchmark_pipeline(model_name="mlp", num_stages=2, depth=4, batch_size=128)
    r["tick_ms"], r["stage_ms"], r["bubble_fraction"]

A tick is one dispatch of `Pipeline.tick` in the steady state (every stage holds a
batch). Each stage is also compiled and timed alone on its own devices
(`Pipeline.stage_fns`), which gives the stage times a schedule is made of. With per-stage
times t_s, a tick of time T and an epoch of n batches (n + S − 1 ticks, the fill and the
drain included), the bubble is the idle share of the stages' time:
1 − n·Σ_s t_s / (S·T·(n + S − 1)); it holds the fill/drain share (S − 1)/(n + S − 1),
the imbalance 1 − Σ_s t_s / (S·max_s t_s), and what the tick costs beyond its slowest
stage (the sends, and on fake CPU devices the cores the stages share).

Fake CPU devices (`--xla_force_host_platform_device_count`) share the host's cores: their
stages run one after another, so T is about Σ_s t_s there, not max_s t_s, and no speedup
shows; real devices (or one process per core) are needed for that.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from localjax import data as data_lib
from localjax.errors import ConfigError
from localjax.models import COMPUTE_DTYPES, build_model
from localjax.ops.conv_wgrad import conv_wgrad_context
from localjax.training import pipeline as pipeline_lib
from localjax.training.optimizer import make_optimizer
from localjax.training.state import create_train_state

__all__ = ["benchmark_pipeline", "bubble_fraction", "time_stage_alone"]


def bubble_fraction(stage_seconds: list[float], tick_seconds: float, batches: int) -> float:
    """The idle share of the stages' time over an epoch of `batches` batches.

    Args:
      stage_seconds: t_s, each stage's time for one batch alone.
      tick_seconds: T, one steady-state tick.
      batches: n, batches per epoch (the epoch takes n + S − 1 ticks).

    Returns:
      1 − n·Σ_s t_s / (S·T·(n + S − 1)), a Python float (negative only if the stages
      alone were timed slower than the tick).

    Raises:
      ZeroDivisionError: no stages, T = 0 or n + S − 1 = 0.
    """
    s = len(stage_seconds)
    return 1.0 - batches * sum(stage_seconds) / (s * tick_seconds * (batches + s - 1))


def _median_seconds(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_stage_alone(
    pipe: pipeline_lib.Pipeline,
    stage: int,
    row: dict[str, Any],
    images: Any,
    labels: Any,
    idx: Any,
    *,
    device: Any,
    steps: int,
    warmup: int,
    conv_wgrad: str | None = None,
) -> tuple[float, float]:
    """Compiles one stage's work of a tick alone on one device and times it.

    The stage runs as in a steady-state tick (`Pipeline.stage_fns`: unpack its state,
    its blocks' forward passes, local gradients and update, pack), on a valid batch; a
    later stage's input activation is zeros (the time does not depend on the values).
    Unlike `benchmark_pipeline`, which times a stage on its own D devices, this uses one
    device: the stage of a pipeline with one device per stage (e.g. one per process).

    Args:
      pipe: a `Pipeline`.
      stage: s in [0, S).
      row: that stage's buffers, `{dtype name: [L]}` (host or device arrays).
      images, labels: the training set (`[N, ...]` uint8, `[N]` int), host or device.
      idx: `[B]` int example indices (stage 0 gathers and augments them).
      device: the device to run on.
      steps, warmup: timed and untimed runs.
      conv_wgrad: trace inside `conv_wgrad_context(conv_wgrad)`; None: XLA's.

    Returns:
      `(median seconds per run, compile seconds)`.

    Raises:
      Nothing of its own.
    """
    batch = len(idx)

    def put(x):
        return jax.device_put(x, device)

    args = (
        {dt: put(b) for dt, b in row.items()},
        put(np.zeros((batch, pipe.act_width), pipe.act_dtype)),
        put(np.zeros((batch,), pipe.label_dtype)),
        put(np.ones((), bool)),
        put(images),
        put(labels),
        put(np.asarray(idx, np.int32)),
    )
    t0 = time.perf_counter()
    with conv_wgrad_context(conv_wgrad) if conv_wgrad else contextlib.nullcontext():
        compiled = jax.jit(pipe.stage_fns[stage]).lower(*args).compile()
    compile_seconds = time.perf_counter() - t0
    return _median_seconds(lambda: compiled(*args), steps, warmup), compile_seconds


def benchmark_pipeline(
    *,
    model_name: str = "mlp",
    loss: str = "predsim",
    num_stages: int = 2,
    cuts: tuple[int, ...] | None = None,
    depth: int | None = None,
    num_hidden: int = 1024,
    feat_mult: float = 1.0,
    batch_size: int = 128,
    steps: int = 20,
    warmup: int = 3,
    dtype: str = "float32",
    bio: bool = False,
    dim_in_decoder: int = 4096,
    nonlin: str = "relu",
    dropout: float = 0.0,
    dataset: str = "fashion_mnist",
    conv_wgrad: str = "auto",
    batches_per_epoch: int | None = None,
    final_pool: str = "reference",
) -> dict[str, Any]:
    """Compiles and times the pipelined step of one configuration on every device.

    Args:
      model_name, loss, depth, num_hidden, feat_mult, bio, dim_in_decoder, nonlin,
        dropout, dtype, final_pool: passed to `build_model` (depth = `num_layers`).
      num_stages: S; the devices form an S x (n / S) mesh (`make_pipeline_mesh`).
      cuts: the first block of stages 1..S−1; None balances them by counted FLOPs.
      batch_size: B.
      steps, warmup: timed and untimed ticks (and stage runs); the warmup is at least
        S − 1 ticks, so the timed ones are steady-state.
      dataset: the `DatasetSpec` giving the image shape, augmentation and, by default,
        the batches per epoch for the bubble.
      conv_wgrad: as in training (`conv_wgrad_context`).
      batches_per_epoch: n for the bubble; default ceil(training set / B) with the
        spec's published training size (60,000 where the spec records none).

    Returns:
      A dict: the configuration, `cuts`, `stage_blocks` (block indices per stage),
      `stage_flop_shares`, `compile_seconds`, `tick_ms`, `stage_ms` (each stage alone),
      `examples_per_s` (B / tick), `batches_per_epoch`, `fill_drain_fraction`,
      `imbalance_fraction` (from the measured stage times), `bubble_fraction`,
      `state_bytes_per_device`, `padding_waste`, `activation_bytes_per_tick` (the
      padded activations sent over all cuts).

    Raises:
      ConfigError: unknown names (as `build_model`), S that does not divide the devices
        or exceeds the blocks, a batch that does not divide over a stage's devices,
        steps < 1.
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1; got {steps}.")
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {list(COMPUTE_DTYPES)}.")
    spec = data_lib.get_spec(dataset)
    model = build_model(
        model_name,
        spec.num_classes,
        loss,
        num_layers=depth,
        num_hidden=num_hidden,
        feat_mult=feat_mult,
        nonlin=nonlin,
        dropout=dropout,
        bio=bio,
        dim_in_decoder=dim_in_decoder,
        dtype=dtype,
        final_pool=final_pool,
    )
    image_shape = (spec.image_size, spec.image_size, spec.channels)
    rng = np.random.default_rng(0)
    n = 2 * batch_size
    images = jnp.asarray(rng.integers(0, 256, (n, *image_shape), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, spec.num_classes, (n,), dtype=np.int32))
    tx = make_optimizer(5e-4, (100, 150), steps_per_epoch=400)
    state = create_train_state(
        model, tx, jax.random.key(0), data_lib.normalize(images[:2], spec), labels[:2]
    )
    devices = jax.devices()
    mesh = pipeline_lib.make_pipeline_mesh(devices, num_stages)
    flat = Mesh(np.asarray(devices), ("data",))
    pipe = pipeline_lib.make_pipeline(
        model,
        tx,
        state,
        mesh,
        sample=(images[:2], labels[:2]),
        batch_size=batch_size,
        cuts=cuts,
        preprocess=lambda im, k: data_lib.augment(im, k, spec),
        conv_wgrad=conv_wgrad,
        state_mesh=flat,
    )
    replicated = NamedSharding(flat, PartitionSpec())
    state, images, labels = jax.device_put((state, images, labels), replicated)
    buffers, carry = pipe.pack(state), pipe.init_carry(batch_size)
    idx, feed = pipe.put_feed(rng.integers(0, n, (1, batch_size)), np.ones((1, num_stages), bool))
    t0 = time.perf_counter()
    tick = pipe.tick.lower(buffers, carry, images, labels, idx, feed, steady=True).compile()
    compile_seconds = time.perf_counter() - t0

    box = {"buffers": buffers, "carry": carry}

    def one_tick():
        box["buffers"], box["carry"], metrics = tick(
            box["buffers"], box["carry"], images, labels, idx, feed
        )
        return metrics

    tick_seconds = _median_seconds(one_tick, steps, max(warmup, num_stages - 1))

    stage_seconds = []
    rows = jax.device_get(box["buffers"])
    for s, fn in enumerate(pipe.stage_fns):
        sub = Mesh(np.asarray(mesh.devices[s]), ("data",))
        axis = pipe.batch_axis(batch_size)

        def put(x, *spec, sub=sub):
            return jax.device_put(x, NamedSharding(sub, PartitionSpec(*spec)))

        args = (
            {dt: put(b[s]) for dt, b in rows.items()},
            put(jnp.zeros((batch_size, pipe.act_width), pipe.act_dtype), axis),
            put(jnp.zeros((batch_size,), pipe.label_dtype), axis),
            put(jnp.ones((), bool)),
            put(np.asarray(images)),
            put(np.asarray(labels)),
            put(np.asarray(idx)[0], axis),
        )
        with conv_wgrad_context(conv_wgrad):
            stage = jax.jit(fn).lower(*args).compile()
        stage_seconds.append(_median_seconds(lambda st=stage, a=args: st(*a), steps, warmup))

    num_train = getattr(spec, "num_train", 0) or 60000  # 0: a small set; Fashion-MNIST's
    per_epoch = batches_per_epoch or -(-num_train // batch_size)
    s = num_stages
    total_flops = sum(pipe.stage_flops) or 1.0
    act_itemsize = np.dtype(pipe.act_dtype).itemsize
    return {
        "model": model_name,
        "loss": loss,
        "bio": bio,
        "batch_size": batch_size,
        "dtype": dtype,
        "backend": jax.default_backend(),
        "num_stages": s,
        "data_devices": pipe.data_size,
        "cuts": list(pipe.cuts),
        "stage_blocks": [list(p.block_indices) for p in pipe.plans],
        "stage_flop_shares": [f / total_flops for f in pipe.stage_flops],
        "compile_seconds": compile_seconds,
        "tick_ms": 1e3 * tick_seconds,
        "stage_ms": [1e3 * t for t in stage_seconds],
        "examples_per_s": batch_size / tick_seconds,
        "batches_per_epoch": per_epoch,
        "fill_drain_fraction": (s - 1) / (per_epoch + s - 1),
        "imbalance_fraction": 1.0 - sum(stage_seconds) / (s * max(stage_seconds)),
        "bubble_fraction": bubble_fraction(stage_seconds, tick_seconds, per_epoch),
        "state_bytes_per_device": pipe.state_bytes_per_device(),
        "padding_waste": pipe.padding_waste(),
        "activation_bytes_per_tick": (s - 1) * batch_size * pipe.act_width * act_itemsize,
    }
