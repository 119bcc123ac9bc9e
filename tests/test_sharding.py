"""Data parallelism: a step sharded over 2, 4 and 8 (fake CPU) devices equals one device.

BatchNorm statistics and the B x B similarity matrices must cover the global batch, so a
sharded step that silently computed them per device would fail these comparisons.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import read_records

from localjax.models import build_model
from localjax.training import loop as train
from localjax.training import sharding
from localjax.training.state import TrainState
from localjax.training.steps import make_train_step

DEVICE_COUNTS = (2, 4, 8)
needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


# Compile-time options for these comparisons only (reference and sharded alike): the
# unoptimised CPU backend compiles the VGG step about twice as fast.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _host_state(model, tx, images, labels) -> TrainState:
    """Initial state on the host (init jitted with FAST_COMPILE: a VGG init compiles slowly)."""
    init = jax.jit(lambda k, x, y: model.init({"params": k}, x, y))
    args = (jax.random.key(0), images[:2], labels[:2])
    variables = init.lower(*args).compile(FAST_COMPILE)(*args)
    params = variables["params"]
    return jax.device_get(
        TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            constants=variables.get("constants", {}),
            opt_state=tx.init(params),
        )
    )


def _run(step_fn, state, batches, mesh=None):
    """Runs the batches; returns (final host state, list of host metric dicts)."""
    if mesh is None:
        fn, put = jax.jit(step_fn), lambda b: b
        state = jax.tree_util.tree_map(jnp.asarray, state)
    else:
        fn = sharding.data_parallel(step_fn, mesh)
        state, put = sharding.put_replicated(state, mesh), lambda b: sharding.put_batch(b, mesh)
    compiled, history = {}, []
    for images, labels in batches:
        args = (state, *put((images, labels)))
        if images.shape not in compiled:
            compiled[images.shape] = fn.lower(*args).compile(FAST_COMPILE)
        state, metrics = compiled[images.shape](*args)
        history.append(jax.device_get(metrics))
    return jax.device_get(state), history


def _case(name):
    rng = np.random.default_rng(1)
    if name == "mlp":
        model, size = build_model("mlp", 10, "predsim", num_layers=2, num_hidden=32), 8
    else:  # a tiny VGG: vgg8b at 1/8 width on 16 px, so its four pools end at 1 x 1
        model = build_model("vgg8b", 10, "predsim", feat_mult=0.125, num_hidden=32)
        model, size = model, 16
    # MLP: three batches of 16 and a last partial batch of 12 (replicated on 8 devices)
    batches = [
        (
            rng.normal(size=(b, size, size, 1)).astype(np.float32),
            rng.integers(0, 10, b).astype(np.int32),
        )
        for b in (16, 16, 16, 12)
    ]
    if name == "vgg":
        batches = batches[:2]  # compiling is what costs: one shape, two steps
    # SGD: Adam rescales every gradient to about lr, so a parameter whose true gradient is 0
    # (a dense bias before BatchNorm) moves by lr * (rounding noise / |rounding noise|) and
    # cannot agree to 1e-5 even between two one-device runs; sharding is about gradients.
    tx = optax.sgd(0.1)
    step_fn = make_train_step(model, tx, seed=0)
    state = _host_state(model, tx, jnp.asarray(batches[0][0]), jnp.asarray(batches[0][1]))
    return step_fn, state, batches


@pytest.fixture(scope="module", params=["mlp", "vgg"])
def reference(request):
    step_fn, state, batches = _case(request.param)
    return step_fn, state, batches, _run(step_fn, state, batches)


@needs_8
@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_sharded_step_matches_one_device(reference, n):
    step_fn, state, batches, (want_state, want_metrics) = reference
    got_state, got_metrics = _run(step_fn, state, batches, sharding.make_mesh(n))
    for step, (got, want) in enumerate(zip(got_metrics, want_metrics, strict=True)):
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_allclose(
                got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=f"step {step} {key}"
            )
    assert int(got_state.step) == len(batches)
    flat_got = jax.tree_util.tree_leaves_with_path(got_state)
    flat_want = jax.tree_util.tree_leaves(want_state)
    for (path, got), want in zip(flat_got, flat_want, strict=True):
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path)
        )
    # the parameters really changed, so the comparison is not between two initial states
    assert not np.allclose(want_state.params["output"]["dense"]["kernel"], 0.0)


@needs_8
def test_batch_sharding_splits_the_batch_and_replicates_what_does_not_divide():
    mesh = sharding.make_mesh(8)
    split = sharding.put_batch(np.arange(16, dtype=np.int32), mesh)
    assert [s.data.shape for s in split.addressable_shards] == [(2,)] * 8
    assert split.sharding.spec == sharding.batch_sharding(mesh).spec
    partial = sharding.put_batch(np.arange(12, dtype=np.int32), mesh)
    assert partial.sharding.is_fully_replicated
    np.testing.assert_array_equal(partial, np.arange(12))


@needs_8
@pytest.mark.parametrize("batch_size", [12, 100, 7])
def test_a_batch_that_does_not_divide_is_refused_naming_both_numbers(batch_size):
    with pytest.raises(ValueError, match=rf"batch_size={batch_size}\b.* over 8 devices"):
        sharding.check_divisible(batch_size, sharding.make_mesh(8))
    sharding.check_divisible(batch_size * 8, sharding.make_mesh(8))  # multiples pass


@needs_8
def test_train_and_evaluate_refuses_an_indivisible_batch_before_training(tiny_config, tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=12 does not divide over 8 devices"):
        train.train_and_evaluate(tiny_config(batch_size=12), str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()


@needs_8
def test_the_training_loop_on_8_devices_matches_one_device(tiny_config, tmp_path):
    config = dict(epochs=2)
    one = train.train_and_evaluate(tiny_config(num_devices=1, **config), str(tmp_path / "one"))
    eight = train.train_and_evaluate(tiny_config(num_devices=8, **config), str(tmp_path / "eight"))
    assert (one["num_devices"], eight["num_devices"]) == (1, 8)
    want, got = read_records(tmp_path / "one"), read_records(tmp_path / "eight")
    assert [r["epoch"] for r in got] == [1, 2]
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w)
        np.testing.assert_allclose([g[k] for k in w], [w[k] for k in w], rtol=1e-5, atol=1e-5)


@needs_8
def test_a_500_step_run_on_8_devices_finishes(tiny_config, tmp_path):
    # jaxlib 0.10.2 on CPU aborts with ~50 queued collective steps; the loop waits every
    # sync_every steps, so 500 steps must finish whatever the version.
    summary = train.train_and_evaluate(
        tiny_config(train_limit=8000, batch_size=16, epochs=1, sync_every=16),
        str(tmp_path),
    )
    assert summary["steps"] == 500 and summary["num_devices"] == 8
    assert np.isfinite(summary["final_test_error"])
