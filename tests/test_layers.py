"""Blocks and local heads: the pooling rule, initialisation, BatchNorm, dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localjax import heads as layers
from localjax.blocks import LocalConv, LocalDense
from localjax.heads import HeadConfig, decoder_pool_geometry

# METHOD.md's worked values for vgg8b on 28 px with dim_in_decoder 1024:
# (C, H) -> kernel, padding, output
WORKED = [
    ((128, 28), (16, 8), (8, 4), (2, 4)),
    ((256, 28), (16, 16), (8, 8), (2, 2)),
    ((256, 14), (8, 8), (4, 4), (2, 2)),
    ((512, 14), (16, 8), (8, 4), (1, 2)),
    ((512, 7), (8, 4), (4, 2), (1, 2)),
]


@pytest.mark.parametrize("ch, kernel, pad, out", WORKED)
def test_pool_rule_worked_values(ch, kernel, pad, out):
    c, h = ch
    assert decoder_pool_geometry(c, h, h, 1024) == (kernel, pad, out)


def test_pool_rule_no_pooling_when_small_enough():
    assert decoder_pool_geometry(4, 4, 4, 4096) == ((1, 1), (0, 0), (4, 4))


def np_avg_pool_count_pad(x, kernel, pad):
    """PyTorch AvgPool2d(kernel, stride=kernel, padding=pad), count_include_pad=True."""
    b, h, w, c = x.shape
    (kh, kw), (ph, pw) = kernel, pad
    xp = np.zeros((b, h + 2 * ph, w + 2 * pw, c))
    xp[:, ph : ph + h, pw : pw + w] = x
    oh, ow = (h + 2 * ph - kh) // kh + 1, (w + 2 * pw - kw) // kw + 1
    out = np.zeros((b, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = xp[:, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].sum((1, 2))
    return out / (kh * kw)


def test_decoder_pool_matches_torch_semantics():
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 8)).astype(np.float32)
    kernel, pad, out = decoder_pool_geometry(8, 28, 28, 64)
    got = layers._decoder_pool(jnp.asarray(x), 64)
    assert got.shape[1:3] == out
    np.testing.assert_allclose(got, np_avg_pool_count_pad(x, kernel, pad), atol=1e-5)


def init(module, x, labels=None):
    return module.init({"params": jax.random.key(0)}, x, labels)


def test_torch_default_init_bounds_and_zero_decoder():
    head = HeadConfig("predsim", num_classes=10)
    v = init(LocalDense(256, head=head), jnp.zeros((2, 100)), jnp.zeros(2, jnp.int32))
    p = v["params"]
    bound = 1 / np.sqrt(100)
    kernel = np.asarray(p["dense"]["kernel"])
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert np.abs(p["dense"]["bias"]).max() <= bound
    np.testing.assert_array_equal(p["head"]["decoder"]["kernel"], 0.0)
    assert "bias" not in p["head"]["sim_proj"]  # the similarity projection has no bias
    np.testing.assert_array_equal(p["bn"]["scale"], 1.0)


def test_batchnorm_momentum_and_eps_follow_pytorch():
    block = LocalDense(4)
    x = jax.random.normal(jax.random.key(1), (16, 3)) + 2.0
    v = init(block, x)
    (out, _), upd = block.apply(v, x, train=True, mutable=["batch_stats"])
    h = x @ v["params"]["dense"]["kernel"] + v["params"]["dense"]["bias"]
    np.testing.assert_allclose(upd["batch_stats"]["bn"]["mean"], 0.1 * h.mean(0), rtol=1e-5)
    normalised = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
    np.testing.assert_allclose(out, nn.relu(normalised), atol=1e-5)


def test_conv_dropout_drops_whole_feature_maps():
    x = jax.random.normal(jax.random.key(2), (4, 6, 6, 3))
    v = init(LocalConv(16, dropout=0.5), x)
    (out, _), _ = LocalConv(16, dropout=0.5).apply(
        v, x, train=True, rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"]
    )
    (h, _), _ = LocalConv(16).apply(v, x, train=True, mutable=["batch_stats"])
    out, h = np.asarray(out).reshape(4, 36, 16), np.asarray(h).reshape(4, 36, 16)
    dropped = np.all(out == 0, axis=1) & np.any(h != 0, axis=1)  # [B, C]
    assert 0 < dropped.sum() < dropped.size
    kept = ~np.all(out == 0, axis=1)
    # every kept map is the whole map scaled by 1 / (1 - rate)
    np.testing.assert_allclose(
        out.transpose(0, 2, 1)[kept], 2 * h.transpose(0, 2, 1)[kept], rtol=1e-5, atol=1e-6
    )


def test_local_losses_use_output_before_dropout():
    head = HeadConfig("pred", num_classes=3)
    block = LocalDense(8, head=head, dropout=0.9)
    x = jax.random.normal(jax.random.key(4), (6, 5))
    y = jnp.array([0, 1, 2, 0, 1, 2])
    v = init(block, x, y)
    outs = [
        block.apply(
            v, x, y, train=True, rngs={"dropout": jax.random.key(k)}, mutable=["batch_stats"]
        )[0]
        for k in (5, 6)
    ]
    assert not np.allclose(outs[0][0], outs[1][0])  # dropout changed the output
    np.testing.assert_allclose(outs[0][1]["loss"], outs[1][1]["loss"])  # not the loss


def test_no_labels_no_heads_evaluated():
    head = HeadConfig("predsim", num_classes=10)
    block = LocalConv(8, head=head)
    x = jnp.ones((2, 8, 8, 1))
    v = init(block, x, jnp.zeros(2, jnp.int32))
    out, local = block.apply(v, x)
    assert local is None and out.shape == (2, 8, 8, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss="predsimm"), "unknown local loss"),
        (dict(unsup="contrastive"), "unknown unsupervised"),
        (dict(beta=2.0), "beta"),
        (dict(num_classes=1), "num_classes"),
    ],
)
def test_head_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadConfig(**kwargs)


def test_unknown_nonlinearity():
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'"):
        init(LocalDense(4, nonlin="gelu"), jnp.ones((2, 3)))


def test_labels_outside_the_decoder_width_are_refused():
    head = HeadConfig("predsim", num_classes=3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        init(LocalDense(4, head=head), jnp.ones((2, 5)), jnp.array([0, 3]))


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 3, 2)])
def test_torch_batchnorm_keeps_pytorchs_unbiased_running_variance(shape):
    """PyTorch (the reference) averages var·n/(n−1) into running_var, Flax the biased var;
    the normalisation itself uses the biased batch variance in both."""
    from localjax.torch_defaults import TorchBatchNorm

    x = jax.random.normal(jax.random.key(0), shape) * 2.0 + 1.0
    flat = np.asarray(x).reshape(-1, shape[-1])
    for unbiased, ddof in ((True, 1), (False, 0)):
        bn = TorchBatchNorm(momentum=0.9, unbiased_running_var=unbiased)
        variables = bn.init(jax.random.key(1), x, use_running_average=False)
        y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        stats = updates["batch_stats"]
        np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * flat.var(0, ddof=ddof), rtol=1e-5)
        np.testing.assert_allclose(stats["mean"], 0.1 * flat.mean(0), rtol=1e-5, atol=1e-7)
        want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
        np.testing.assert_allclose(np.asarray(y).reshape(want.shape), want, atol=2e-5)
        # evaluation reads the running averages
        y_eval = bn.apply({**variables, "batch_stats": stats}, x, use_running_average=True)
        want_eval = (flat - stats["mean"]) / np.sqrt(stats["var"] + 1e-5)
        np.testing.assert_allclose(np.asarray(y_eval).reshape(want.shape), want_eval, atol=2e-5)
