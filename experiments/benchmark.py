r"""Speed and memory benchmark of the fused local-learning step (issue 6; DESIGN.md
"Memory is part of the point").

Usage::

    python -m experiments.benchmark --model=mlp --loss=predsim --batch_size=128 --json
    python -m experiments.benchmark --model=vgg8b --loss=predsim --dim_in_decoder=1024 \
        --steps=3 --warmup=1
    python -m experiments.benchmark --sweep=depth --json       # MLP 2/4/8/16 blocks

For one configuration it compiles the real train step of `localjax.step` (with the
Fashion-MNIST augmentation as `localjax.train` runs it, on uint8 images held on the
device), then reports: compile seconds, the median step time over `--steps` timed
steps after `--warmup` untimed ones, examples/s, model FLOPs per step (matmuls and
convolutions counted from the architecture, see `model_flops`) beside XLA's own count
(`cost_analysis()`), the achieved GFLOP/s, the machine's matmul peak measured in the
same run (median of `--peak_size`² matmuls in `--dtype`), their ratio, and the compiled
step's memory (`memory_analysis()`: temp and argument bytes).

`--json` prints one JSON object as the last line. `--sweep=depth` runs MLPs of 2, 4, 8
and 16 blocks, local (`--loss`, default predsim) and backprop, and with `--json` prints
`{"rows": [...]}` last. Nothing here is CPU-specific: on GPU/TPU pass `--dtype=bfloat16`
for bf16 compute.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from localjax import augment as augment_lib
from localjax import data as data_lib
from localjax.flops import dense_matmuls, model_flops
from localjax.matmul_timing import matmul_ceiling_gflops, matmul_peak_gflops
from localjax.models import build_model
from localjax.step import (
    conv_wgrad_context,
    create_train_state,
    make_multi_step,
    make_optimizer,
    make_reference_train_step,
    make_train_step,
)

__all__ = [
    "model_flops",
    "matmul_peak_gflops",
    "matmul_ceiling_gflops",
    "benchmark",
    "depth_sweep",
    "main",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "mlp", "mlp or a VGG config name (vgg8b, ...).")
flags.DEFINE_integer("depth", None, "Dense blocks (default: 3 for mlp, 1 after a VGG stack).")
flags.DEFINE_integer("num_hidden", 1024, "Units per dense block (width).")
flags.DEFINE_float("feat_mult", 1.0, "VGG channel multiplier.")
flags.DEFINE_enum("loss", "predsim", ["pred", "sim", "predsim", "backprop"], "Training loss.")
flags.DEFINE_bool("bio", False, "The backprop-free bio variant of the heads.")
flags.DEFINE_bool("detach", True, "Cut the graph between blocks (False: deep supervision).")
flags.DEFINE_integer("dim_in_decoder", 4096, "Largest input of a conv block's pred decoder.")
flags.DEFINE_string("nonlin", "relu", "Block nonlinearity (relu or leakyrelu).")
flags.DEFINE_float("dropout", 0.0, "Dropout rate.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset spec: image shape and augmentation.")
flags.DEFINE_integer("batch_size", 128, "Examples per step.")
flags.DEFINE_integer("steps", 20, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Compute dtype (bf16 for GPU/TPU).")
flags.DEFINE_enum(
    "impl", "fused", ["fused", "reference"], "fused: make_train_step; reference: the plain one."
)
flags.DEFINE_enum(
    "conv_wgrad",
    "auto",
    ["auto", "xla", "shifted"],
    "Conv weight gradient: XLA's, shifted matmuls, or auto (shifted on CPU, as training).",
)
flags.DEFINE_integer("scan_steps", 1, "Steps per dispatch (make_multi_step) when > 1.")
flags.DEFINE_integer("peak_size", 2048, "Side of the square matmuls timing the peak.")
flags.DEFINE_enum("sweep", "none", ["none", "depth"], "depth: MLP 2/4/8/16 blocks, local+bp.")
flags.DEFINE_list("sweep_depths", ["2", "4", "8", "16"], "Depths of --sweep=depth.")
flags.DEFINE_bool("json", False, "Print one JSON object as the last line.")


# ---------------------------------------------------------------- measurements
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
) -> dict[str, Any]:
    """Compiles and times one training step; see the module docstring.

    Args:
      model_name, loss, depth, num_hidden, feat_mult, bio, detach, dim_in_decoder,
        nonlin, dropout: passed to `build_model` (depth = `num_layers`).
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
        `localjax.step.shifted_wgrad_convs`: conv weight gradients as shifted matmuls),
        or `auto` (shifted on the CPU backend, as `config.conv_wgrad="auto"` trains).

    Returns:
      A dict with `ms_per_step`, `compile_seconds`, `examples_per_s`, `flops_per_step`,
      `xla_flops_per_step`, `achieved_gflops`, `matmul_peak_gflops`, `peak_fraction`,
      `temp_bytes`, `argument_bytes`, `output_bytes` and the configuration.

    Raises:
      ValueError: for unknown model, loss, dtype, dataset or conv_wgrad names, or
        steps < 1.
    """
    if steps < 1 or scan_steps < 1:
        raise ValueError(f"steps and scan_steps must be >= 1; got {steps}, {scan_steps}.")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}.")
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
        dtype=DTYPES[dtype],
    )
    image_shape = (spec.image_size, spec.image_size, spec.channels)
    rng = np.random.default_rng(0)
    n = batch_size * scan_steps
    images = jnp.asarray(rng.integers(0, 256, (n, *image_shape), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, spec.num_classes, (n,), dtype=np.int32))
    tx = make_optimizer(5e-4, (100, 150), steps_per_epoch=400)
    sample = augment_lib.normalize(images[:2], spec)
    state = create_train_state(model, tx, jax.random.key(0), sample, labels[:2])

    def preprocess(im, key):
        return augment_lib.augment(im, key, spec)

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

    for _ in range(warmup):
        state, metrics = compiled(state, images, labels)
    jax.block_until_ready(metrics if warmup else state)
    # the peak's matmuls alternate with the steps, so both see the same machine load
    measure_peak = peak_gflops is None
    if measure_peak:
        a = jax.random.normal(jax.random.key(1), (peak_size, peak_size)).astype(DTYPES[dtype])
        b = jax.random.normal(jax.random.key(2), (peak_size, peak_size)).astype(DTYPES[dtype])
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
    flops = model_flops(model, batch_size, image_shape)
    achieved = flops / seconds / 1e9
    ceiling = None
    if model_name == "mlp":
        ceiling = matmul_ceiling_gflops(
            dense_matmuls(model, batch_size, image_shape), DTYPES[dtype], reps=max(5, steps)
        )
    return {
        "model": model_name,
        "loss": loss,
        "depth": model.num_layers,
        "num_hidden": num_hidden,
        "batch_size": batch_size,
        "dtype": dtype,
        "impl": impl,
        "scan_steps": scan_steps,
        "conv_wgrad": conv_wgrad,
        "backend": jax.default_backend(),
        "ms_per_step": 1e3 * seconds,
        "compile_seconds": compile_seconds,
        "examples_per_s": batch_size / seconds,
        "flops_per_step": flops,
        # XLA's cost analysis counts a scan's body once: it is per step already
        "xla_flops_per_step": xla_flops,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak_gflops,
        "peak_fraction": achieved / peak_gflops,
        # the step's matmul shapes timed alone (mlp only): what the kernels reach there
        "matmul_ceiling_gflops": ceiling,
        "ceiling_peak_fraction": None if ceiling is None else ceiling / peak_gflops,
        "ceiling_fraction": None if ceiling is None else achieved / ceiling,
        "temp_bytes": int(mem.temp_size_in_bytes) if mem else None,
        "argument_bytes": int(mem.argument_size_in_bytes) if mem else None,
        "output_bytes": int(mem.output_size_in_bytes) if mem else None,
    }


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


def _fmt_bytes(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f} MiB"


def main(argv):
    """Runs the benchmark or the depth sweep chosen by the flags; a bad flag value exits
    with one `error:` line instead of a traceback."""
    del argv
    try:
        _run()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _run() -> None:
    common = dict(
        num_hidden=FLAGS.num_hidden,
        batch_size=FLAGS.batch_size,
        steps=FLAGS.steps,
        warmup=FLAGS.warmup,
        dtype=FLAGS.dtype,
        impl=FLAGS.impl,
        scan_steps=FLAGS.scan_steps,
        bio=FLAGS.bio,
        detach=FLAGS.detach,
        nonlin=FLAGS.nonlin,
        dropout=FLAGS.dropout,
        dataset=FLAGS.dataset,
        peak_size=FLAGS.peak_size,
        conv_wgrad=FLAGS.conv_wgrad,
    )
    print(f"backend {jax.default_backend()}, devices {jax.devices()}", flush=True)
    if FLAGS.sweep == "depth":
        local_loss = "predsim" if FLAGS.loss == "backprop" else FLAGS.loss
        depths = tuple(int(d) for d in FLAGS.sweep_depths)
        rows = depth_sweep(depths, local_loss=local_loss, **common)
        print(f"{'depth':>5} {'loss':>9} {'ms/step':>9} {'temp':>12} {'args':>12}")
        for r in rows:
            print(
                f"{r['depth']:>5} {r['loss']:>9} {r['ms_per_step']:>9.2f} "
                f"{_fmt_bytes(r['temp_bytes']):>12} {_fmt_bytes(r['argument_bytes']):>12}"
            )
        if FLAGS.json:
            print(json.dumps({"rows": rows}))
        return
    r = benchmark(
        model_name=FLAGS.model,
        loss=FLAGS.loss,
        depth=FLAGS.depth,
        feat_mult=FLAGS.feat_mult,
        dim_in_decoder=FLAGS.dim_in_decoder,
        **common,
    )
    xla = r["xla_flops_per_step"]
    print(
        f"{r['model']} depth {r['depth']} width {r['num_hidden']} {r['loss']} "
        f"batch {r['batch_size']} {r['dtype']} ({r['impl']}, {r['scan_steps']} step/dispatch)\n"
        f"  compile        {r['compile_seconds']:.2f} s\n"
        f"  step           {r['ms_per_step']:.2f} ms (median), "
        f"{r['examples_per_s']:.0f} examples/s\n"
        f"  model FLOPs    {r['flops_per_step'] / 1e9:.3f} GFLOP/step "
        f"(XLA cost analysis: {'n/a' if xla is None else f'{xla / 1e9:.3f}'})\n"
        f"  achieved       {r['achieved_gflops']:.1f} GFLOP/s = "
        f"{100 * r['peak_fraction']:.1f} % of the matmul peak "
        f"{r['matmul_peak_gflops']:.1f} GFLOP/s\n"
        + (
            ""
            if r["matmul_ceiling_gflops"] is None
            else f"  same shapes    the step's matmuls alone reach "
            f"{r['matmul_ceiling_gflops']:.1f} GFLOP/s = "
            f"{100 * r['ceiling_peak_fraction']:.1f} % of the peak; the step runs at "
            f"{100 * r['ceiling_fraction']:.1f} % of that\n"
        )
        + f"  memory         temp {_fmt_bytes(r['temp_bytes'])}, "
        f"arguments {_fmt_bytes(r['argument_bytes'])}",
        flush=True,
    )
    if FLAGS.json:
        print(json.dumps(r))


if __name__ == "__main__":
    app.run(main)
