"""Local losses against a NumPy re-implementation of the reference (METHOD.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localjax import losses


def np_similarity(z):
    z = np.asarray(z, np.float64)
    if z.ndim == 4 and z.shape[3] > 3 and z.shape[1] > 1:
        z = z.reshape(z.shape[0], -1, z.shape[3]).std(axis=1, ddof=1)  # over H*W
    else:
        z = z.reshape(z.shape[0], -1)
    zc = z - z.mean(axis=1, keepdims=True)
    zn = zc / (1e-8 + np.sqrt((zc**2).sum(axis=1, keepdims=True)))
    return np.clip(zn @ zn.T, -1, 1)


def np_log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


SHAPES = [
    (8, 16),  # dense
    (1, 5),  # batch of 1
    (6, 4, 4, 8),  # feature map, C > 3 and H > 1: per-channel std
    (6, 4, 4, 3),  # C <= 3: flattened
    (6, 1, 1, 16),  # H == 1: flattened
]


@pytest.mark.parametrize("shape", SHAPES)
def test_similarity_matrix_matches_numpy(shape):
    z = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = jax.jit(losses.similarity_matrix)(z)
    assert got.shape == (shape[0], shape[0])
    np.testing.assert_allclose(got, np_similarity(z), atol=1e-5)


def test_similarity_constant_rows_are_zero_not_nan():
    z = np.ones((4, 10), np.float32)
    z[1] = np.arange(10)
    s = np.asarray(losses.similarity_matrix(z))
    assert np.all(np.isfinite(s))
    # centred constant rows are zero vectors: no similarity to anything
    np.testing.assert_allclose(s[0], 0.0)
    np.testing.assert_allclose(s[1, 1], 1.0, rtol=1e-6)


def test_feature_map_rule_reduces_each_channel_to_its_spatial_std():
    z = np.random.default_rng(1).normal(size=(3, 2, 3, 5)).astype(np.float32)
    per_channel = z.reshape(3, 6, 5).std(axis=1, ddof=1)  # [B, C]
    np.testing.assert_allclose(losses.similarity_matrix(z), np_similarity(per_channel), atol=1e-5)
    # flattening instead of the std rule gives a different matrix
    assert not np.allclose(losses.similarity_matrix(z), np_similarity(z.reshape(3, -1)), atol=1e-3)


@pytest.mark.parametrize("shape", [(8, 16), (8, 4, 4, 8), (1, 6)])
def test_sim_loss_matches_numpy(shape):
    rng = np.random.default_rng(2)
    z = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, 4, size=shape[0])
    onehot = np.eye(4, dtype=np.float32)[labels]
    want = np.mean((np_similarity(z) - np_similarity(onehot)) ** 2)
    got = jax.jit(losses.sim_loss)(z, onehot)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_sim_loss_gradient_does_not_reach_targets():
    z = jnp.ones((4, 3)) * jnp.arange(3.0)
    t = jax.random.normal(jax.random.key(0), (4, 5))
    g = jax.grad(lambda t: losses.sim_loss(z + jnp.arange(4.0)[:, None], t))(t)
    np.testing.assert_array_equal(g, 0.0)


def test_pred_loss_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(7, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, size=7)
    want = -np.mean(np_log_softmax(logits.astype(np.float64))[np.arange(7), labels])
    np.testing.assert_allclose(jax.jit(losses.pred_loss)(logits, labels), want, rtol=1e-5)


def test_predsim_and_bce():
    np.testing.assert_allclose(losses.predsim_loss(2.0, 1.0, beta=0.99), 0.01 * 2 + 0.99)
    x = np.array([[0.5, -2.0], [3.0, 0.0]], np.float32)
    t = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    want = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    np.testing.assert_allclose(losses.bce_loss(x, t), want, rtol=1e-5)
    np.testing.assert_array_equal(
        losses.bio_pred_targets(jnp.array([[0.3, -0.1, 0.0]])), [[1.0, 0.0, 0.0]]
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: losses.similarity_matrix(jnp.ones(5)), "batch axis"),
        (lambda: losses.sim_loss(jnp.ones((4, 3)), jnp.ones((5, 2))), "batch 4"),
        (lambda: losses.pred_loss(jnp.ones((4, 3)), jnp.ones((4, 2), jnp.int32)), "labels"),
        (lambda: losses.predsim_loss(1.0, 1.0, beta=1.5), "beta"),
        (lambda: losses.bce_loss(jnp.ones((2, 3)), jnp.ones((2, 4))), "same shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
