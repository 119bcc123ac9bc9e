"""Linen blocks with local heads (Nøkland & Eidnes 2019, Fig. 1; METHOD.md, Network and
Local losses).

Usage::

    head = HeadConfig(loss="predsim", num_classes=10)
    block = LocalConv(features=128, head=head)
    out, local = block.apply(variables, x, labels, train=True,
                             rngs={"dropout": key}, mutable=["batch_stats"])[0]
    local["loss"]        # scalar local loss of this block
    local["logits"]      # [B, K] local prediction (None for sim-only or bio)

A block returns `(out, local)`: `out` is the (dropped-out) activation passed on to the
next block; `local` is `None` when no labels are given (evaluation, or the backprop
baseline built with `head=None`), else a dict of this block's local loss terms computed
on the activation *before* dropout.

Letters: B batch, D features, H/W spatial size, C channels (NHWC), K classes,
P target projection size of the `bio` variant.

Variable collections: `params` (trained), `batch_stats` (BatchNorm running averages),
`constants` (fixed random matrices of the `bio` variant: never trained, never changed).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from localjax import losses
from localjax.feedback import fa_matmul

__all__ = [
    "LOSSES",
    "NONLINEARITIES",
    "HeadConfig",
    "LocalHead",
    "LocalDense",
    "LocalConv",
    "decoder_pool_geometry",
    "torch_kernel_init",
    "torch_bias_init",
    "activation",
]

LOSSES = ("pred", "sim", "predsim")
UNSUPERVISED = ("none", "sim", "recon")
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 in Flax's convention
BN_EPS = 1e-5


# ---------------------------------------------------------------- initialisers
def torch_kernel_init() -> Callable:
    """PyTorch's default weight init for Linear/Conv2d: U(−1/√fan_in, 1/√fan_in).

    Returns:
      A Flax initializer `(key, shape, dtype) -> array`; fan_in is read from the
      kernel shape (`[I, O]` dense, `[kh, kw, I, O]` conv).

    Raises:
      Nothing of its own (Flax's initializer raises when called on a shape it cannot
      read a fan_in from).

    Implements the reference init (METHOD.md, Training: reference PyTorch default init).
    """
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
    """PyTorch's default bias init: U(−1/√fan_in, 1/√fan_in).

    Args:
      fan_in: number of inputs of the layer (I, or kh·kw·I for a conv); > 0.

    Returns:
      A Flax initializer `(key, shape, dtype) -> array`.

    Raises:
      ValueError: if `fan_in` is not positive.

    Implements the reference init (METHOD.md, Training: reference PyTorch default init).
    """
    if fan_in <= 0:
        raise ValueError(f"torch_bias_init needs fan_in > 0; got {fan_in}.")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


NONLINEARITIES = {
    "relu": nn.relu,
    "leakyrelu": functools.partial(nn.leaky_relu, negative_slope=0.01),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The block nonlinearity by name (METHOD.md: relu, or leakyrelu with slope 0.01).

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if name not in NONLINEARITIES:
        raise ValueError(f"unknown nonlinearity {name!r}; choose one of {sorted(NONLINEARITIES)}.")
    return NONLINEARITIES[name]


# ---------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """What a block's local heads compute (METHOD.md, Local losses; Backprop-free variant).

    Attributes:
      loss: supervised local loss, one of `pred`, `sim`, `predsim`.
      num_classes: K, number of classes (> 1).
      beta: predsim weight of the similarity matching loss (paper 0.99; bio 0.01).
      dim_in_decoder: largest input size of a conv block's pred decoder; the average
        pool is sized to fit it (`decoder_pool_geometry`). Ignored for dense blocks.
      bio: the backprop-free variant (METHOD.md, Backprop-free variant): fixed random
        label projection P, feedback-alignment decoder, binary cross-entropy, no learned
        sim projection.
      target_proj_size: P, the label projection size of `bio` (paper 128).
      unsup: unsupervised extra term: `none`, `sim` (match S of the block input) or
        `recon` (reconstruct the block input; skipped in the first block).
      alpha: weight of the unsupervised term: loss = α·unsup + (1 − α)·supervised.

    Raises:
      ValueError: on an unknown loss or unsup name, or a value out of range.
    """

    loss: str = "predsim"
    num_classes: int = 10
    beta: float = 0.99
    dim_in_decoder: int = 4096
    bio: bool = False
    target_proj_size: int = 128
    unsup: str = "none"
    alpha: float = 0.0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(
                f"unknown local loss {self.loss!r}; choose one of {list(LOSSES)} "
                "(or build the model with loss='backprop' for the baseline)."
            )
        if self.unsup not in UNSUPERVISED:
            raise ValueError(
                f"unknown unsupervised loss {self.unsup!r}; choose one of {list(UNSUPERVISED)}."
            )
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {self.num_classes}.")
        if not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"beta and alpha must be in [0, 1]; got {self.beta}, {self.alpha}.")
        if self.dim_in_decoder < 1 or self.target_proj_size < 1:
            raise ValueError("dim_in_decoder and target_proj_size must be >= 1.")

    @property
    def uses_pred(self) -> bool:
        """Whether the block has a prediction decoder (`pred` or `predsim`)."""
        return self.loss in ("pred", "predsim")

    @property
    def uses_sim(self) -> bool:
        """Whether S(h) is computed (`sim`, `predsim`, or the unsupervised `sim` term)."""
        return self.loss in ("sim", "predsim") or self.unsup == "sim"


def decoder_pool_geometry(
    channels: int, height: int, width: int, dim_in_decoder: int
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Average-pool geometry in front of a conv block's pred decoder.

    Starting from a 1×1 kernel, the kernel height is doubled, then the width if still
    needed, while C·ceil(H/kh)·ceil(W/kw) > dim_in_decoder and kh < H. Padding centres
    the ceil-sized output: (kh·(ceil(H/kh) − H//kh))//2, likewise for width. The pool
    counts zero padding in its average (PyTorch's AvgPool2d default).

    Args:
      channels: C of the block output.
      height: H of the block output.
      width: W of the block output.
      dim_in_decoder: the largest allowed flattened pool output C·oh·ow.

    Returns:
      `((kh, kw), (ph, pw), (oh, ow))`: kernel (= stride), padding per side, output size.
      E.g. (128, 28, 28, 1024) -> ((16, 8), (8, 4), (2, 4)). All Python ints.

    Raises:
      Nothing of its own; it does not validate its arguments (non-positive sizes give a
      1×1 kernel or a meaningless geometry).

    Implements the pool of the `pred` decoder (METHOD.md, Local losses: `pred`).
    """
    kh, kw = 1, 1
    oh, ow = height, width
    dim = channels * oh * ow
    while dim > dim_in_decoder and kh < height:
        kh *= 2
        oh = math.ceil(height / kh)
        dim = channels * oh * ow
        if dim > dim_in_decoder:
            kw *= 2
            ow = math.ceil(width / kw)
            dim = channels * oh * ow
    ph = (kh * (oh - height // kh)) // 2
    pw = (kw * (ow - width // kw)) // 2
    return (kh, kw), (ph, pw), (oh, ow)


def _decoder_pool(h: jax.Array, dim_in_decoder: int) -> jax.Array:
    """[B, H, W, C] -> [B, oh, ow, C] average pool of `decoder_pool_geometry`."""
    _, height, width, channels = h.shape
    kernel, pad, _ = decoder_pool_geometry(channels, height, width, dim_in_decoder)
    if kernel == (1, 1):
        return h
    return nn.avg_pool(
        h,
        kernel,
        strides=kernel,
        padding=((pad[0], pad[0]), (pad[1], pad[1])),
        count_include_pad=True,
    )


def _fixed_uniform(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)


# ---------------------------------------------------------------- local heads
class LocalHead(nn.Module):
    """The local heads of one block and its local loss.

    Attach it to the output `h` (before dropout) of any Linen module:
    `sim` uses a learned no-bias projection g (dense D×D, or conv 3×3 C→C) and matches
    S(g(h)) to S(Y); `pred` average-pools a feature map (`decoder_pool_geometry`),
    flattens it and applies a zero-initialised dense decoder trained with cross-entropy;
    `predsim` mixes them with β. With `bio`, S(P·Y) is matched by S of the (pooled) h
    itself and the decoder is a feedback-alignment layer trained with BCE against
    (P·Y) > 0.

    Attributes:
      config: a `HeadConfig`.
      nonlin: name of the block's nonlinearity (used by the `recon` decoder).

    Call: `head(h, labels, x=None, first_layer=False)` with `h` `[B, D]` or `[B, H, W, C]`
    float and `labels` `[B]` int in [0, K); returns a dict of float32 scalars `loss`,
    `pred`, `sim` and `logits` (`[B, K]` float32 or None); see `__call__`.

    Raises:
      ValueError: `h` not 2-D or 4-D, `labels` not `[B]` or (concrete) outside [0, K),
        `x` missing for an unsupervised term, or an unknown `nonlin` with `recon`.
      TypeError: `labels` not integer (from `losses.check_labels`).

    Implements the heads and local losses (METHOD.md, Local losses: `sim`, `pred`,
    `predsim`, unsupervised extras; Backprop-free variant).
    """

    config: HeadConfig
    nonlin: str = "relu"

    @nn.compact
    def __call__(
        self,
        h: jax.Array,
        labels: jax.Array,
        x: jax.Array | None = None,
        first_layer: bool = False,
    ) -> dict[str, Any]:
        """Local loss terms of a block.

        Args:
          h: `[B, D]` or `[B, H, W, C]` float block output before dropout.
          labels: `[B]` int class indices in [0, K).
          x: the block's (cut) input, needed only for `unsup` in {sim, recon}.
          first_layer: skip the `recon` term (the reference does not reconstruct the
            network input).

        Returns:
          dict with float32 scalars `loss` (this block's total local loss), `pred`, `sim`
          (0 where unused) and `logits` (`[B, K]`, or None for sim-only and `bio`).

        Raises:
          ValueError: if `h` is not 2-D or 4-D, `labels` is not `[B]` or (concrete
            labels) outside [0, K), or `x` is missing for an unsupervised term.
          TypeError: if `labels` is not an integer array.
        """
        cfg = self.config
        if h.ndim not in (2, 4):
            raise ValueError(
                "LocalHead needs a block output [B, D] or [B, H, W, C]; got shape "
                f"{tuple(h.shape)}. Flatten other outputs to [B, D] first."
            )
        if labels.shape != (h.shape[0],):
            raise ValueError(
                f"labels must be [B] = [{h.shape[0]}] class indices; got shape "
                f"{tuple(labels.shape)}."
            )
        losses.check_labels(
            labels,
            cfg.num_classes,
            where=f"local head of {getattr(self.parent, 'name', None) or 'a block'}",
        )
        is_map = h.ndim == 4
        onehot = jax.nn.one_hot(labels, cfg.num_classes, dtype=jnp.float32)
        sim_target = onehot
        if cfg.bio:
            proj = self.variable(
                "constants",
                "label_projection",
                _fixed_uniform(cfg.num_classes),
                self.make_rng("params") if self.is_initializing() else None,
                (cfg.num_classes, cfg.target_proj_size),
            ).value
            sim_target = onehot @ proj  # [B, K] -> [B, P]

        zero = jnp.zeros((), jnp.float32)
        terms = {"pred": zero, "sim": zero, "logits": None}

        z_sim = None
        if cfg.uses_sim:
            if cfg.bio:
                z_sim = _decoder_pool(h, cfg.dim_in_decoder) if is_map else h
            elif is_map:
                z_sim = nn.Conv(
                    h.shape[-1],
                    (3, 3),
                    padding=1,
                    use_bias=False,
                    kernel_init=torch_kernel_init(),
                    dtype=h.dtype,
                    name="sim_proj",
                )(h)
            else:
                z_sim = nn.Dense(
                    h.shape[-1],
                    use_bias=False,
                    kernel_init=torch_kernel_init(),
                    dtype=h.dtype,
                    name="sim_proj",
                )(h)
            if cfg.loss in ("sim", "predsim"):
                terms["sim"] = losses.sim_loss(z_sim, sim_target)

        if cfg.uses_pred:
            hp = _decoder_pool(h, cfg.dim_in_decoder) if is_map else h
            hp = hp.reshape(hp.shape[0], -1)  # [B, ...] -> [B, D']
            fan_in = hp.shape[-1]
            if cfg.bio:
                w = self.param(
                    "decoder_kernel", nn.initializers.zeros, (fan_in, cfg.target_proj_size)
                )
                b = self.param("decoder_bias", nn.initializers.zeros, (cfg.target_proj_size,))
                feedback = self.variable(
                    "constants",
                    "decoder_feedback",
                    _fixed_uniform(fan_in),
                    self.make_rng("params") if self.is_initializing() else None,
                    (fan_in, cfg.target_proj_size),
                ).value
                logits = fa_matmul(hp, w.astype(hp.dtype), feedback.astype(hp.dtype))
                logits = logits + b.astype(hp.dtype)
                terms["pred"] = losses.bce_loss(logits, losses.bio_pred_targets(sim_target))
            else:
                # zero weight as in the reference; its bias keeps PyTorch's default init
                logits = nn.Dense(
                    cfg.num_classes,
                    kernel_init=nn.initializers.zeros,
                    bias_init=torch_bias_init(fan_in),
                    dtype=hp.dtype,
                    name="decoder",
                )(hp)
                terms["pred"] = losses.pred_loss(logits, labels)
                terms["logits"] = logits.astype(jnp.float32)

        if cfg.loss == "pred":
            supervised = terms["pred"]
        elif cfg.loss == "sim":
            supervised = terms["sim"]
        else:
            supervised = losses.predsim_loss(terms["pred"], terms["sim"], cfg.beta)

        # loss = α·unsup + (1 − α)·supervised, as the reference computes it for every
        # setting (unsup = 0 when off, so α alone scales the supervised loss)
        loss = supervised
        if cfg.unsup != "none":
            if x is None:
                raise ValueError(
                    f"unsup={cfg.unsup!r} needs the block input x passed to LocalHead."
                )
            unsup = self._unsupervised(h, x, z_sim, first_layer)
            loss = cfg.alpha * unsup + (1.0 - cfg.alpha) * supervised
        elif cfg.alpha:
            loss = (1.0 - cfg.alpha) * supervised
        terms["loss"] = loss
        return terms

    def _unsupervised(self, h, x, z_sim, first_layer):
        """α-weighted extra term: S(g(h)) vs S(x), or reconstruction MSE of x."""
        x = jax.lax.stop_gradient(x)
        if self.config.unsup == "sim":
            return losses.sim_loss(z_sim, x)
        if first_layer:
            return jnp.zeros((), jnp.float32)
        if h.ndim == 4:
            # the reference's decoder is ConvTranspose2d(C_out -> C_in), whose PyTorch
            # init bound is 1/sqrt(9·C_in) (its fan_in is read from the C_in axis); a 3x3,
            # stride 1, padding 1 transposed conv is a conv of the same shape, and the
            # uniform init is symmetric, so a Conv with that bound is the same layer
            decoder = nn.Conv(
                x.shape[-1],
                (3, 3),
                padding=1,
                kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform"),
                bias_init=torch_bias_init(9 * x.shape[-1]),
                name="recon_decoder",
            )
            x_hat = decoder(h)
        else:
            x = x.reshape(x.shape[0], -1)
            x_hat = nn.Dense(
                x.shape[-1],
                kernel_init=torch_kernel_init(),
                bias_init=torch_bias_init(h.shape[-1]),
                name="recon_decoder",
            )(h)
        x_hat = activation(self.nonlin)(x_hat)
        return jnp.mean(jnp.square((x_hat - x).astype(jnp.float32)))


# ---------------------------------------------------------------- blocks
class LocalDense(nn.Module):
    """Dense block: Linear → BatchNorm → nonlinearity → dropout, with local heads.

    Attributes:
      features: D_out.
      head: `HeadConfig`, or None for a plain block (backprop baseline).
      nonlin: `relu` or `leakyrelu`.
      dropout: dropout rate on the passed-on output.
      first_layer: whether this is the network's first block (no `recon` term).
      dtype: compute dtype (parameters stay float32).

    Call: `block(x, labels=None, *, train=False)` with `x` `[B, ...]` float (flattened to
    `[B, D_in]`) and `labels` `[B]` int or None; returns `(out, local)`, `out`
    `[B, features]` of `dtype`, `local` as in `LocalHead` or None.

    Raises:
      ValueError: an unknown `nonlin`, or the `LocalHead` errors (bad labels, missing
        input for an unsupervised term).
      TypeError: non-integer labels (from `LocalHead`).

    Implements the dense block (METHOD.md, Network: dense block; Local losses).
    """

    features: int
    head: HeadConfig | None = None
    nonlin: str = "relu"
    dropout: float = 0.0
    first_layer: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool = False):
        """Args: x `[B, ...]` float (flattened to `[B, D_in]`); labels `[B]` int or None.

        Returns:
          `(out [B, features], local)`; `local` as in `LocalHead`, or None.
        """
        x = x.reshape(x.shape[0], -1)  # [B, ...] -> [B, D_in]
        h = nn.Dense(
            self.features,
            kernel_init=torch_kernel_init(),
            bias_init=torch_bias_init(x.shape[-1]),
            dtype=self.dtype,
            name="dense",
        )(x)
        h = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPS,
            dtype=self.dtype,
            name="bn",
        )(h)
        h = activation(self.nonlin)(h)
        out = nn.Dropout(self.dropout, deterministic=not train)(h)
        return out, _local_terms(self, h, labels, x)


class LocalConv(nn.Module):
    """Conv block: Conv → BatchNorm → nonlinearity → channel dropout, with local heads.

    Attributes:
      features: C_out.
      head: `HeadConfig`, or None for a plain block (backprop baseline).
      nonlin: `relu` or `leakyrelu`.
      dropout: rate of whole-feature-map dropout (PyTorch Dropout2d) on the output.
      kernel_size, stride, padding: the conv geometry (3, 1, 1; STL-10's first: 7, 2, 3).
      first_layer: whether this is the network's first block (no `recon` term).
      dtype: compute dtype (parameters stay float32).

    Call: `block(x, labels=None, *, train=False)` with `x` `[B, H, W, C_in]` float and
    `labels` `[B]` int or None; returns `(out, local)`, `out` `[B, H', W', features]` of
    `dtype`, `local` as in `LocalHead` or None.

    Raises:
      ValueError: `x` not 4-D, an unknown `nonlin`, or the `LocalHead` errors (bad
        labels, missing input for an unsupervised term).
      TypeError: non-integer labels (from `LocalHead`).

    Implements the conv block (METHOD.md, Network: conv block; Local losses).
    """

    features: int
    head: HeadConfig | None = None
    nonlin: str = "relu"
    dropout: float = 0.0
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    first_layer: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool = False):
        """Args: x `[B, H, W, C_in]` float; labels `[B]` int or None.

        Returns:
          `(out [B, H', W', features], local)`; `local` as in `LocalHead`, or None.

        Raises:
          ValueError: if `x` is not 4-D.
        """
        if x.ndim != 4:
            raise ValueError(f"LocalConv expects [B, H, W, C] input; got shape {tuple(x.shape)}.")
        k = self.kernel_size
        h = nn.Conv(
            self.features,
            (k, k),
            strides=self.stride,
            padding=self.padding,
            kernel_init=torch_kernel_init(),
            bias_init=torch_bias_init(k * k * x.shape[-1]),
            dtype=self.dtype,
            name="conv",
        )(x)
        h = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPS,
            dtype=self.dtype,
            name="bn",
        )(h)
        h = activation(self.nonlin)(h)
        # Dropout2d: one mask value per (example, channel), broadcast over H and W
        out = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(h)
        return out, _local_terms(self, h, labels, x)


def _local_terms(block, h, labels, x):
    """Runs the block's head when it has one and labels are given, else None."""
    if block.head is None or labels is None:
        return None
    head = LocalHead(block.head, nonlin=block.nonlin, name="head")
    return head(h, labels, x=x, first_layer=block.first_layer)
