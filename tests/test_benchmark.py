"""experiments/benchmark.py: tiny runs print valid JSON with the documented keys; perf.flops
counts against hand counts and against XLA's own count (`cost_analysis()`)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from localjax.blocks import LocalResConv
from localjax.heads import HeadConfig, decoder_pool_geometry
from localjax.models import build_model
from localjax.models.mlp import network
from localjax.perf.flops import dense_matmuls, model_flops
from localjax.perf.matmul_timing import matmul_ceiling_gflops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = {
    "ms_per_step",
    "compile_seconds",
    "examples_per_s",
    "flops_per_step",
    "achieved_gflops",
    "matmul_peak_gflops",
    "temp_bytes",
    "argument_bytes",
}
TINY = ["--num_hidden=16", "--batch_size=8", "--steps=2", "--warmup=1", "--peak_size=64"]


def _run(*flags):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", *TINY, *flags, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_single_run_prints_json_with_keys():
    r = _run("--model=mlp", "--depth=1", "--loss=predsim")
    assert KEYS <= r.keys()
    for key in KEYS:
        assert isinstance(r[key], (int, float)) and r[key] > 0, (key, r[key])
    assert r["flops_per_step"] == model_flops(
        build_model("mlp", 10, "predsim", num_layers=1, num_hidden=16), 8, (28, 28, 1)
    )
    assert r["matmul_ceiling_gflops"] > 0
    assert r["ceiling_fraction"] == pytest.approx(r["achieved_gflops"] / r["matmul_ceiling_gflops"])


def test_a_bad_flag_value_stops_with_one_line():
    res = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", *TINY, "--model=resnet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unknown model 'resnet'; choose one of"), res.stderr


def test_depth_sweep_prints_rows():
    r = _run("--sweep=depth", "--sweep_depths=1,2", "--loss=pred")
    rows = r["rows"]
    assert [(row["depth"], row["loss"]) for row in rows] == [
        (1, "pred"),
        (1, "backprop"),
        (2, "pred"),
        (2, "backprop"),
    ]
    for row in rows:
        assert {"depth", "loss", "ms_per_step", "temp_bytes"} <= row.keys()


@pytest.mark.parametrize("loss", ["predsim", "backprop"])
def test_model_flops_by_hand(loss):
    """MLP 1 block, width 16, batch 8, 28x28x1 input, 10 classes (METHOD.md local heads)."""
    b, d_in, d, k = 8, 784, 16, 10
    block = 2 * (2 * b * d_in * d)  # forward + weight grad (no grad into the input)
    if loss == "predsim":
        heads = 3 * 2 * b * d * d + 3 * 2 * b * b * d + 2 * b * b * k + 3 * 2 * b * d * k
        output = 2 * (2 * b * d * k)  # cut: no input gradient
    else:
        heads = 0
        output = 3 * (2 * b * d * k)
    model = build_model("mlp", k, loss, num_layers=1, num_hidden=d)
    assert model_flops(model, b, (28, 28, 1)) == block + heads + output


@pytest.mark.parametrize(
    "loss,kwargs",
    [
        ("predsim", {}),
        ("pred", {}),
        ("sim", {}),
        ("backprop", {}),
        ("predsim", {"bio": True}),
        ("predsim", {"detach": False}),
    ],
)
def test_dense_matmuls_are_the_counted_flops(loss, kwargs):
    """The listed products are exactly what model_flops counts, shape by shape."""
    model = build_model("mlp", 10, loss, num_layers=2, num_hidden=32, **kwargs)
    ops = dense_matmuls(model, 8, (28, 28, 1))
    assert sum(2 * m * k * n for _, m, k, n, _ in ops) == model_flops(model, 8, (28, 28, 1))
    # a weight gradient contracts over the batch; forward products have M = batch
    for role, m, k, _, layout in ops:
        if role.endswith("weight grad"):
            assert (k, layout) == (8, "tn"), role
        if role.endswith("forward"):
            assert (m, layout) == (8, "nn"), role


def test_dense_matmuls_refuses_a_vgg():
    with pytest.raises(TypeError, match="VGG"):
        dense_matmuls(build_model("vgg8b", 10, "predsim"), 8, (28, 28, 1))


def _xla_forward_flops(model, batch, shape):
    """XLA's own count (`cost_analysis()`) of the training forward pass (blocks, heads,
    output layer), compiled from abstract shapes (nothing runs)."""
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    variables = jax.eval_shape(lambda x, y: model.init({"params": jax.random.key(0)}, x, y), x, y)

    def forward(v, x, y):
        return model.apply(
            v, x, y, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
        )[0]

    cost = jax.jit(forward).lower(variables, x, y).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


@pytest.mark.parametrize(
    "name, loss, kwargs",
    [
        ("vgg8b", "predsim", dict(feat_mult=1 / 4, num_hidden=64, dim_in_decoder=256)),
        ("resnet18", "predsim", dict(feat_mult=1 / 4)),  # BasicBlock, projections, heads
        ("resnet18", "predsim", dict(feat_mult=1 / 4, pre_act=True, no_batch_norm=True)),
        ("resnet50", "backprop", dict(feat_mult=1 / 2)),  # Bottleneck
        ("wresnet16-4", "predsim", dict(feat_mult=1 / 2)),  # wide_basic, conv shortcut
    ],
)
def test_model_flops_of_the_forward_pass_agree_with_xla(name, loss, kwargs):
    """The counted forward FLOPs (convs with only the taps inside the input, as XLA
    counts them; dense layers; local heads; projection shortcuts) are XLA's count less
    its elementwise work (BatchNorm, nonlinearities, pooling, the similarity's
    normalisation), which is a few percent at these widths (measured 1-3%; resnet50 at
    1/2 width, with its 1x1 convolutions, 3.3%)."""
    model = build_model(name, 10, loss, **kwargs)
    counted = model_flops(model, 4, (32, 32, 3), forward_only=True, count_padding=False)
    xla = _xla_forward_flops(model, 4, (32, 32, 3))
    assert 0.95 * xla <= counted <= xla, (counted, xla)
    # the usual count (every tap, padding included) is the larger one for padded convs
    assert model_flops(model, 4, (32, 32, 3), forward_only=True) > counted


@pytest.mark.parametrize("loss", ["predsim", "backprop"])
def test_model_flops_of_a_residual_unit_by_hand(loss):
    """A stem and one strided BasicBlock unit with a projection shortcut (the blocks of
    `models.resnet`), batch 2, 8x8x3 input, term by term."""
    b, k = 2, 10
    head = None if loss == "backprop" else HeadConfig(loss, k, dim_in_decoder=64)
    layers = [
        LocalResConv(4, head=head, name="conv1"),
        LocalResConv(8, head=head, stride=2, keep_input=True, name="u_conv1"),
        LocalResConv(8, head=head, shortcut="conv_bn", shortcut_stride=2, name="u_conv2"),
    ]
    model = network(layers, k, head, detach=True, dtype=jnp.float32)

    def conv(hw, c_in, c_out):  # 3x3, every tap (padding included)
        return 2 * b * hw * hw * 9 * c_in * c_out

    def heads(hw, c):
        if head is None:
            return 0
        _, _, (oh, ow) = decoder_pool_geometry(c, hw, hw, 64)
        sim = 3 * conv(hw, c, c) + 3 * 2 * b * b * c + 2 * b * b * k
        return sim + 3 * 2 * b * c * oh * ow * k

    grad = 3 if head is None else 2  # input gradients flow only without cuts
    expected = (
        2 * conv(8, 3, 4) + heads(8, 4)  # no input gradient into the image
        + grad * conv(4, 4, 8) + heads(4, 8)  # stride 2: 8x8 -> 4x4
        + grad * conv(4, 8, 8) + heads(4, 8)
        + grad * 2 * b * 4 * 4 * 4 * 8  # projection: 1x1, stride 2, 4 -> 8 channels
        + grad * 2 * b * (4 * 4 * 8) * k  # output layer on the flattened 4x4x8
    )  # fmt: skip
    assert model_flops(model, b, (8, 8, 3)) == expected


def test_matmul_ceiling_checks_and_measures():
    g = matmul_ceiling_gflops([("a", 16, 32, 8, "nt"), ("b", 32, 16, 8, "tn")], reps=2, calls=1)
    assert g > 0
    with pytest.raises(ValueError, match="layout"):
        matmul_ceiling_gflops([("a", 4, 4, 4, "tt")])
    with pytest.raises(ValueError, match="at least one"):
        matmul_ceiling_gflops([])
