"""The benchmark library: compile one training step and time it, count its FLOPs and
read its compiled memory (docs/performance.md). Flag-free; `experiments/benchmark.py`
wraps it with flags and printing.

Usage::

    r = benchmark(model_name="mlp", loss="predsim", batch_size=128)
    r["ms_per_step"], r["temp_bytes"], r["params_total"]
    rows = depth_sweep((2, 4, 8, 16))          # MLP memory per depth, local vs backprop

For one configuration it compiles the real train step of `localjax.training.steps` (with
the dataset's augmentation as training runs it, on uint8 images held on the device),
then reports: compile seconds, the median step time over `steps` timed steps after
`warmup` untimed ones, examples/s, model FLOPs per step (`perf.flops.model_flops`) beside
XLA's own count (`cost_analysis()`), the achieved GFLOP/s, the machine's matmul peak
measured in the same run, their ratio, the parameter counts and the compiled step's
memory (`memory_analysis()`: temp and argument bytes).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from localjax import data as data_lib
from localjax.blocks import LocalDense
from localjax.errors import ConfigError
from localjax.models import COMPUTE_DTYPES, build_model
from localjax.network import count_params
from localjax.ops.conv_wgrad import conv_wgrad_context
from localjax.perf.flops import dense_matmuls, model_flops
from localjax.perf.matmul_timing import matmul_ceiling_gflops
from localjax.training.optimizer import make_optimizer
from localjax.training.state import create_train_state
from localjax.training.steps import make_multi_step, make_reference_train_step, make_train_step

__all__ = ["benchmark", "depth_sweep"]


def _xla_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def benchmark(
    *,
    model_name: str = "mlp",
    loss: str = "predsim",
    depth: int | None = None,
    num_hidden: int = 1024,
    feat_mult: float = 1.0,
    batch_size: int = 128,
    steps: int = 20,
    warmup: int = 3,
    dtype: str = "float32",
    impl: str = "fused",
    scan_steps: int = 1,
    bio: bool = False,
    detach: bool = True,
    dim_in_decoder: int = 4096,
    nonlin: str = "relu",
    dropout: float = 0.0,
    dataset: str = "fashion_mnist",
    peak_gflops: float | None = None,
    peak_size: int = 2048,
    conv_wgrad: str = "auto",
    compile_only: bool = False,
    final_pool: str = "reference",
) -> dict[str, Any]:
    """Compiles and times one training step; see the module docstring.

    Args:
      model_name, loss, depth, num_hidden, feat_mult, bio, detach, dim_in_decoder,
        nonlin, dropout, final_pool: passed to `build_model` (depth = `num_layers`).
      batch_size: B.
      steps, warmup: timed and untimed steps (each timed step waits for its result).
      dtype: `float32` or `bfloat16` compute.
      impl: `fused` (`make_train_step`) or `reference` (`make_reference_train_step`).
      scan_steps: > 1 times `make_multi_step` over that many batches per dispatch and
        reports per-step numbers.
      dataset: the `DatasetSpec` giving the image shape and augmentation.
      peak_gflops: a matmul peak already measured in this run, else measured here:
        three `peak_size`² matmuls after each timed step (median of all), so the step
        and the peak see the same machine load.
      peak_size: side of the peak's matmuls.
      conv_wgrad: `xla`, `shifted` (trace the step inside
        `localjax.ops.conv_wgrad.shifted_wgrad_convs`: conv weight gradients as shifted matmuls),
        or `auto` (shifted on the CPU backend, as `config.conv_wgrad="auto"` trains).
      compile_only: compile and read the compiled step's memory and parameter counts,
        but run no step: the timing and FLOP fields are None (memory of models whose
        step takes minutes on a CPU).

    Returns:
      A dict with `ms_per_step`, `compile_seconds`, `examples_per_s`, `flops_per_step`,
      `xla_flops_per_step`, `achieved_gflops`, `matmul_peak_gflops`, `peak_fraction`,
      `params_inference`, `params_total`, `temp_bytes`, `argument_bytes`,
      `output_bytes` and the configuration.

    Raises:
      ConfigError (a ValueError): for unknown model, loss, dtype, dataset or conv_wgrad
        names, or steps < 1.
    """
    if steps < 1 or scan_steps < 1:
        raise ConfigError(f"steps and scan_steps must be >= 1; got {steps}, {scan_steps}.")
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {list(COMPUTE_DTYPES)}.")
    trace_ctx = conv_wgrad_context(conv_wgrad)  # refuses an unknown choice before compiling
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
        detach=detach,
        dim_in_decoder=dim_in_decoder,
        dtype=dtype,
        final_pool=final_pool,
    )
    image_shape = (spec.image_size, spec.image_size, spec.channels)
    rng = np.random.default_rng(0)
    n = batch_size * scan_steps
    images = jnp.asarray(rng.integers(0, 256, (n, *image_shape), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, spec.num_classes, (n,), dtype=np.int32))
    tx = make_optimizer(5e-4, (100, 150), steps_per_epoch=400)
    sample = data_lib.normalize(images[:2], spec)
    state = create_train_state(model, tx, jax.random.key(0), sample, labels[:2])
    params_inference, params_total = count_params(state.params)

    def preprocess(im, key):
        return data_lib.augment(im, key, spec)

    maker = make_train_step if impl == "fused" else make_reference_train_step
    if scan_steps > 1:
        step = make_multi_step(model, tx, preprocess=preprocess, make_step=maker)
        images = images.reshape(scan_steps, batch_size, *image_shape)
        labels = labels.reshape(scan_steps, batch_size)
    else:
        step = maker(model, tx, preprocess=preprocess)
    jitted = jax.jit(step, donate_argnums=0)

    t0 = time.perf_counter()
    with trace_ctx:
        compiled = jitted.lower(state, images, labels).compile()
    compile_seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_flops = _xla_flops(compiled)
    result = {
        "model": model_name,
        "loss": loss,
        "final_pool": final_pool,
        "depth": sum(isinstance(layer, LocalDense) for _, layer in model.named_layers()),
        "num_hidden": num_hidden,
        "batch_size": batch_size,
        "dtype": dtype,
        "impl": impl,
        "scan_steps": scan_steps,
        "conv_wgrad": conv_wgrad,
        "backend": jax.default_backend(),
        "ms_per_step": None,
        "compile_seconds": compile_seconds,
        "examples_per_s": None,
        "flops_per_step": None,
        # XLA's cost analysis counts a scan's body once: it is per step already
        "xla_flops_per_step": xla_flops,
        "achieved_gflops": None,
        "matmul_peak_gflops": None,
        "peak_fraction": None,
        "matmul_ceiling_gflops": None,
        "ceiling_peak_fraction": None,
        "ceiling_fraction": None,
        "params_inference": params_inference,
        "params_total": params_total,
        "temp_bytes": int(mem.temp_size_in_bytes) if mem else None,
        "argument_bytes": int(mem.argument_size_in_bytes) if mem else None,
        "output_bytes": int(mem.output_size_in_bytes) if mem else None,
    }
    if compile_only:
        return result

    for _ in range(warmup):
        state, metrics = compiled(state, images, labels)
    jax.block_until_ready(metrics if warmup else state)
    # the peak's matmuls alternate with the steps, so both see the same machine load
    measure_peak = peak_gflops is None
    if measure_peak:
        a = jax.random.normal(jax.random.key(1), (peak_size, peak_size)).astype(
            COMPUTE_DTYPES[dtype]
        )
        b = jax.random.normal(jax.random.key(2), (peak_size, peak_size)).astype(
            COMPUTE_DTYPES[dtype]
        )
        mm = jax.jit(jnp.dot).lower(a, b).compile()
        jax.block_until_ready(mm(a, b))
    times, peak_times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, images, labels)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        for _ in range(3 if measure_peak else 0):
            t0 = time.perf_counter()
            jax.block_until_ready(mm(a, b))
            peak_times.append(time.perf_counter() - t0)
    seconds = statistics.median(times) / scan_steps
    if measure_peak:
        peak_gflops = 2.0 * peak_size**3 / statistics.median(peak_times) / 1e9
    try:
        flops = model_flops(model, batch_size, image_shape)
    except TypeError:  # blocks it cannot count (a user's LocalBlock): XLA's count stands alone
        flops = None
    achieved = None if flops is None else flops / seconds / 1e9
    ceiling = None
    if model_name == "mlp":
        ceiling = matmul_ceiling_gflops(
            dense_matmuls(model, batch_size, image_shape), COMPUTE_DTYPES[dtype], reps=max(5, steps)
        )
    result.update(
        ms_per_step=1e3 * seconds,
        examples_per_s=batch_size / seconds,
        flops_per_step=flops,
        achieved_gflops=achieved,
        matmul_peak_gflops=peak_gflops,
        peak_fraction=None if achieved is None else achieved / peak_gflops,
        # the step's matmul shapes timed alone (mlp only): what the kernels reach there
        matmul_ceiling_gflops=ceiling,
        ceiling_peak_fraction=None if ceiling is None else ceiling / peak_gflops,
        ceiling_fraction=None if ceiling is None or achieved is None else achieved / ceiling,
    )
    return result


def depth_sweep(
    depths: tuple[int, ...] = (2, 4, 8, 16), local_loss: str = "predsim", **kwargs
) -> list[dict[str, Any]]:
    """MLP memory and time per depth, local learning vs backprop (DESIGN.md).

    Args:
      depths: numbers of dense blocks.
      local_loss: the local loss compared with `backprop`.
      **kwargs: passed to `benchmark` (width, batch, steps, ...).

    Returns:
      One row per (depth, loss): `depth`, `loss`, `ms_per_step`, `temp_bytes`,
      `argument_bytes`, `compile_seconds`.
    """
    rows = []
    for depth in depths:
        for loss in (local_loss, "backprop"):
            r = benchmark(model_name="mlp", loss=loss, depth=depth, **kwargs)
            kwargs.setdefault("peak_gflops", r["matmul_peak_gflops"])
            rows.append(
                {
                    k: r[k]
                    for k in (
                        "depth",
                        "loss",
                        "ms_per_step",
                        "temp_bytes",
                        "argument_bytes",
                        "compile_seconds",
                    )
                }
            )
    return rows
