r"""Speed and memory benchmark of the fused local-learning step (docs/performance.md).

Usage::

    python -m experiments.benchmark --model=mlp --loss=predsim --batch_size=128 --json
    python -m experiments.benchmark --model=vgg8b --loss=predsim --dim_in_decoder=1024 \
        --steps=3 --warmup=1
    python -m experiments.benchmark --sweep=depth --json       # MLP 2/4/8/16 blocks
    python -m experiments.benchmark --pipeline_stages=2 --depth=4 --json   # docs/pipeline.md
    python -m experiments.benchmark --model=resnet18 --dataset=cifar10 --compile_only --json

A thin wrapper of `localjax.perf.benchmark` (flags and printing). For one configuration it
compiles the real train step (with the dataset's augmentation as training runs it, on
uint8 images held on the device), then reports: compile seconds, the median step time over
`--steps` timed steps after `--warmup` untimed ones, examples/s, model FLOPs per step (matmuls and
convolutions counted from the architecture, see `model_flops`) beside XLA's own count
(`cost_analysis()`), the achieved GFLOP/s, the machine's matmul peak measured in the
same run (median of `--peak_size`² matmuls in `--dtype`), their ratio, and the compiled
step's memory (`memory_analysis()`: temp and argument bytes).

`--compile_only` stops after compiling: memory and parameter counts, no timing (the
timing fields are null). `--json` prints one JSON object as the last line. `--sweep=depth`
runs MLPs of 2, 4, 8 and 16 blocks, local (`--loss`, default predsim) and backprop, and
with `--json` prints `{"rows": [...]}` last. Nothing here is CPU-specific: on GPU/TPU
pass `--dtype=bfloat16` for bf16 compute. A bad flag value (unknown model, dataset, dtype)
ends with one `error:` line; any other exception keeps its traceback.
"""

from __future__ import annotations

import json
import sys

import jax
from absl import app, flags

from localjax.errors import ConfigError, DatasetError
from localjax.models import COMPUTE_DTYPES, FINAL_POOLS
from localjax.perf.benchmark import benchmark, depth_sweep
from localjax.perf.pipeline_timing import benchmark_pipeline

__all__ = ["main"]

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "mlp", "mlp, a VGG (vgg8b, ...), resnet18..resnet152 or wresnet<d>-<k>[a]."
)
flags.DEFINE_integer("depth", None, "Dense blocks (default: 3 for mlp, 1 after a VGG stack).")
flags.DEFINE_integer("num_hidden", 1024, "Units per dense block (width).")
flags.DEFINE_float("feat_mult", 1.0, "VGG channel multiplier.")
flags.DEFINE_enum(
    "final_pool",
    "reference",
    list(FINAL_POOLS),
    "(Wide) ResNets: the reference's final pool, flattened, or global (mean over H, W).",
)
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
flags.DEFINE_enum("dtype", "float32", list(COMPUTE_DTYPES), "Compute dtype (bf16 for GPU/TPU).")
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
flags.DEFINE_bool(
    "compile_only", False, "Compile and report memory and parameters; run no step (no timing)."
)
flags.DEFINE_bool("json", False, "Print one JSON object as the last line.")
flags.DEFINE_integer(
    "pipeline_stages",
    1,
    "S > 1: time the pipelined step (docs/pipeline.md) on every device as S stages: the "
    "tick, each stage alone and the bubble fraction.",
)
flags.DEFINE_list("pipeline_cuts", [], "First block of each stage after the first; [] = FLOPs.")


def _flops_lines(r: dict, xla: float | None) -> str:
    xla_text = "n/a" if xla is None else f"{xla / 1e9:.3f}"
    if r["flops_per_step"] is None:  # blocks model_flops cannot count (a LocalBlock)
        return f"  model FLOPs    not counted (XLA cost analysis: {xla_text} GFLOP/step)\n"
    return (
        f"  model FLOPs    {r['flops_per_step'] / 1e9:.3f} GFLOP/step "
        f"(XLA cost analysis: {xla_text})\n"
        f"  achieved       {r['achieved_gflops']:.1f} GFLOP/s = "
        f"{100 * r['peak_fraction']:.1f} % of the matmul peak "
        f"{r['matmul_peak_gflops']:.1f} GFLOP/s\n"
    )


def _fmt_bytes(x: int | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f} MiB"


def main(argv):
    """Runs the benchmark or the depth sweep chosen by the flags; a bad flag value exits
    with one `error:` line instead of a traceback."""
    del argv
    try:
        _run()
    except (ConfigError, DatasetError) as e:
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
    if FLAGS.pipeline_stages > 1:
        _run_pipeline(common)
        return
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
        compile_only=FLAGS.compile_only,
        final_pool=FLAGS.final_pool,
        **common,
    )
    xla = r["xla_flops_per_step"]
    if FLAGS.compile_only:
        print(
            f"{r['model']} {r['loss']} batch {r['batch_size']} {r['dtype']} ({r['impl']}), "
            f"compiled only\n"
            f"  compile        {r['compile_seconds']:.2f} s\n"
            f"  memory         temp {_fmt_bytes(r['temp_bytes'])}, "
            f"arguments {_fmt_bytes(r['argument_bytes'])}, "
            f"output {_fmt_bytes(r['output_bytes'])}\n"
            f"  parameters     {r['params_inference']:,} inference, {r['params_total']:,} with "
            "local heads",
            flush=True,
        )
        if FLAGS.json:
            print(json.dumps(r))
        return
    print(
        f"{r['model']} depth {r['depth']} width {r['num_hidden']} {r['loss']} "
        f"batch {r['batch_size']} {r['dtype']} ({r['impl']}, {r['scan_steps']} step/dispatch)\n"
        f"  compile        {r['compile_seconds']:.2f} s\n"
        f"  step           {r['ms_per_step']:.2f} ms (median), "
        f"{r['examples_per_s']:.0f} examples/s\n"
        + _flops_lines(r, xla)
        + (
            ""
            if r["matmul_ceiling_gflops"] is None
            else f"  same shapes    the step's matmuls alone reach "
            f"{r['matmul_ceiling_gflops']:.1f} GFLOP/s = "
            f"{100 * r['ceiling_peak_fraction']:.1f} % of the peak; the step runs at "
            f"{100 * r['ceiling_fraction']:.1f} % of that\n"
        )
        + f"  memory         temp {_fmt_bytes(r['temp_bytes'])}, "
        f"arguments {_fmt_bytes(r['argument_bytes'])}\n"
        f"  parameters     {r['params_inference']:,} inference, {r['params_total']:,} with "
        "local heads",
        flush=True,
    )
    if FLAGS.json:
        print(json.dumps(r))


def _run_pipeline(common: dict) -> None:
    """--pipeline_stages=S: `benchmark_pipeline` printed (and as JSON with --json)."""
    r = benchmark_pipeline(
        model_name=FLAGS.model,
        loss=FLAGS.loss,
        num_stages=FLAGS.pipeline_stages,
        cuts=tuple(int(c) for c in FLAGS.pipeline_cuts) or None,
        depth=FLAGS.depth,
        feat_mult=FLAGS.feat_mult,
        dim_in_decoder=FLAGS.dim_in_decoder,
        final_pool=FLAGS.final_pool,
        **{k: common[k] for k in ("num_hidden", "batch_size", "steps", "warmup", "dtype")},
        **{k: common[k] for k in ("bio", "nonlin", "dropout", "dataset", "conv_wgrad")},
    )
    stages = " | ".join(
        f"blocks {b[0]}-{b[-1]}: {ms:.2f} ms, {100 * f:.0f}% FLOPs"
        for b, ms, f in zip(r["stage_blocks"], r["stage_ms"], r["stage_flop_shares"], strict=True)
    )
    print(
        f"{r['model']} {r['loss']} batch {r['batch_size']} {r['dtype']}, pipelined over "
        f"{r['num_stages']} stages x {r['data_devices']} data devices (cuts {r['cuts']})\n"
        f"  compile        {r['compile_seconds']:.2f} s\n"
        f"  tick           {r['tick_ms']:.2f} ms (median), {r['examples_per_s']:.0f} examples/s\n"
        f"  stages alone   {stages}\n"
        f"  bubble         {100 * r['bubble_fraction']:.1f} % of stage time over an epoch of "
        f"{r['batches_per_epoch']} batches (fill/drain {100 * r['fill_drain_fraction']:.1f} %, "
        f"imbalance {100 * r['imbalance_fraction']:.1f} %)\n"
        f"  state          {_fmt_bytes(r['state_bytes_per_device'])} per device, padding "
        f"{100 * r['padding_waste']:.1f} %; activations sent "
        f"{_fmt_bytes(r['activation_bytes_per_tick'])} per tick",
        flush=True,
    )
    if FLAGS.json:
        print(json.dumps(r))


if __name__ == "__main__":
    app.run(main)
