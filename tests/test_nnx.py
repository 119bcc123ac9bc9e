"""Flax NNX models built from bridged local-loss blocks match their Linen twins.

The NNX model holds the same Linen blocks through `flax.nnx.bridge` (`localjax.to_nnx`).
Loaded with the Linen model's variables it must give the same logits, the same local
losses, the same gradients of `local_objective`, and after one optimizer step the same
parameters and BatchNorm statistics as the Linen fused step (`make_train_step`).

NNX functions are jitted through `nnx.split`/`nnx.merge` with XLA's backend optimisation
off (compile time dominates on CPU); this changes nothing that is computed.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import localjax as lj

FAST = {"xla_backend_optimization_level": 0}
B, K = 8, 4
TOL = dict(rtol=1e-5, atol=1e-6)


def fast_jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST, **kwargs)


class ConvUnit(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Conv(self.features, (3, 3))(x)
        return nn.relu(nn.BatchNorm(use_running_average=not train)(h))


class DenseUnit(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(self.features)(x.reshape(x.shape[0], -1))  # [B, ...] -> [B, D]
        return nn.relu(nn.BatchNorm(use_running_average=not train)(h))


def pool(z):
    return nn.max_pool(z, (2, 2), strides=(2, 2))


class LinenNet(nn.Module):
    """conv block (feature-map heads) → pool → dense block (vector heads) → output."""

    head: lj.HeadConfig

    @nn.compact
    def __call__(self, x, labels=None, *, train=False):
        layers = [
            lj.LocalBlock(ConvUnit(4), head=self.head, name="conv"),
            pool,
            lj.LocalBlock(DenseUnit(16), head=self.head, name="dense"),
        ]
        h, local = lj.apply_blocks(layers, x, labels, train=train, detach=True)
        return lj.OutputLayer(K, zero_init=True, name="output")(lj.cut(h)), local


class NNXNet(nnx.Module):
    """The same network as an NNX module of bridged blocks."""

    def __init__(self, head: lj.HeadConfig, x, labels, rngs: nnx.Rngs):
        self.conv = lj.to_nnx(lj.LocalBlock(ConvUnit(4), head=head), x, labels, rngs=rngs)
        h, _ = self.conv(x, labels)
        h = pool(h)
        self.dense = lj.to_nnx(lj.LocalBlock(DenseUnit(16), head=head), h, labels, rngs=rngs)
        h, _ = self.dense(h, labels)
        self.output = lj.to_nnx(lj.OutputLayer(K, zero_init=True), h, rngs=rngs)

    def __call__(self, x, labels=None, *, train=False):
        mutable = ["batch_stats"] if train else False
        h, local_conv = self.conv(lj.cut(x), labels, train=train, mutable=mutable)
        h, local_dense = self.dense(lj.cut(pool(h)), labels, train=train, mutable=mutable)
        return self.output(lj.cut(h)), [local_conv, local_dense]


def merge_collections(variables) -> dict:
    """Linen `{collection: tree}` -> one tree, as NNX keeps a bridged block's state."""

    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and k in out else v
        return out

    out: dict = {}
    for tree in variables.values():
        out = merge(out, jax.tree.map(lambda a: a, dict(tree)))
    return out


def concrete(leaf: jax.ShapeDtypeStruct) -> jax.Array:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return jnp.zeros(leaf.shape, leaf.dtype)


def twins(head):
    """A Linen model and its NNX twin holding the same variables."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(np.arange(B) % K, jnp.int32)
    linen_model = LinenNet(head)
    variables = fast_jit(lambda k: linen_model.init(k, x, y))(jax.random.key(0, impl="rbg"))
    # shapes only (nothing computed): the variables come from the Linen model
    nnx_model = nnx.eval_shape(lambda: NNXNet(head, x, y, nnx.Rngs(1)))
    state = nnx.state(nnx_model)
    nnx.replace_by_pure_dict(state, merge_collections(variables))
    nnx.update(nnx_model, state)
    # the blocks' RNG streams (unused without dropout) get concrete values too
    rng_state = nnx.state(nnx_model, nnx.RngState)
    nnx.update(nnx_model, jax.tree.map(concrete, rng_state))
    return linen_model, variables, nnx_model, x, y


def linen_forward(model, variables, x, y, train):
    if train:
        return model.apply(variables, x, y, train=True, mutable=["batch_stats"])[0]
    return model.apply(variables, x, y, train=False)


def assert_local_equal(local_a, local_b):
    assert len(local_a) == len(local_b)
    for a, b in zip(local_a, local_b, strict=True):
        for term in ("loss", "pred", "sim"):
            np.testing.assert_allclose(np.asarray(a[term]), np.asarray(b[term]), **TOL)
        if a["logits"] is None:
            assert b["logits"] is None
        else:
            np.testing.assert_allclose(np.asarray(a["logits"]), np.asarray(b["logits"]), **TOL)


BIO = lj.HeadConfig("predsim", num_classes=K, beta=0.01, bio=True, target_proj_size=16)
PREDSIM = lj.HeadConfig("predsim", num_classes=K, dim_in_decoder=32)


@pytest.mark.parametrize("head", [PREDSIM, BIO], ids=["predsim", "bio"])
def test_bridged_forward_and_gradients_match_linen(head):
    linen_model, variables, nnx_model, x, y = twins(head)
    graphdef, nnx_state = nnx.split(nnx_model)
    w = lj.output_loss_weight(linen_model)  # 1 − β: LinenNet has a predsim `head`

    @fast_jit
    def linen_all(variables):
        def objective(params):
            out = linen_forward(linen_model, {**variables, "params": params}, x, y, True)
            return lj.local_objective(*out, y, w), out

        (loss, train_out), grads = jax.value_and_grad(objective, has_aux=True)(variables["params"])
        return linen_forward(linen_model, variables, x, y, False), train_out, loss, grads

    @fast_jit
    def nnx_all(nnx_state):
        model = nnx.merge(graphdef, nnx_state)
        eval_out = model(x, y, train=False)

        def objective(model):
            out = model(x, y, train=True)
            return lj.local_objective(*out, y, w), out

        (loss, train_out), grads = nnx.value_and_grad(objective, has_aux=True)(model)
        return eval_out, train_out, loss, grads

    l_eval, l_train, l_loss, l_grads = linen_all(variables)
    n_eval, n_train, n_loss, n_grads = nnx_all(nnx_state)
    for (l_logits, l_local), (n_logits, n_local) in ((l_eval, n_eval), (l_train, n_train)):
        np.testing.assert_allclose(np.asarray(l_logits), np.asarray(n_logits), **TOL)
        assert_local_equal(l_local, n_local)
    np.testing.assert_allclose(float(l_loss), float(n_loss), **TOL)
    n_grads = nnx.to_pure_dict(n_grads)
    assert jax.tree.structure(n_grads) == jax.tree.structure(l_grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), l_grads, n_grads)
    # the gradient is isolated per block in both: the conv block's local loss does not
    # depend on the dense block, and the grads above are nonzero where they should be
    assert float(jnp.abs(l_grads["conv"]["body"]["Conv_0"]["kernel"]).max()) > 0


def test_bridged_training_step_matches_the_linen_fused_step():
    linen_model, variables, nnx_model, x, y = twins(PREDSIM)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.05, momentum=0.9))
    w = lj.output_loss_weight(linen_model)

    state = lj.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        constants={},
        opt_state=tx.init(variables["params"]),
    )
    linen_step = fast_jit(lj.make_train_step(linen_model, tx))
    optimizer = nnx.Optimizer(nnx_model, tx, wrt=nnx.Param)
    graphdef, nnx_state = nnx.split((nnx_model, optimizer))

    @fast_jit
    def nnx_step(nnx_state):
        model, opt = nnx.merge(graphdef, nnx_state)

        def objective(model):
            logits, local = model(x, y, train=True)
            return lj.local_objective(logits, local, y, w)

        loss, grads = nnx.value_and_grad(objective)(model)
        opt.update(model, grads)
        return loss, nnx.state((model, opt))

    for _ in range(2):  # the second step also exercises the momentum state
        state, metrics = linen_step(state, x, y)
        loss, nnx_state = nnx_step(nnx_state)
        np.testing.assert_allclose(float(metrics["objective"]) / B, float(loss), **TOL)
    nnx.update((nnx_model, optimizer), nnx_state)
    n_params = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))
    n_stats = nnx.to_pure_dict(nnx.state(nnx_model, nnx.BatchStat))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), state.params, n_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), state.batch_stats, n_stats)
    # training moved the parameters (so the comparison above is not vacuous)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), variables["params"], n_params)
    assert max(jax.tree.leaves(moved)) > 1e-4
