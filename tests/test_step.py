"""The per-block fused step equals the plain single-gradient step, and stays flat in memory."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import localjax as lj
from localjax.models import build_model
from localjax.training.optimizer import make_optimizer
from localjax.training.state import create_train_state
from localjax.training.steps import (
    make_multi_step,
    make_reference_train_step,
    make_train_step,
)

B = 8


def _batch(size=8, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.integers(0, 256, (B, size, size, channels), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (B,), dtype=np.int32))
    return images, labels


def _preprocess(images, key):
    x = images.astype(jnp.float32) / 255.0
    return x + 0.1 * jax.random.normal(key, x.shape)  # key-dependent, like augmentation


_INIT_CACHE = {}


def _initial_state(model, tx, images, labels):
    """create_train_state, with the (slow to compile) model init shared between tests."""
    key = repr(model)
    if key not in _INIT_CACHE:
        x0 = _preprocess(images[:2], jax.random.key(0))
        _INIT_CACHE[key] = create_train_state(model, tx, jax.random.key(1), x0, labels[:2])
    state = _INIT_CACHE[key]
    return state.replace(opt_state=tx.init(state.params))


def _run(make, model, tx, steps=3, seed=0, **kw):
    images, labels = _batch(**kw)
    state = _initial_state(model, tx, images, labels)
    step = jax.jit(make(model, tx, preprocess=_preprocess, seed=seed))
    history = []
    for _ in range(steps):
        state, metrics = step(state, images, labels)
        history.append(metrics)
    return state, history


def _assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


MLP = dict(num_layers=3, num_hidden=32, dropout=0.1)
VGG = dict(feat_mult=1 / 32, num_hidden=16, dropout=0.1, dim_in_decoder=32)
CASES = [
    ("mlp", "predsim", MLP),
    ("mlp", "pred", dict(MLP, nonlin="leakyrelu")),
    ("mlp", "sim", MLP),
    ("mlp", "predsim", dict(MLP, bio=True, beta=0.01)),
    ("mlp", "predsim", dict(MLP, detach=False)),  # deep supervision
    ("mlp", "backprop", MLP),
    ("vgg6a", "predsim", VGG),
]


@pytest.mark.parametrize("name, loss, kwargs", CASES)
def test_fused_step_equals_reference(name, loss, kwargs):
    """Params, batch stats, optimizer state and every metric after 3 SGD steps."""
    model = build_model(name, 10, loss, **kwargs)
    tx = optax.sgd(0.05, momentum=0.9)
    size = 8
    fused, m_fused = _run(make_train_step, model, tx, size=size)
    ref, m_ref = _run(make_reference_train_step, model, tx, size=size)
    assert int(fused.step) == int(ref.step) == 3
    _assert_tree_close(fused.params, ref.params)
    _assert_tree_close(fused.batch_stats, ref.batch_stats)
    _assert_tree_close(fused.opt_state, ref.opt_state)
    assert m_fused[-1].keys() == m_ref[-1].keys()
    for a, b in zip(m_fused, m_ref, strict=True):
        _assert_tree_close(a, b)


def test_fused_step_equals_reference_with_adam_exactly():
    """The paper's optimizer on the paper's MLP shape (small width): identical params."""
    model = build_model("mlp", 10, "predsim", num_hidden=32, dropout=0.1, nonlin="leakyrelu")
    tx = make_optimizer(1e-3, (1,), steps_per_epoch=2)
    fused, _ = _run(make_train_step, model, tx, steps=4)
    ref, _ = _run(make_reference_train_step, model, tx, steps=4)
    _assert_tree_close(fused.params, ref.params, rtol=1e-6, atol=1e-7)


def test_comparison_is_sensitive_to_dropout_stream():
    """A different seed (other dropout masks) must change the params: the equality
    above is not vacuous."""
    model = build_model("mlp", 10, "predsim", **MLP)
    tx = optax.sgd(0.05)
    a, _ = _run(make_train_step, model, tx, seed=0)
    b, _ = _run(make_reference_train_step, model, tx, seed=1)
    diff = jax.tree_util.tree_map(lambda u, v: float(jnp.max(jnp.abs(u - v))), a.params, b.params)
    assert max(jax.tree_util.tree_leaves(diff)) > 1e-4


def test_multi_step_equals_repeated_steps():
    model = build_model("mlp", 10, "predsim", **MLP)
    tx = optax.sgd(0.05)
    images, labels = _batch()
    x0 = _preprocess(images[:2], jax.random.key(0))
    state = create_train_state(model, tx, jax.random.key(1), x0, labels[:2])
    step = jax.jit(make_train_step(model, tx, preprocess=_preprocess))
    multi = jax.jit(make_multi_step(model, tx, preprocess=_preprocess))
    s1, total = state, None
    for i in range(3):
        s1, m = step(s1, images[::-1] if i % 2 else images, labels[::-1] if i % 2 else labels)
        total = m if total is None else jax.tree_util.tree_map(jnp.add, total, m)
    stacked_im = jnp.stack([images, images[::-1], images])
    stacked_lb = jnp.stack([labels, labels[::-1], labels])
    s3, m3 = multi(state, stacked_im, stacked_lb)
    assert int(s3.step) == 3
    _assert_tree_close(s3.params, s1.params)
    _assert_tree_close(m3, total, rtol=1e-5, atol=1e-5)


def _temp_bytes(make, loss, depth, width=256, batch=64):
    model = build_model("mlp", 10, loss, num_layers=depth, num_hidden=width)
    return _model_temp_bytes(model, make, batch)


def test_local_step_memory_is_flat_in_depth():
    """DESIGN.md: local learning holds about one block's activations. The reference
    step keeps every block's (it grows), the fused one must not (<= 1.3x)."""
    fused = [_temp_bytes(make_train_step, "predsim", d) for d in (2, 8)]
    ref = [_temp_bytes(make_reference_train_step, "predsim", d) for d in (2, 8)]
    assert fused[1] <= 1.3 * fused[0], fused
    assert ref[1] > 1.5 * ref[0], ref  # the growth the restructure removes


class _DenseUnit(nn.Module):
    """A user's own unit: Dense -> BatchNorm -> relu, to be wrapped in a LocalBlock."""

    features: int

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Dense(self.features)(x.reshape(x.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return nn.relu(h)


def _composed(depth, width=256):
    head = lj.HeadConfig("predsim", num_classes=10)
    blocks = tuple(
        lj.LocalBlock(_DenseUnit(width), head=head, name=f"unit_{i}") for i in range(depth)
    )
    return lj.LocalNetwork(layers=blocks, output=lj.OutputLayer(10, zero_init=True))


def _model_temp_bytes(model, make, batch=64):
    tx = optax.sgd(0.1)
    x = jax.ShapeDtypeStruct((batch, 8, 8, 1), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    state = jax.eval_shape(
        lambda x, y: create_train_state(model, tx, jax.random.key(0), x, y), x, y
    )
    step = jax.jit(make(model, tx), donate_argnums=0)
    return step.lower(state, x, y).compile().memory_analysis().temp_size_in_bytes


def test_a_user_composed_network_gets_the_memory_flat_step():
    """A LocalNetwork of the user's own LocalBlocks takes the per-block step: its compiled
    memory grows from 2 to 16 blocks like the built-in MLP's, not like backprop's."""
    mlp = [
        _model_temp_bytes(
            build_model("mlp", 10, "predsim", num_layers=d, num_hidden=256), make_train_step
        )
        for d in (2, 16)
    ]
    user = [_model_temp_bytes(_composed(d), make_train_step) for d in (2, 16)]
    backprop = [
        _model_temp_bytes(
            build_model("mlp", 10, "backprop", num_layers=d, num_hidden=256), make_train_step
        )
        for d in (2, 16)
    ]
    assert user[1] / user[0] <= 1.1 * mlp[1] / mlp[0], (user, mlp)
    assert user[1] <= 1.3 * user[0], user
    assert backprop[1] > 3 * backprop[0], backprop  # what a plain step of 16 blocks costs
    # and the per-block step computes what the plain single-gradient step computes
    model, tx = _composed(3, width=32), optax.sgd(0.05)
    fused, _ = _run(make_train_step, model, tx, steps=2)
    ref, _ = _run(make_reference_train_step, model, tx, steps=2)
    _assert_tree_close(fused.params, ref.params, rtol=1e-6, atol=1e-7)


def test_conv_shifted_wgrad_matches_xla_gradients():
    from localjax.ops.conv_wgrad import conv_shifted_wgrad

    x = jax.random.normal(jax.random.key(0), (3, 6, 5, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 7))
    dn = ("NHWC", "HWIO", "NHWC")

    def xla_conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)

    def grads(conv):
        return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), (0, 1)))(x, w)

    (va, ga), (vb, gb) = grads(conv_shifted_wgrad), grads(xla_conv)
    np.testing.assert_allclose(va, vb, rtol=1e-6)
    _assert_tree_close(ga, gb, rtol=1e-5, atol=1e-5)


def test_shifted_wgrad_convs_step_equals_plain_step():
    from localjax.ops.conv_wgrad import shifted_wgrad_convs

    model = build_model("vgg6a", 10, "predsim", **VGG)
    tx = optax.sgd(0.05)
    plain, m_plain = _run(make_train_step, model, tx, steps=2)
    with shifted_wgrad_convs():
        fast, m_fast = _run(make_train_step, model, tx, steps=2)
    _assert_tree_close(fast.params, plain.params, rtol=1e-5, atol=1e-6)
    _assert_tree_close(m_fast[-1], m_plain[-1], rtol=1e-5, atol=1e-6)
