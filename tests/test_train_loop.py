"""The training loop end to end: same seed -> same metrics; bfloat16 compute really runs in
bfloat16 (parameters stay float32) and lands near float32 on real Fashion-MNIST."""

import math
import os

import jax
import jax.numpy as jnp
import pytest
from conftest import make_tiny_config, read_records

from localjax import data
from localjax.models import build_model
from localjax.training import loop as train
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
        (dict(lr=float("nan")), r"lr=nan and lr_decay=0.25 must be > 0 and finite"),
        (dict(lr_decay=float("inf")), r"lr_decay=inf must be > 0 and finite"),
        (dict(milestones=("abc",)), r"milestones=\('abc',\) must be a tuple of epochs >= 1"),
        (dict(milestones=(0, 2)), r"milestones=\(0, 2\) must be a tuple of epochs >= 1"),
        (dict(seed=-1), r"seed=-1 must be an integer >= 0"),
        (dict(classes_per_batch=-1), r"classes_per_batch=-1 must be >= 0"),
        (dict(cutout_length=-4), r"cutout_length=-4 must be >= 0"),
        (dict(batch_size=1), r"batch_size=1 with loss=predsim: the similarity matrix"),
        (dict(batch_size=1, loss="sim", bio=True), r"batch_size=1 with loss=sim"),
        (dict(batch_size=1, loss="pred", unsup="sim", alpha=0.5), r"batch_size=1 with unsup=sim"),
        (dict(train_limit=129), r"train_limit=129 with batch_size=16 leaves 1 example"),
        (dict(train_limit=1), r"train_limit=1 with batch_size=16 .* Use train_limit >= 2"),
        (dict(model="vgg8b", feat_mult=0.0), r"feat_mult=0.0 leaves vgg8b's narrowest conv"),
        (dict(loss="simpred"), r"unknown loss 'simpred'"),
        (dict(loss="bio"), r"unknown loss 'bio'.*bio is a switch, not a loss: --config.bio=True"),
        (dict(nonlin="tanh"), r"unknown nonlinearity 'tanh'"),
        (dict(beta=1.5), r"beta and alpha must be in \[0, 1\]"),
        (dict(momentum=0.9), r"momentum=0.9 applies to optim='sgd' only"),
        (dict(optim="sgd", weight_decay=-1e-4), r"weight_decay=-0.0001 must be >= 0"),
        (dict(optim="adagrad"), r"unknown optim 'adagrad'"),
        (dict(n_holes=0), r"n_holes=0 must be >= 1"),
        (dict(model="resnet19"), r"unknown model 'resnet19'; choose one of \[.*'resnet18'.*"),
        (dict(model="wresnet12-4"), r"wresnet12-4: a Wide ResNet depth must be 6n\+4"),
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
    with pytest.raises(train.ConfigError, match=r"run/sub cannot be created: .*run is a file"):
        train.train_and_evaluate(tiny_config(), str(tmp_path / "run" / "sub"))


def test_a_last_batch_of_one_trains_with_pred(tiny_config, tmp_path):
    """Only sim/predsim refuse it: pred learns from one example (BatchNorm zeroes a dense
    block's output then, so only the heads and BatchNorm offsets move), and stays finite."""
    config = tiny_config(loss="pred", train_limit=17, epochs=1, num_devices=1)
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["steps"] == 2  # 16 + 1
    assert math.isfinite(read_records(tmp_path)[0]["train_loss"])


def test_the_reference_switches_train_and_change_the_trajectory(tiny_config, tmp_path):
    """optim/momentum/weight_decay, n_holes and no_batch_norm reach the step: each run
    differs from the default run on the same data and seed, and trains finite."""
    base = dict(train_limit=64, epochs=1, num_devices=1, cutout_length=8)
    runs = {
        "default": {},
        "sgd": dict(optim="sgd", momentum=0.9, weight_decay=5e-4, lr=0.05),
        "amsgrad": dict(optim="amsgrad"),
        "holes": dict(n_holes=3),
        "no_batch_norm": dict(no_batch_norm=True),
    }
    losses = {}
    for name, overrides in runs.items():
        config = tiny_config(**base, **overrides)
        train.train_and_evaluate(config, str(tmp_path / name))
        losses[name] = read_records(tmp_path / name)[0]["train_objective"]
        assert math.isfinite(losses[name]), (name, losses)
    for name in ("sgd", "amsgrad", "holes", "no_batch_norm"):
        assert losses[name] != losses["default"], (name, losses)


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


def test_config_switches_reach_the_model(tiny_config):
    """`similarity_std` (the reference's --no-similarity-std), `pre_act` (--pre-act) and
    `no_batch_norm` (--no-batch-norm) are config fields that the built network carries."""
    from localjax.training.config import model_from_config

    net = model_from_config(tiny_config(model="vgg6a", similarity_std=False), 10)
    convs = [layer for name, layer in net.named_layers() if name and "conv" in name]
    assert convs and all(layer.head.similarity_std is False for layer in convs)
    plain = model_from_config(tiny_config(model="resnet18", feat_mult=1 / 16), 10)
    pre = model_from_config(tiny_config(model="resnet18", feat_mult=1 / 16, pre_act=True), 10)
    pre_blocks = [layer for name, layer in pre.named_layers() if name]
    assert any(getattr(b, "pre_act", False) for b in pre_blocks)
    assert not any(getattr(b, "pre_act", False) for name, b in plain.named_layers() if name)
    assert all(b.batch_norm for name, b in plain.named_layers() if name)
    no_bn = model_from_config(tiny_config(model="resnet18", no_batch_norm=True), 10)
    assert not any(b.batch_norm for name, b in no_bn.named_layers() if name)


def test_the_banner_names_bio_and_a_run_without_local_classifiers_prints_no_local_errors(
    tiny_config, tmp_path, capsys
):
    # sim with bio trains no local classifier: an empty "local errors []" said nothing
    train.train_and_evaluate(tiny_config(epochs=1, loss="sim", bio=True), str(tmp_path))
    out = capsys.readouterr().out
    assert "mlp sim, bio (float32) on" in out, out
    epoch_line = next(line for line in out.splitlines() if line.startswith("epoch   1"))
    assert "local errors" not in epoch_line and "test loss" in epoch_line, epoch_line
