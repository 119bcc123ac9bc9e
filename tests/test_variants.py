"""The method's variants: backprop-free `bio` (feedback alignment, fixed projections),
deep supervision (`detach=False`) and the unsupervised extras (METHOD.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from localjax import losses
from localjax.heads import HeadConfig, LocalHead
from localjax.models import build_model
from localjax.ops.feedback import fa_matmul
from localjax.training.state import create_train_state
from localjax.training.steps import make_train_step

B, D, P, K = 6, 12, 16, 5


def _rand(key, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)


# ---------------------------------------------------------------- feedback alignment
def test_fa_matmul_forward_uses_w_backward_uses_feedback():
    x, w, fb = _rand(0, (B, D)), _rand(1, (D, P)), _rand(2, (D, P))
    dy = _rand(3, (B, P))
    y, vjp = jax.vjp(fa_matmul, x, w, fb)
    np.testing.assert_allclose(y, x @ w, rtol=1e-6)
    dx, dw, dfb = vjp(dy)
    np.testing.assert_allclose(dx, dy @ fb.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, x.T @ dy, rtol=1e-5, atol=1e-6)
    assert not np.allclose(dx, dy @ w.T, atol=1e-3)  # not backprop's gradient
    np.testing.assert_array_equal(dfb, np.zeros_like(fb))


def test_fa_matmul_mixed_dtypes_give_primal_dtypes():
    x = _rand(0, (B, D)).astype(jnp.bfloat16)
    w, fb = _rand(1, (D, P)), _rand(2, (D, P)).astype(jnp.bfloat16)
    dx, dw = jax.grad(lambda x, w: jnp.sum(fa_matmul(x, w, fb).astype(jnp.float32)), (0, 1))(x, w)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32


def test_fa_matmul_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        fa_matmul(_rand(0, (B, D)), _rand(1, (D, P)), _rand(2, (D, P + 1)))
    with pytest.raises(ValueError, match=r"\[B, I\]"):
        fa_matmul(_rand(0, (B, 2, D)), _rand(1, (D, P)), _rand(2, (D, P)))


def test_bio_head_gradient_to_block_output_goes_through_feedback_not_w():
    """dL/dh through the bio pred decoder is dlogits @ Bᵀ (B fixed), not dlogits @ Wᵀ."""
    cfg = HeadConfig(loss="pred", num_classes=K, bio=True, target_proj_size=P)
    head = LocalHead(cfg)
    h = _rand(4, (B, D))
    labels = jnp.arange(B) % K
    variables = jax.jit(head.init)(jax.random.key(5), h, labels)
    # W starts at zero (as in the reference); give it values so W and B differ
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    params["decoder_kernel"] = _rand(6, (D, P))
    params["decoder_bias"] = _rand(7, (P,), 0.1)
    const = variables["constants"]
    fb, proj = const["decoder_feedback"], const["label_projection"]
    assert fb.shape == (D, P) and proj.shape == (K, P)

    def loss(h):
        return head.apply({"params": params, "constants": const}, h, labels)["loss"]

    dh = jax.jit(jax.grad(loss))(h)
    # the same gradient by hand: BCE(h W + b, (P·Y) > 0), mean over B·P entries
    logits = h @ params["decoder_kernel"] + params["decoder_bias"]
    target = (jax.nn.one_hot(labels, K) @ proj > 0).astype(jnp.float32)
    dlogits = (jax.nn.sigmoid(logits) - target) / (B * P)
    np.testing.assert_allclose(dh, dlogits @ fb.T, rtol=1e-4, atol=1e-7)
    assert not np.allclose(dh, dlogits @ params["decoder_kernel"].T, atol=1e-4)


def test_bio_head_has_no_learned_sim_projection_and_uses_projected_targets():
    cfg = HeadConfig(loss="sim", num_classes=K, bio=True, target_proj_size=P)
    head = LocalHead(cfg)
    h = _rand(8, (B, D))
    labels = jnp.arange(B) % K
    variables = head.init(jax.random.key(9), h, labels)
    assert "params" not in variables or not variables["params"]  # g is the identity
    out = head.apply(variables, h, labels)
    proj = variables["constants"]["label_projection"]
    expected = losses.sim_loss(h, jax.nn.one_hot(labels, K) @ proj)
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-6)
    assert out["logits"] is None


def test_bio_constants_never_change_while_decoder_learns():
    """B and P are fixed across steps; the FA decoder's W is trained (make_train_step)."""
    model = build_model("mlp", K, "predsim", num_layers=2, num_hidden=16, bio=True, beta=0.01)
    tx = optax.adam(1e-2)
    images = _rand(10, (8, 4, 4, 1))
    labels = jnp.arange(8) % K
    state = create_train_state(model, tx, jax.random.key(0), images[:2], labels[:2])
    before = jax.tree_util.tree_map(np.asarray, (state.constants, state.params))
    names = {
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(state.constants)[0]
    }
    assert {
        "block_dense_0/head/label_projection",
        "block_dense_0/head/decoder_feedback",
        "block_dense_1/head/label_projection",
        "block_dense_1/head/decoder_feedback",
    } <= names
    step = jax.jit(make_train_step(model, tx, seed=0))
    for _ in range(3):
        state, _ = step(state, images, labels)
    consts_after = jax.tree_util.tree_map(np.asarray, state.constants)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before[0], consts_after)
    for b in ("block_dense_0", "block_dense_1"):
        w0 = before[1][b]["head"]["decoder_kernel"]
        w1 = np.asarray(state.params[b]["head"]["decoder_kernel"])
        assert np.abs(w1 - w0).max() > 1e-4, f"{b} decoder W did not learn"
        assert "decoder_feedback" not in state.params[b]["head"]


def test_bio_conv_sim_pools_block_output():
    cfg = HeadConfig(loss="sim", num_classes=K, bio=True, dim_in_decoder=16)
    h = jax.nn.relu(_rand(11, (B, 8, 8, 4)))
    labels = jnp.arange(B) % K
    head = LocalHead(cfg)
    variables = jax.jit(head.init)(jax.random.key(12), h, labels)
    out = jax.jit(head.apply)(variables, h, labels)
    # 4 channels · 8 · 8 > 16: pooled to 4 × ceil(8/4) × ceil(8/4) = 16 features
    pooled = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 4, 4, 1), (1, 4, 4, 1), "VALID")
    proj = variables["constants"]["label_projection"]
    expected = losses.sim_loss(pooled / 16.0, jax.nn.one_hot(labels, K) @ proj)
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)


# ---------------------------------------------------------------- deep supervision
def _cross_block_grad(detach: bool):
    model = build_model("mlp", K, "predsim", num_layers=2, num_hidden=8, detach=detach)
    x = _rand(13, (B, 3, 3, 1))
    labels = jnp.arange(B) % K
    variables = jax.jit(model.init)(jax.random.key(1), x, labels)

    @jax.jit
    @jax.grad
    def block1_loss(params):
        (_, local), _ = model.apply(
            {**variables, "params": params}, x, labels, train=True, mutable=["batch_stats"]
        )
        return local[1]["loss"]

    grads = block1_loss(variables["params"])
    return grads["block_dense_0"]


def test_deep_supervision_sends_later_local_losses_to_earlier_blocks():
    g = _cross_block_grad(detach=False)
    assert max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(g)) > 1e-6


def test_detach_gives_exactly_zero_cross_block_gradient():
    g = _cross_block_grad(detach=True)
    for a in jax.tree_util.tree_leaves(g):
        np.testing.assert_array_equal(a, np.zeros_like(a))


# ---------------------------------------------------------------- unsupervised extras
@pytest.mark.parametrize("unsup", ["sim", "recon"])
def test_unsupervised_term_mixes_with_alpha(unsup):
    alpha = 0.3
    h_in = _rand(14, (B, D))
    h = jax.nn.relu(_rand(15, (B, D)))
    labels = jnp.arange(B) % K
    mixed = LocalHead(HeadConfig(loss="predsim", num_classes=K, unsup=unsup, alpha=alpha))
    variables = mixed.init(jax.random.key(16), h, labels, x=h_in)
    out = mixed.apply(variables, h, labels, x=h_in)
    sup_only = LocalHead(HeadConfig(loss="predsim", num_classes=K))
    sup_vars = {"params": {k: v for k, v in variables["params"].items() if k != "recon_decoder"}}
    sup = sup_only.apply(sup_vars, h, labels)["loss"]
    if unsup == "sim":
        z = h @ variables["params"]["sim_proj"]["kernel"]
        un = losses.sim_loss(z, h_in)
    else:
        dec = variables["params"]["recon_decoder"]
        x_hat = jax.nn.relu(h @ dec["kernel"] + dec["bias"])
        un = jnp.mean((x_hat - h_in) ** 2)
    np.testing.assert_allclose(out["loss"], alpha * un + (1 - alpha) * sup, rtol=1e-5)
    # the first layer does not reconstruct the network input
    first = mixed.apply(variables, h, labels, x=h_in, first_layer=True)["loss"]
    if unsup == "recon":
        np.testing.assert_allclose(first, (1 - alpha) * sup, rtol=1e-6)


def test_unsupervised_terms_need_the_block_input():
    head = LocalHead(HeadConfig(loss="pred", num_classes=K, unsup="sim", alpha=0.5))
    with pytest.raises(ValueError, match="block input"):
        head.init(jax.random.key(0), _rand(0, (B, D)), jnp.arange(B) % K)


def test_conv_recon_decoder_maps_block_output_back_to_block_input():
    head = LocalHead(HeadConfig(loss="pred", num_classes=K, unsup="recon", alpha=0.5))
    h = jax.nn.relu(_rand(17, (B, 4, 4, 6)))
    x = _rand(18, (B, 4, 4, 3))
    labels = jnp.arange(B) % K
    out, variables = jax.jit(lambda h, x: head.init_with_output(jax.random.key(2), h, labels, x=x))(
        h, x
    )
    kernel = variables["params"]["recon_decoder"]["kernel"]
    assert kernel.shape == (3, 3, 6, 3)  # C_out -> C_in, 3x3
    # PyTorch's ConvTranspose2d(6, 3, 3) init: U(±1/sqrt(9·C_in)) = U(±1/sqrt(27)), not
    # the ±1/sqrt(9·6) a forward conv from 6 channels would get
    top = float(jnp.abs(kernel).max())
    assert 1 / np.sqrt(54) < top <= 1 / np.sqrt(27)
    assert float(jnp.abs(variables["params"]["recon_decoder"]["bias"]).max()) <= 1 / np.sqrt(27)
    assert bool(jnp.isfinite(out["loss"])) and float(out["loss"]) > 0


def test_alpha_scales_the_supervised_loss_without_an_unsupervised_term():
    """As in the reference: loss = α·0 + (1 − α)·supervised when unsup is none."""
    h = _rand(19, (B, D))
    labels = jnp.arange(B) % K
    plain = LocalHead(HeadConfig(loss="pred", num_classes=K))
    scaled = LocalHead(HeadConfig(loss="pred", num_classes=K, alpha=0.25))
    variables = plain.init(jax.random.key(3), h, labels)
    a = plain.apply(variables, h, labels)["loss"]
    b = scaled.apply(variables, h, labels)["loss"]
    np.testing.assert_allclose(b, 0.75 * a, rtol=1e-6)
