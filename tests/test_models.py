"""Networks: parameter counts equal the reference's, shapes, and the cut between blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localjax.blocks import LocalConv, LocalDense
from localjax.models import build_model
from localjax.network import count_params


def shapes_of(model, x_shape, batch=2):
    x = jax.ShapeDtypeStruct((batch, *x_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return jax.eval_shape(lambda x, y: model.init({"params": jax.random.key(0)}, x, y), x, y)


@pytest.mark.parametrize(
    "name, kwargs, inference, total",
    [
        ("mlp", {}, 2_919_434, 6_095_912),
        ("vgg8b", dict(dim_in_decoder=1024), 7_328_266, 16_853_584),
    ],
)
def test_param_counts_equal_reference(name, kwargs, inference, total):
    local = shapes_of(build_model(name, 10, "predsim", **kwargs), (28, 28, 1))
    assert count_params(local["params"]) == (inference, total)
    backprop = shapes_of(build_model(name, 10, "backprop", **kwargs), (28, 28, 1))
    assert count_params(backprop["params"]) == (inference, inference)  # no heads built


@pytest.mark.parametrize("size, flat", [(28, 512), (32, 2048)])
def test_vgg8b_shapes(size, flat):
    model = build_model("vgg8b", 10, "predsim", dim_in_decoder=1024)
    v = shapes_of(model, (size, size, 1))
    assert v["params"]["block_dense_0"]["dense"]["kernel"].shape == (flat, 1024)
    x = jax.ShapeDtypeStruct((3, size, size, 1), jnp.float32)
    logits, local = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert len(local) == 7 and all(t is None for t in local)  # 6 conv + 1 dense block


def test_output_layer_zero_init_only_in_local_modes():
    x, y = jnp.zeros((2, 28, 28, 1)), jnp.zeros(2, jnp.int32)
    for loss, zero in (("predsim", True), ("backprop", False)):
        v = build_model("mlp", 10, loss).init({"params": jax.random.key(0)}, x, y)
        kernel = v["params"]["output"]["dense"]["kernel"]
        assert bool(jnp.all(kernel == 0)) == zero


def unknown(name, loss):
    return lambda: build_model(name, 10, loss)


@pytest.mark.parametrize(
    "call, match",
    [(unknown("resnet9", "predsim"), "unknown model"), (unknown("mlp", "global"), "unknown loss")],
)
def test_unknown_model_or_loss(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------ gradient isolation
TINY = {
    "mlp": (dict(num_layers=3, num_hidden=16), (8, 8, 1)),
    "vgg8b": (dict(feat_mult=1 / 16, num_hidden=16, dim_in_decoder=64), (16, 16, 3)),
}


def tiny_setup(name, loss="predsim", **extra):
    kwargs, shape = TINY[name]
    model = build_model(name, 4, loss, **kwargs, **extra)
    x = jax.random.normal(jax.random.key(1), (6, *shape))
    y = jnp.array([0, 1, 2, 3, 0, 1])
    variables = model.init({"params": jax.random.key(2)}, x, y)
    return model, variables, x, y


def local_losses(model, variables, x, y):
    def f(params):
        (logits, local), _ = model.apply(
            {**variables, "params": params}, x, y, train=True, mutable=["batch_stats"]
        )
        return [t["loss"] for t in local if t is not None], logits

    return f


def block_names(params):
    return [k for k in params if k.startswith("block_")]


@pytest.mark.parametrize(
    "name, loss", [("mlp", "pred"), ("mlp", "sim"), ("mlp", "predsim"), ("vgg8b", "predsim")]
)
def test_local_loss_reaches_only_its_own_block(name, loss):
    model, variables, x, y = tiny_setup(name, loss)
    f = local_losses(model, variables, x, y)
    names = block_names(variables["params"])
    # row k of every leaf: d(local loss of block k) / d(leaf), all blocks in one jit
    jac = jax.jit(jax.jacrev(lambda p: jnp.stack(f(p)[0])))(variables["params"])
    for k, own in enumerate(names):
        for other, g in jac.items():
            leaves = [leaf[k] for leaf in jax.tree_util.tree_leaves(g)]
            if other == own:
                assert any(bool(jnp.any(leaf != 0)) for leaf in leaves), own
            else:
                assert all(bool(jnp.all(leaf == 0)) for leaf in leaves), (own, other)


@pytest.mark.parametrize("loss, extra", [("backprop", {}), ("predsim", dict(detach=False))])
def test_backprop_and_deep_supervision_do_reach_earlier_blocks(loss, extra):
    model, variables, x, y = tiny_setup("mlp", loss, **extra)
    f = local_losses(model, variables, x, y)

    def last_loss(p):
        losses, logits = f(p)
        if losses:  # deep supervision: the last block's local loss (output layer starts at 0)
            return losses[-1]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), y])

    grads = jax.grad(last_loss)(variables["params"])
    first = jax.tree_util.tree_leaves(grads["block_dense_0"])
    assert any(bool(jnp.any(leaf != 0)) for leaf in first), loss


@pytest.mark.parametrize("name", ["mlp", "vgg8b"])
def test_fused_gradient_equals_each_block_trained_alone(name):
    model, variables, x, y = tiny_setup(name)
    params, stats = variables["params"], variables["batch_stats"]

    def total(p):
        losses, _ = local_losses(model, variables, x, y)(p)
        return sum(losses)

    fused = jax.grad(total)(params)

    # replay the forward pass block by block, training each one alone on its cut input
    h = x
    for bname in block_names(params):
        block = _standalone_block(model, bname, params[bname], h)
        bvars = {"params": params[bname], "batch_stats": stats[bname]}

        def alone(bp, h=h, block=block, bvars=bvars):
            (out, terms), _ = block.apply(
                {**bvars, "params": bp}, h, y, train=True, mutable=["batch_stats"]
            )
            return terms["loss"], out

        (_, out), g = jax.value_and_grad(alone, has_aux=True)(params[bname])
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, fused[bname]
        )
        h = out
        if name == "vgg8b":
            h = _after_block(name, bname, h)


def _standalone_block(model, bname, bparams, h):
    built = dict(model.named_layers())[bname]  # its settings; the block is rebuilt alone
    head, common = built.head, dict(nonlin=built.nonlin, dropout=built.dropout)
    if "dense" in bname:
        return LocalDense(
            bparams["dense"]["kernel"].shape[1],
            head=head,
            first_layer=bname.endswith("_0"),
            **common,
        )
    return LocalConv(
        bparams["conv"]["kernel"].shape[-1],
        head=head,
        first_layer=bname == "block_conv_0",
        **common,
    )


def _after_block(config, bname, h):
    """The plain layers (max-pool 'M', flatten) that follow a conv block in vgg8b."""
    from localjax.models import VGG_CONFIGS

    cfg = VGG_CONFIGS[config]
    if not bname.startswith("block_conv_"):
        return h
    i = int(bname.rsplit("_", 1)[1])
    if i + 1 < len(cfg) and cfg[i + 1] == "M":
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    if i + 2 >= len(cfg) or all(c == "M" for c in cfg[i + 1 :]):
        h = h.reshape(h.shape[0], -1)
    return h
