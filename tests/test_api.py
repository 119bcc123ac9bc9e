"""The public API for composing your own models with local losses (issue 7).

A residual conv net of our own design trains with predsim through the fused step, with
user optax optimizers, with gradients isolated per block; misuse raises clear errors.

Compile time dominates these tests on CPU, so the models are tiny, initialisation uses
the `rbg` PRNG (threefry kernels are slow to compile) and our own jits skip XLA's backend
optimisation; none of this changes what is computed.
"""

from __future__ import annotations

import inspect

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import localjax as lj
from localjax import blocks, checks

FAST = {"xla_backend_optimization_level": 0}
B, K = 8, 4


def fast_jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST, **kwargs)


def key(i: int) -> jax.Array:
    return jax.random.key(i, impl="rbg")


# ---------------------------------------------------------------- user modules
class ResidualUnit(nn.Module):
    """conv-BN-ReLU-conv-BN + skip (1×1 projection when C changes), ReLU."""

    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        skip = x if x.shape[-1] == self.features else nn.Conv(self.features, (1, 1))(x)
        h = nn.Conv(self.features, (3, 3))(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
        h = nn.Conv(self.features, (3, 3))(h)
        return nn.relu(nn.BatchNorm(use_running_average=not train)(h) + skip)


class ResNet(nn.Module):
    head: lj.HeadConfig

    @nn.compact
    def __call__(self, x, labels=None, *, train=False):
        layers = [
            lj.LocalBlock(ResidualUnit(4), head=self.head, name="res_1"),
            lambda z: nn.max_pool(z, (2, 2), strides=(2, 2)),
            lj.LocalBlock(ResidualUnit(8), head=self.head, name="res_2"),
        ]
        h, local = lj.apply_blocks(layers, x, labels, train=train, detach=True)
        logits = lj.OutputLayer(self.head.num_classes, zero_init=True, name="output")(lj.cut(h))
        return logits, local


class DenseUnit(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(self.features)(x.reshape(x.shape[0], -1))
        return nn.relu(nn.BatchNorm(use_running_average=not train)(h))


class DenseNet(nn.Module):
    """Two dense blocks; the flags break it in the ways users do."""

    head: lj.HeadConfig
    cut_blocks: bool = True
    cut_output: bool = True
    skip_over_cut: bool = False
    out_classes: int | None = None

    @nn.compact
    def __call__(self, x, labels=None, *, train=False):
        h0, l0 = lj.LocalBlock(DenseUnit(16), head=self.head, name="b0")(
            lj.cut(x), labels, train=train
        )
        h1, l1 = lj.LocalBlock(DenseUnit(16), head=self.head, name="b1")(
            lj.cut(h0, self.cut_blocks), labels, train=train
        )
        z = lj.cut(h1, self.cut_output)
        if self.skip_over_cut:
            z = z + h0  # a skip connection from block 0 straight to the output layer
        k = self.out_classes or self.head.num_classes
        return lj.OutputLayer(k, zero_init=True, name="out")(z), [l0, l1]


def batch(shape=(B, 8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return x, jnp.asarray(np.arange(B) % K, jnp.int32)


PREDSIM = lj.HeadConfig("predsim", num_classes=K, dim_in_decoder=64)


# ---------------------------------------------------------------- public API
COMPOSE_NAMES = set(checks.__all__) | {
    "LocalBlock",
    "LocalNetwork",
    "check_labels",
    "local_objective",
    "summarize_metrics",
    "to_nnx",
}


def test_public_api_is_exported_and_documented():
    assert len(set(lj.__all__)) == len(lj.__all__)
    for name in lj.__all__:
        obj = getattr(lj, name)  # AttributeError: listed but not exported
        doc = inspect.getdoc(obj) or ""
        assert len(doc) > 40, f"{name} needs a docstring"
    assert COMPOSE_NAMES <= set(lj.__all__)
    for name in COMPOSE_NAMES:
        doc = inspect.getdoc(getattr(lj, name))
        assert "METHOD.md" in doc or "DESIGN.md" in doc, f"{name}: cite METHOD.md or DESIGN.md"
        if name != "GradientLeakError":
            assert "Raises" in doc, f"{name}: docstring must list the errors"
    for name in ("LocalBlock", "check_labels", "check_gradient_isolation", "local_objective"):
        assert "[B" in inspect.getdoc(getattr(lj, name)), f"{name}: docstring needs shapes"
    needed = {"make_train_step", "create_train_state", "TrainState", "make_eval_step"}
    needed |= {"sim_loss", "pred_loss", "predsim_loss", "LocalBlock", "apply_blocks", "cut"}
    assert needed <= set(lj.__all__)


# ---------------------------------------------------------------- the residual net
@pytest.fixture(scope="module")
def resnet_run():
    """A residual conv net trained 5 steps with SGD + momentum, cosine, clipping."""
    model = ResNet(PREDSIM)
    x, y = batch()
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.sgd(optax.cosine_decay_schedule(0.05, decay_steps=20), momentum=0.9),
    )
    state0 = lj.create_train_state(model, tx, key(0), x[:2], y[:2])
    owners = lj.check_gradient_isolation(model, state0.variables(), x, y)
    step = fast_jit(lj.make_train_step(model, tx))
    state, history = state0, []
    for _ in range(5):
        state, metrics = step(state, x, y)
        history.append(lj.summarize_metrics(metrics))
    return model, state0, state, owners, history


def test_residual_blocks_are_isolated(resnet_run):
    _, state0, _, owners, _ = resnet_run
    assert list(owners) == ["block_0 (res_1)", "block_1 (res_2)", "output"]
    for paths in owners.values():
        assert paths
    assert all(p.startswith("res_1/") for p in owners["block_0 (res_1)"])
    assert all(p.startswith("res_2/") for p in owners["block_1 (res_2)"])
    assert all(p.startswith("output/") for p in owners["output"])
    # every parameter is trained by exactly one loss
    all_params = {
        "/".join(str(k.key) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(state0.params)[0]
    }
    owned = [p for paths in owners.values() for p in paths]
    assert sorted(owned) == sorted(all_params)


def test_residual_net_trains_a_few_steps(resnet_run):
    _, state0, state, _, history = resnet_run
    assert int(state.step) == 5
    for m in history:
        for name, value in m.items():
            assert np.isfinite(value), name
        assert {"local_loss/block_0", "local_loss/block_1"} <= set(m)
        assert {"local_error/block_0", "local_error/block_1"} <= set(m)
    assert history[-1]["objective"] < history[0]["objective"]
    for block in ("res_1", "res_2", "output"):
        before = jax.tree.leaves(state0.params[block])
        after = jax.tree.leaves(state.params[block])
        assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True)), block


def test_block_variables_live_under_body_and_head(resnet_run):
    _, state0, _, _, _ = resnet_run
    assert set(state0.params) == {"res_1", "res_2", "output"}
    for block in ("res_1", "res_2"):
        assert set(state0.params[block]) == {"body", "head"}
        assert set(state0.batch_stats[block]) == {"body"}
    inference, total = lj.count_params(state0.params)
    heads = sum(
        x.size for b in ("res_1", "res_2") for x in jax.tree.leaves(state0.params[b]["head"])
    )
    assert total - inference == heads > 0


def test_eval_step_reads_per_block_metrics(resnet_run):
    model, _, state, _, _ = resnet_run
    x, y = batch()
    sums = fast_jit(lj.make_eval_step(model, with_local=True))(state, x, y)
    m = lj.summarize_metrics(sums)
    assert set(m) == {
        "loss",
        "error",
        "local_loss/block_0",
        "local_loss/block_1",
        "local_error/block_0",
        "local_error/block_1",
    }
    assert 0.0 <= m["error"] <= 1.0


# ---------------------------------------------------------------- optimizers
def init(model, x, y, seed=0):
    """`model.init` in one fast-compiled program (eager init compiles op by op)."""
    return fast_jit(lambda k: model.init(k, x, y))(key(seed))


def dense_state(tx, head=PREDSIM, **model_kwargs):
    """A `TrainState` as `create_train_state` makes it, from a fast-compiled init."""
    model = DenseNet(head, **model_kwargs)
    x, y = batch((B, 6))
    variables = init(model, x[:2], y[:2], seed=1)
    state = lj.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        constants=variables.get("constants", {}),
        opt_state=tx.init(variables["params"]),
    )
    return model, state, x, y


def param_change(a, b) -> float:
    diffs = jax.tree.map(lambda u, v: jnp.sum(jnp.square(u - v)), a.params, b.params)
    return float(jnp.sqrt(sum(jax.tree.leaves(diffs))))


def test_user_optimizer_chain_with_clipping_is_applied():
    tx = optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(1.0))
    model, state, x, y = dense_state(tx)
    new, _ = fast_jit(lj.make_train_step(model, tx))(state, x, y)
    change = param_change(state, new)
    assert 0.0 < change <= 1e-3 * (1 + 1e-5)  # the clip bounds the update: tx was used


def test_user_schedule_sees_the_update_count():
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=2, decay_steps=10)
    tx = optax.sgd(schedule, momentum=0.9)
    model, state, x, y = dense_state(tx)
    step = fast_jit(lj.make_train_step(model, tx))
    first, _ = step(state, x, y)
    second, _ = step(first, x, y)
    assert param_change(state, first) == 0.0  # learning rate 0 at count 0
    assert param_change(first, second) > 0.0


def test_local_objective_is_what_the_step_differentiates():
    tx = optax.sgd(0.0)
    model, state, x, y = dense_state(tx)
    _, metrics = fast_jit(lj.make_train_step(model, tx, output_weight=0.25))(state, x, y)

    def objective(variables):
        (logits, local), _ = model.apply(variables, x, y, train=True, mutable=["batch_stats"])
        return lj.local_objective(logits, local, y, output_weight=0.25)

    total = fast_jit(objective)(state.variables())
    np.testing.assert_allclose(float(metrics["objective"]) / B, float(total), rtol=1e-5)


def test_bio_variant_on_a_custom_block_trains_and_is_isolated():
    head = lj.HeadConfig("predsim", num_classes=K, beta=0.01, bio=True, target_proj_size=16)
    tx = optax.adam(1e-2)
    model, state, x, y = dense_state(tx, head=head)
    assert set(state.constants["b0"]["head"]) == {"label_projection", "decoder_feedback"}
    owners = lj.check_gradient_isolation(model, state.variables(), x, y)
    assert list(owners) == ["block_0 (b0)", "block_1 (b1)", "output"]
    new, metrics = fast_jit(lj.make_train_step(model, tx))(state, x, y)
    assert np.isfinite(float(metrics["objective"]))
    chex.assert_trees_all_equal(new.constants, state.constants)  # never trained


# ---------------------------------------------------------------- gradient leaks
@pytest.mark.parametrize(
    "kwargs, leaker, victim",
    [
        ({"cut_blocks": False}, "the local loss of block_1 (b1)", "block_0 (b0)"),
        ({"cut_output": False}, "the output loss", "block_1 (b1)"),
        ({"skip_over_cut": True}, "the output loss", "block_0 (b0)"),
    ],
    ids=["no-cut-between-blocks", "no-cut-before-output", "skip-across-cut"],
)
def test_gradient_leak_names_the_blocks(kwargs, leaker, victim):
    model = DenseNet(PREDSIM, **kwargs)
    x, y = batch((B, 6))
    variables = init(model, x, y, seed=2)
    with pytest.raises(lj.GradientLeakError, match="not isolated") as err:
        lj.check_gradient_isolation(model, variables, x, y)
    assert f"{leaker} sends gradient into {victim}" in str(err.value)


def test_isolation_check_sees_through_zero_initialised_decoders():
    # pred only: at init the zero decoder sends no gradient to h, leak or not
    head = lj.HeadConfig("pred", num_classes=K)
    model = DenseNet(head, cut_blocks=False)
    x, y = batch((B, 6))
    variables = init(model, x, y, seed=3)
    with pytest.raises(lj.GradientLeakError):
        lj.check_gradient_isolation(model, variables, x, y, perturb=1e-3)
    lj.check_gradient_isolation(model, variables, x, y, perturb=0.0)  # blind without it


class NoHeads(nn.Module):
    """Blocks without heads (the backprop baseline's shape): no local loss to check."""

    @nn.compact
    def __call__(self, x, labels=None, *, train=False):
        h, local = lj.LocalBlock(DenseUnit(16), name="b0")(x, labels, train=train)
        return lj.OutputLayer(K, zero_init=False)(h), [local]


def test_isolation_check_rejects_models_without_local_losses_or_mismatched_k():
    x, y = batch((B, 6))
    model = NoHeads()
    with pytest.raises(ValueError, match="no local loss"):
        lj.check_gradient_isolation(model, init(model, x, y), x, y)
    wide = DenseNet(PREDSIM, out_classes=K + 3)
    with pytest.raises(ValueError, match=f"predicts {K} classes but the output layer {K + 3}"):
        lj.check_gradient_isolation(wide, init(wide, x, y), x, y)


# ---------------------------------------------------------------- misuse
class Sequence3D(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8)(x)  # [B, T, D_in] -> [B, T, 8]


class ReturnsTuple(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x, x


def test_heads_on_an_output_without_pooling_dims_raise():
    x = jnp.ones((B, 5, 3))
    block = lj.LocalBlock(Sequence3D(), head=PREDSIM, name="seq")
    with pytest.raises(ValueError, match=r"\[B, D\] or \[B, H, W, C\].*\(8, 5, 8\)"):
        block.init(key(0), x, jnp.zeros((B,), jnp.int32))
    # without heads the same module is a plain block
    variables = lj.LocalBlock(Sequence3D()).init(key(0), x)
    out, local = lj.LocalBlock(Sequence3D()).apply(variables, x)
    assert out.shape == (B, 5, 8) and local is None


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (np.arange(B) % K + 1, ValueError, r"labels must lie in \[0, 4\).*\[4\]"),
        (np.arange(B) - 1, ValueError, r"labels must lie in \[0, 4\).*\[-1, "),
        (np.eye(K)[np.arange(B) % K].astype(np.int32), ValueError, "One-hot"),
        (np.zeros(B, np.float32), TypeError, "integer"),
        (np.zeros(B + 1, np.int32), ValueError, "labels for a batch of"),
    ],
    ids=["too-large", "negative", "one-hot", "float", "wrong-batch"],
)
def test_bad_labels_raise(labels, error, match):
    x = jnp.ones((B, 6))
    block = lj.LocalBlock(DenseUnit(8), head=PREDSIM, name="blk")
    with pytest.raises(error, match=match):
        block.init(key(0), x, jnp.asarray(labels))


def test_module_returning_a_tuple_raises():
    # unnamed (top-level), the block is named after the module it wraps
    with pytest.raises(TypeError, match=r"LocalBlock\(ReturnsTuple\): .*must return one array"):
        lj.LocalBlock(ReturnsTuple(), head=PREDSIM).init(key(0), jnp.ones((B, 6)))


def test_checked_step_catches_bad_labels_under_jit():
    tx = optax.sgd(0.1)
    model, state, x, y = dense_state(tx)
    checked = lj.checked_step(lj.make_train_step(model, tx), K, compiler_options=FAST)
    state, _ = checked(state, x, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        checked(state, x, y + K)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        checked(state, x, y - K)


def test_checked_step_activates_the_blocks_label_checks():
    # the step's own check passes (labels < 2K); the blocks' K-output heads must catch it
    tx = optax.sgd(0.1)
    model, state, x, y = dense_state(tx)
    checked = lj.checked_step(lj.make_train_step(model, tx), 2 * K, compiler_options=FAST)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\) for a decoder"):
        checked(state, x, y + K)


def test_plain_step_has_no_effects():
    # an effect (e.g. an inactive checkify.debug_check) turns off JAX's C++ dispatch path,
    # which cost ~4 ms of host time per step on one CPU core
    tx = optax.sgd(0.1)
    model, state, x, y = dense_state(tx)
    assert jax.make_jaxpr(lj.make_train_step(model, tx))(state, x, y).effects == set()


def test_check_labels_shapes_and_values():
    assert lj.check_labels(jnp.arange(3), 3) is not None
    with pytest.raises(ValueError, match="myblock"):
        lj.check_labels(jnp.arange(4), 3, where="myblock")


def test_module_without_train_argument_and_pass_train():
    x, y = batch((B, 6))
    block = lj.LocalBlock(nn.Dense(8), head=PREDSIM)
    assert not blocks._accepts_train(nn.Dense(8))
    assert blocks._accepts_train(DenseUnit(8))
    variables = block.init(key(0), x, y)
    (out, local) = block.apply(variables, x, y)
    assert out.shape == (B, 8) and local["logits"].shape == (B, K)
    # a module with `train` gets it: BatchNorm updates its statistics in training mode
    block = lj.LocalBlock(DenseUnit(8), head=PREDSIM)
    variables = block.init(key(0), x, y)
    _, upd = block.apply(variables, x, y, train=True, mutable=["batch_stats"])
    assert not np.allclose(
        upd["batch_stats"]["body"]["BatchNorm_0"]["mean"],
        variables["batch_stats"]["body"]["BatchNorm_0"]["mean"],
    )


def test_summarize_metrics_means_and_errors():
    sums = {
        "count": 4.0,
        "loss": 2.0,
        "correct": 3.0,
        "local_loss/block_0": 1.0,
        "local_correct/block_0": 1.0,
    }
    assert lj.summarize_metrics(sums) == {
        "loss": 0.5,
        "error": 0.25,
        "local_loss/block_0": 0.25,
        "local_error/block_0": 0.75,
    }
