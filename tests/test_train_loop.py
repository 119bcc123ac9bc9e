"""The training loop end to end: same seed -> same metrics; bfloat16 compute really runs in
bfloat16 (parameters stay float32) and lands near float32 on real Fashion-MNIST."""

import os

import jax
import jax.numpy as jnp
import pytest
from conftest import make_tiny_config, read_records

from localjax import data
from localjax.training import loop as train
from localjax.models import build_model
from localjax.training.optimizer import make_optimizer
from localjax.training.state import create_train_state
from localjax.training.steps import make_train_step

FMNIST = data.DEBIAN_FASHION_MNIST
needs_fmnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz")),
    reason=f"real Fashion-MNIST not in {FMNIST}: apt-get install -y dataset-fashion-mnist",
)


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tiny_config, tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train.train_and_evaluate(tiny_config(epochs=2, seed=seed), str(tmp_path / name))
        runs[name] = read_records(tmp_path / name)
    assert runs["a"] == runs["b"]  # every value, bit for bit (wall-clock fields aside)
    assert runs["a"] != runs["c"]


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_parameters():
    model = build_model("mlp", 10, "predsim", num_layers=2, num_hidden=32, dtype=jnp.bfloat16)
    tx = make_optimizer(1e-3, (), 10)
    x, y = jnp.ones((8, 8, 8, 1)), jnp.arange(8) % 10
    state = create_train_state(model, tx, jax.random.key(0), x[:2], y[:2])
    step = make_train_step(model, tx, seed=0)
    jaxpr = str(jax.make_jaxpr(step)(state, x, y))
    assert "dot_general" in jaxpr and "bf16[8,32]" in jaxpr  # hidden activations in bf16
    new_state, metrics = jax.eval_shape(step, state, x, y)
    for tree in (new_state.params, new_state.opt_state, new_state.batch_stats):
        dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(tree)}
        assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}, dtypes
    assert {v.dtype for v in metrics.values()} == {jnp.dtype(jnp.float32)}


def test_an_unknown_dtype_is_refused(tiny_config, tmp_path):
    with pytest.raises(ValueError, match=r"unknown dtype 'float16'.*bfloat16"):
        train.train_and_evaluate(tiny_config(dtype="float16"), str(tmp_path))


@pytest.mark.slow
@needs_fmnist
def test_bfloat16_fashion_mnist_lands_within_half_a_point_of_float32(tmp_path):
    errors = {}
    for dtype in ("float32", "bfloat16"):
        config = make_tiny_config(
            FMNIST,
            data_source="auto",
            dtype=dtype,
            num_devices=1,
            train_limit=10000,
            batch_size=128,
            eval_batch_size=1000,
            num_hidden=256,
            epochs=5,
            milestones=(),
        )
        summary = train.train_and_evaluate(config, str(tmp_path / dtype))
        errors[dtype] = summary["final_test_error"]  # on all 10,000 test images
    print(errors)
    assert errors["float32"] < 25.0  # it learned something
    assert abs(errors["bfloat16"] - errors["float32"]) <= 0.5, errors


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(batch_size=0), r"batch_size=0 must be >= 1"),
        (dict(eval_batch_size=-5), r"eval_batch_size=-5 must be >= 1"),
        (dict(train_limit=-1), r"train_limit=-1 must be >= 0 \(0 = every example\)"),
        (dict(test_limit=-1), r"test_limit=-1 must be >= 0"),
        (dict(dropout=1.5), r"dropout=1.5 must be in \[0, 1\)"),
        (dict(lr=-1.0), r"lr=-1.0 and lr_decay=.* must be > 0"),
        (dict(num_hidden=0), r"num_hidden=0 >= 1"),
        (dict(classes_per_batch=20), r"classes_per_batch=20 exceeds fashion_mnist's 10 classes"),
    ],
)
def test_nonsense_settings_are_refused_before_training(tiny_config, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_workdir_that_is_a_file_is_refused(tiny_config, tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(ValueError, match=r"is a file, not a directory"):
        train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))


def test_an_unknown_conv_wgrad_is_refused(tiny_config, tmp_path):
    with pytest.raises(ValueError, match=r"unknown conv_wgrad 'fast'.*shifted"):
        train.train_and_evaluate(tiny_config(conv_wgrad="fast"), str(tmp_path))


def test_shifted_and_xla_conv_weight_gradients_train_a_vgg_alike(tiny_config, tmp_path):
    """conv_wgrad changes how the weight gradient is computed, not what it is."""
    # vgg6a: four conv blocks, each with its own shape, at half vgg8b's compile time
    vgg = dict(model="vgg6a", feat_mult=1 / 16, num_layers=1, num_hidden=32, epochs=1)
    runs = {}
    for choice in ("xla", "shifted"):
        train.train_and_evaluate(tiny_config(conv_wgrad=choice, **vgg), str(tmp_path / choice))
        runs[choice] = read_records(tmp_path / choice)
    for a, b in zip(runs["xla"], runs["shifted"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-3), key


def test_conv_wgrad_choice_reaches_the_traced_step():
    """On CPU, `auto` and `shifted` trace each conv's weight gradient as matmuls."""
    assert jax.default_backend() == "cpu"
    model = build_model("vgg8b", 10, "predsim", feat_mult=1 / 16, num_hidden=32)
    tx = make_optimizer(1e-3, (), 10)
    x, y = jnp.ones((4, 28, 28, 1)), jnp.arange(4)
    state = create_train_state(model, tx, jax.random.key(0), x[:2], y[:2])
    jaxprs = {}
    for choice in ("xla", "shifted", "auto"):
        step = train._with_conv_wgrad(make_train_step(model, tx, seed=0), choice)
        jaxprs[choice] = str(jax.make_jaxpr(step)(state, x, y))
    assert jaxprs["xla"] != jaxprs["shifted"]
    assert jaxprs["auto"] == jaxprs["shifted"]
