"""ResNets and Wide ResNets: parameter counts equal the reference's, the structure of
their blocks, and the per-block step equals the single-gradient step on them."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import localjax as lj
from localjax.errors import ConfigError
from localjax.heads import decoder_pool_geometry
from localjax.losses import similarity_matrix
from localjax.models import MODEL_NAMES, build_model
from localjax.network import count_params
from localjax.training.state import create_train_state
from localjax.training.steps import make_reference_train_step, make_train_step

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def shapes_of(model, size=32, batch=2):
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return jax.eval_shape(lambda x, y: model.init({"params": jax.random.key(0)}, x, y), x, y)


# ------------------------------------------------------------ parameter counts
def reference_rows():
    """The rows of tests/data/reference_param_counts.tsv (tools/reference_param_counts.py
    ran the reference's own PyTorch classes to make them)."""
    with open(os.path.join(DATA, "reference_param_counts.tsv"), encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    header, rows = lines[0], lines[1:]
    return [dict(zip(header, row, strict=True)) for row in rows]


ROWS = reference_rows()


def test_reference_table_covers_every_residual_model():
    residual = {n for n in MODEL_NAMES if n.startswith(("resnet", "wresnet"))}
    with_bn = {r["model"] for r in ROWS if r["no_batch_norm"] == "0"}
    assert with_bn == residual | {"mlp", "vgg8b"}
    assert {"wresnet16-4a", "wresnet28-10a", "resnet152"} <= with_bn
    # --no-batch-norm: dense and VGG blocks and every residual unit kind, pre_act too
    without = {(r["model"], r["pre_act"]) for r in ROWS if r["no_batch_norm"] == "1"}
    assert {("mlp", "0"), ("vgg8b", "0"), ("resnet18", "1"), ("resnet50", "0")} <= without
    assert {("wresnet16-4", "0"), ("wresnet16-4a", "0")} <= without


# the reference's defaults where localjax's differ (its MLP: 1 dense block, not the paper's 3)
REFERENCE_DEFAULTS = {"mlp": dict(num_layers=1)}


@pytest.mark.parametrize(
    "row",
    ROWS,
    ids=[
        f"{r['model']}-pre{r['pre_act']}-nobn{r['no_batch_norm']}-K{r['num_classes']}" for r in ROWS
    ],
)
def test_param_counts_equal_reference(row):
    name, k = row["model"], int(row["num_classes"])
    kw = dict(
        pre_act=row["pre_act"] == "1",
        no_batch_norm=row["no_batch_norm"] == "1",
        **REFERENCE_DEFAULTS.get(name, {}),
    )
    local = shapes_of(build_model(name, k, "predsim", **kw))
    assert count_params(local["params"]) == (int(row["inference"]), int(row["total"]))
    backprop = shapes_of(build_model(name, k, "backprop", **kw))
    assert count_params(backprop["params"]) == (int(row["backprop"]), int(row["backprop"]))
    if kw["no_batch_norm"]:  # what BatchNorm the reference keeps under --no-batch-norm
        kept = {
            leaf
            for v in (local, backprop)
            for block in v.get("batch_stats", {}).values()
            for leaf in block
        }
        if name.startswith("resnet"):
            assert kept == {"shortcut_bn"}  # the projection shortcuts' BatchNorm
        elif name.startswith("wresnet"):
            assert kept == {"bn_final"}  # the reference's bn1
        else:
            assert "batch_stats" not in local and "batch_stats" not in backprop


# ------------------------------------------------------------ structure
def test_resnet18_blocks_and_shortcut_projection():
    params = shapes_of(build_model("resnet18", 10, "predsim"))["params"]
    units = [f"layer{s}_{u}_conv{j}" for s in range(1, 5) for u in range(2) for j in (1, 2)]
    assert list(params) == ["conv1", *units, "output"]
    # the projection (1x1 conv, no bias, + BatchNorm) belongs to the block it feeds
    feed = params["layer2_0_conv2"]
    assert feed["shortcut_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert "bias" not in feed["shortcut_conv"] and "shortcut_bn" in feed
    assert "shortcut_conv" not in params["layer2_0_conv1"]
    assert "shortcut_conv" not in params["layer1_0_conv2"]  # identity
    assert "bias" not in feed["conv"] and set(feed["head"]) == {"sim_proj", "decoder"}


def test_resnet50_bottleneck_units():
    params = shapes_of(build_model("resnet50", 10, "backprop"))["params"]
    assert params["layer1_0_conv1"]["conv"]["kernel"].shape == (1, 1, 64, 64)
    assert params["layer1_0_conv3"]["conv"]["kernel"].shape == (1, 1, 64, 256)
    assert params["layer1_0_conv3"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 256)
    assert params["layer4_2_conv3"]["conv"]["kernel"].shape == (1, 1, 512, 2048)
    assert params["output"]["dense"]["kernel"].shape == (2048, 10)


def test_resnet_pre_act_blocks():
    params = shapes_of(build_model("resnet18", 10, "predsim", pre_act=True))["params"]
    # the stem passes its raw conv output on; its BatchNorm serves the local loss only
    assert "bn" not in params["conv1"] and "bn" in params["conv1"]["head"]
    assert "bn_pre" in params["layer1_0_conv1"] and "bn" not in params["layer1_0_conv1"]
    assert params["layer1_0_conv1"]["bn_pre"]["scale"].shape == (64,)


@pytest.mark.parametrize(
    "name, pre_act, n_blocks", [("resnet18", True, 17), ("wresnet10-8a", False, 7)]
)
def test_forward_returns_one_local_loss_per_convolution(name, pre_act, n_blocks):
    model = build_model(name, 10, "predsim", feat_mult=1 / 16, pre_act=pre_act)
    variables = shapes_of(model, batch=4)
    x = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((4,), jnp.int32)

    def train(v, x, y):
        return model.apply(
            v, x, y, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]
        )[0]

    logits, local = jax.eval_shape(train, variables, x, y)
    assert logits.shape == (4, 10) and len(local) == n_blocks
    assert all(t is not None and t["logits"].shape == (4, 10) for t in local)
    logits, local = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert logits.shape == (4, 10) and all(t is None for t in local)


def test_wide_resnet_blocks_final_norm_and_dropout_placement():
    model = build_model("wresnet16-4", 10, "predsim", dropout=0.3)
    variables = shapes_of(model)
    params = variables["params"]
    units = [f"layer{s}_{u}_conv{j}" for s in range(1, 4) for u in range(2) for j in (1, 2)]
    assert list(params) == ["conv1", *units, "output"]
    assert params["conv1"]["conv"]["kernel"].shape == (3, 3, 3, 16)
    assert "bias" in params["conv1"]["conv"]
    feed = params["layer1_0_conv2"]  # 16 -> 64 channels: 1x1 conv with bias
    assert feed["shortcut_conv"]["kernel"].shape == (1, 1, 16, 64)
    assert "bias" in feed["shortcut_conv"] and "shortcut_bn" not in feed
    assert set(feed["head"]) == {"bn", "sim_proj", "decoder"}  # loss-only BatchNorm
    # the final BatchNorm: running averages, no scale/bias in local learning
    assert "bn_final" in variables["batch_stats"]["layer3_1_conv2"]
    assert "bn_final" not in params["layer3_1_conv2"]
    blocks = {layer.name: layer for layer in model.layers if hasattr(layer, "name")}
    assert blocks["layer1_0_conv1"].out_dropout == 0.3 and blocks["layer1_0_conv1"].dropout == 0
    assert blocks["conv1"].dropout == 0 and blocks["conv1"].out_dropout == 0
    adapted = build_model("wresnet16-4a", 10, "predsim", dropout=0.3)
    blocks = {layer.name: layer for layer in adapted.layers if hasattr(layer, "name")}
    assert blocks["layer1_0_conv1"].dropout == 0.3 and blocks["layer1_0_conv1"].out_dropout == 0
    backprop = shapes_of(build_model("wresnet16-4", 10, "backprop"))["params"]
    assert set(backprop["layer3_1_conv2"]["bn_final"]) == {"scale", "bias"}


def test_adapted_wide_resnet_widths():
    params = shapes_of(build_model("wresnet16-4a", 10, "backprop"))["params"]
    assert params["conv1"]["conv"]["kernel"].shape == (3, 3, 3, 64)
    assert "shortcut_conv" not in params["layer1_0_conv2"]  # 64 -> 64, stride 1
    assert params["output"]["dense"]["kernel"].shape == (16 * 256, 10)  # 2x2 max pool of 8x8


# (block, output size H = W, channels) at a 32x32 input: the first unit of a stage
# strides on its first conv in a ResNet, on its second in a Wide ResNet
OUTPUT_SIZES = {
    "resnet18": [
        ("conv1", 32, 64),
        ("layer1_1_conv2", 32, 64),
        ("layer2_0_conv1", 16, 128),
        ("layer2_0_conv2", 16, 128),
        ("layer3_0_conv1", 8, 256),
        ("layer4_0_conv2", 4, 512),
        ("layer4_1_conv2", 4, 512),
    ],
    "wresnet10-8": [
        ("conv1", 32, 16),
        ("layer1_0_conv2", 32, 128),
        ("layer2_0_conv1", 32, 256),
        ("layer2_0_conv2", 16, 256),
        ("layer3_0_conv1", 16, 512),
        ("layer3_0_conv2", 8, 512),
    ],
}


@pytest.mark.parametrize("name", list(OUTPUT_SIZES))
def test_decoder_pool_follows_the_actual_output_size(name):
    # the reference's BasicBlock tells a strided unit the size of its input (and then
    # fails in local learning); the pool here is sized from the block's real output
    dim = 1000
    params = shapes_of(build_model(name, 10, "pred", dim_in_decoder=dim))["params"]
    for block, size, channels in OUTPUT_SIZES[name]:
        _, _, (oh, ow) = decoder_pool_geometry(channels, size, size, dim)
        assert params[block]["head"]["decoder"]["kernel"].shape == (channels * oh * ow, 10)


def test_build_model_errors():
    with pytest.raises(ConfigError, match="6n\\+4"):
        build_model("wresnet12-4", 10)
    with pytest.raises(ConfigError, match="resnet18.*wresnet16-4a"):
        build_model("resnet19", 10)
    with pytest.raises(ConfigError, match="pre_act"):
        build_model("wresnet16-4", 10, pre_act=True)
    with pytest.raises(ConfigError, match="recon"):
        build_model("resnet18", 10, unsup="recon")
    with pytest.raises(ConfigError, match="feat_mult"):
        build_model("resnet18", 10, feat_mult=1 / 128)
    assert build_model("wresnet22-2", 10) is not None  # any depth 6n+4


def test_similarity_without_std_flattens_feature_maps():
    z = jax.random.normal(jax.random.key(0), (4, 3, 3, 8))
    flat = similarity_matrix(z.reshape(4, -1))
    np.testing.assert_allclose(similarity_matrix(z, use_std=False), flat, rtol=1e-6)
    assert not np.allclose(similarity_matrix(z), flat)
    cfg = lj.HeadConfig(similarity_std=False)
    assert not cfg.similarity_std


# ------------------------------------------------------------ training
B = 8
TINY = {
    "resnet18": dict(feat_mult=1 / 16, dropout=0.1),
    "wresnet16-4": dict(feat_mult=1 / 8, dropout=0.1),
}
_SETUP = {}


def _preprocess(images, key):
    x = images.astype(jnp.float32) / 255.0
    return x + 0.1 * jax.random.normal(key, x.shape)


def tiny(name):
    """A small-width model, a batch of 8 32x32 images and its initial train state (the
    init compiles once for both tests below)."""
    if name not in _SETUP:
        model = build_model(name, 10, "predsim", **TINY[name])
        rng = np.random.default_rng(0)
        images = jnp.asarray(rng.integers(0, 256, (B, 32, 32, 3), dtype=np.uint8))
        labels = jnp.asarray(rng.integers(0, 10, (B,), dtype=np.int32))
        x0 = _preprocess(images[:2], jax.random.key(0))
        state = create_train_state(model, optax.adam(1e-3), jax.random.key(1), x0, labels[:2])
        _SETUP[name] = model, images, labels, state
    return _SETUP[name]


@pytest.mark.parametrize("name", list(TINY))
def test_per_block_step_equals_single_gradient_step(name):
    model, images, labels, state0 = tiny(name)
    tx = optax.adam(1e-3)
    results = []
    for make in (make_train_step, make_reference_train_step):
        step = jax.jit(make(model, tx, preprocess=_preprocess, seed=0))
        state, history = state0, []
        for _ in range(2):
            state, metrics = step(state, images, labels)
            history.append(metrics)
        results.append((state, history))
    (fused, m_fused), (ref, m_ref) = results
    for a, b in (
        (fused.params, ref.params),
        (fused.batch_stats, ref.batch_stats),
        (m_fused, m_ref),
    ):
        la, ta = jax.tree_util.tree_flatten(a)
        lb, tb = jax.tree_util.tree_flatten(b)
        assert ta == tb
        for u, v in zip(la, lb, strict=True):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
    # the steps did train: the projection moved with its block, running averages too
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state0.params, ref.params)
    assert all(jax.tree_util.tree_leaves(moved["layer2_0_conv2"]))
    stats = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.any(a != b)), state0.batch_stats, ref.batch_stats
    )
    assert all(jax.tree_util.tree_leaves(stats))
    n_blocks = len([k for k in m_ref[0] if k.startswith("local_loss/")])
    assert n_blocks == (17 if name == "resnet18" else 13)


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("mlp", dict(num_layers=2, num_hidden=16), 8),
        ("vgg6a", dict(feat_mult=1 / 16, num_hidden=16, dim_in_decoder=64), 16),
        ("resnet18", dict(feat_mult=1 / 16, pre_act=True), 32),
    ],
)
def test_no_batch_norm_has_no_block_batch_norm_and_trains(name, kwargs, size):
    """The reference's --no-batch-norm: no BatchNorm in any block (an MLP or VGG has no
    batch_stats at all; a ResNet keeps only its projection shortcuts' BatchNorm), and a
    step trains every block."""
    model = build_model(name, 10, "predsim", no_batch_norm=True, **kwargs)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (B, size, size, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (B,), dtype=np.int32))
    x0 = _preprocess(images[:2], jax.random.key(0))
    tx = optax.adam(1e-3)
    state = create_train_state(model, tx, jax.random.key(1), x0, labels[:2])
    stats = {leaf for block in state.batch_stats.values() for leaf in block}
    assert stats == ({"shortcut_bn"} if name == "resnet18" else set())
    paths = [
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]
    ]
    assert not [p for p in paths if {"bn", "bn_pre"} & set(p.split("/"))]
    step = jax.jit(make_train_step(model, tx, preprocess=_preprocess, seed=0))
    new, metrics = step(state, images, labels)
    assert all(np.isfinite(float(v)) for v in jax.tree_util.tree_leaves(metrics))
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    for block, leaves in moved.items():
        assert any(jax.tree_util.tree_leaves(leaves)), block


@pytest.mark.parametrize("name", list(TINY))
def test_each_local_loss_trains_its_own_block_only(name):
    model, images, labels, state = tiny(name)
    x = _preprocess(images, jax.random.key(0))
    owners = lj.check_gradient_isolation(model, state.variables(), x, labels)
    by_block = {}
    for loss_name, paths in owners.items():
        for path in paths:
            by_block.setdefault(path.split("/")[0], set()).add(loss_name)
    # every block's parameters, the projection shortcut included, have one owner: the
    # local loss of that block (the output layer: the output loss)
    assert set(by_block) == set(state.params)
    assert all(len(v) == 1 for v in by_block.values())
    projection = next(
        k for k, paths in owners.items() if "layer2_0_conv2/shortcut_conv/kernel" in paths
    )
    assert "(layer2_0_conv2)" in projection


# ------------------------------------------------------------ final pool
def test_final_pool_default_is_the_reference_pool():
    from localjax.models import resnet, wide_resnet

    assert build_model("resnet18", 10).layers[-1] is resnet._avg_pool4
    assert build_model("resnet18", 10, final_pool="reference").layers[-1] is resnet._avg_pool4
    assert build_model("wresnet16-4", 10).layers[-1] is wide_resnet._avg_pool8
    assert build_model("wresnet16-4a", 10).layers[-1] is wide_resnet._max_pool2
    for name in ("resnet18", "wresnet16-4", "wresnet16-4a"):
        assert build_model(name, 10, final_pool="global").layers[-1] is resnet.global_avg_pool


def test_final_pool_errors_are_one_line():
    with pytest.raises(ConfigError) as e:
        build_model("resnet18", 10, final_pool="avg4")
    assert str(e.value) == (
        "unknown final_pool 'avg4'; choose one of ['reference', 'global'] (reference: the "
        "reference's final pool, its output flattened; global: the mean over H and W)."
    )
    with pytest.raises(ConfigError, match="unknown final_pool 'max'"):
        build_model("wresnet16-4", 10, final_pool="max")
    for name in ("mlp", "vgg8b"):
        with pytest.raises(ConfigError) as e:
            build_model(name, 10, final_pool="global")
        assert "\n" not in str(e.value)
        assert str(e.value).startswith(
            f"final_pool='global' applies to the ResNets and Wide ResNets; '{name}'"
        )
    from experiments.configs import default
    from localjax.training.config import model_from_config

    config = default.get_config()
    config.model, config.final_pool = "resnet18", "Global"
    with pytest.raises(ConfigError, match="unknown final_pool 'Global'"):
        model_from_config(config, 10)


@pytest.mark.parametrize(
    "name, kwargs, features",
    [
        ("resnet18", dict(), 512),
        ("resnet50", dict(), 2048),
        ("wresnet16-4", dict(), 256),
        ("wresnet16-4a", dict(), 256),
        ("resnet18", dict(feat_mult=0.25, pre_act=True), 128),
    ],
)
def test_global_head_does_not_depend_on_the_input_size(name, kwargs, features):
    """final_pool="global": the output layer takes the final map's channels at any size,
    so the inference parameter count at 64 px is that at 32 px (the local heads' pred
    decoders may still grow: their average pool keeps up to dim_in_decoder features);
    the reference's flattening head grows with the input."""
    model = build_model(name, 100, "predsim", final_pool="global", **kwargs)
    at32, at64 = (shapes_of(model, size)["params"] for size in (32, 64))
    assert at64["output"]["dense"]["kernel"].shape == (features, 100)
    assert count_params(at64)[0] == count_params(at32)[0]
    reference = build_model(name, 100, "predsim", **kwargs)
    ref32, ref64 = (shapes_of(reference, size)["params"] for size in (32, 64))
    if name != "wresnet16-4a":  # the same network at 32 px (adapted: a 2x2 max pool)
        assert count_params(ref32) == count_params(at32)
    assert count_params(ref64)[0] > count_params(at64)[0]
    flat = 4 * features if name != "wresnet16-4a" else 64 * features  # 2x2 / 8x8 maps left
    assert ref64["output"]["dense"]["kernel"].shape == (flat, 100)


def _global_tiny(size=64):
    model = build_model("resnet18", 10, "predsim", feat_mult=1 / 16, final_pool="global")
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (B, size, size, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (B,), dtype=np.int32))
    x0 = _preprocess(images[:2], jax.random.key(0))
    state = create_train_state(model, optax.adam(1e-3), jax.random.key(1), x0, labels[:2])
    return model, images, labels, state


def _random_output(variables, key):
    """The variables with a random output kernel (local modes zero-initialise it)."""
    params = dict(variables["params"])
    kernel = params["output"]["dense"]["kernel"]
    params["output"] = {
        "dense": {**params["output"]["dense"], "kernel": jax.random.normal(key, kernel.shape)}
    }
    return {**variables, "params": params}


def test_global_pool_resnet18_at_64px_forward_and_train_step():
    model, images, labels, state = _global_tiny()
    assert state.params["output"]["dense"]["kernel"].shape == (512 // 16, 10)
    variables = _random_output(state.variables(), jax.random.key(2))
    x = _preprocess(images, jax.random.key(3))
    (logits, _), captured = model.apply(
        variables, x, capture_intermediates=lambda mdl, _: mdl.name == "layer4_1_conv2"
    )
    ((last, _),) = captured["intermediates"]["layer4_1_conv2"]["__call__"]
    assert last.shape == (B, 8, 8, 32)  # 64 px: the last stage's map is 8x8
    dense = variables["params"]["output"]["dense"]
    by_hand = jnp.mean(last, axis=(1, 2)) @ dense["kernel"] + dense["bias"]
    np.testing.assert_allclose(logits, by_hand, rtol=1e-5, atol=1e-5)
    # a train step: finite metrics, every block and the output layer move
    tx = optax.adam(1e-3)
    step = jax.jit(make_train_step(model, tx, preprocess=_preprocess, seed=0))
    new, metrics = step(state, images, labels)
    assert all(np.isfinite(float(v)) for v in jax.tree_util.tree_leaves(metrics))
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    for block, leaves in moved.items():
        assert any(jax.tree_util.tree_leaves(leaves)), block


def test_global_pool_equals_the_reference_pool_at_32px():
    model, images, _, state = _global_tiny(size=32)
    reference = build_model("resnet18", 10, "predsim", feat_mult=1 / 16)
    variables = _random_output(state.variables(), jax.random.key(2))
    x = _preprocess(images, jax.random.key(3))
    np.testing.assert_allclose(
        model.apply(variables, x)[0], reference.apply(variables, x)[0], rtol=1e-5, atol=1e-5
    )


def test_global_pool_flops_and_stage_plan():
    """perf.flops counts the output layer on C features; the FLOP-balanced stage plan
    puts the global pool, a plain layer, on the last stage with the output layer."""
    from localjax.models.resnet import global_avg_pool
    from localjax.perf.flops import model_flops
    from localjax.training import stages

    b, k, c = B, 10, 512 // 16
    model = build_model("resnet18", k, "predsim", feat_mult=1 / 16, final_pool="global")
    reference = build_model("resnet18", k, "predsim", feat_mult=1 / 16)
    # local learning: the output layer's forward and weight gradient, on C vs 2x2xC inputs
    diff = model_flops(reference, b, (64, 64, 3)) - model_flops(model, b, (64, 64, 3))
    assert diff == 2 * 2 * b * (4 * c - c) * k
    at32 = build_model("resnet18", k, "predsim", feat_mult=1 / 16)
    assert model_flops(model, b, (32, 32, 3)) == model_flops(at32, b, (32, 32, 3))
    x = jax.ShapeDtypeStruct((b, 64, 64, 3), jnp.float32)
    y = jax.ShapeDtypeStruct((b,), jnp.int32)
    state = jax.eval_shape(
        lambda x, y: create_train_state(model, optax.adam(1e-3), jax.random.key(0), x, y), x, y
    )
    costs, out_cost = stages.block_flops(model, state, x, y)
    assert len(costs) == 17 and out_cost == 2 * 2 * b * c * k
    plans = stages.plan_stages(model, stages.balance_cuts(costs, 3, out_cost))
    assert [p.has_output for p in plans] == [False, False, True]
    assert plans[-1].layers[-1] == (None, global_avg_pool)
    assert sum(len(p.block_names) for p in plans) == 17
