"""Local heads: what each block learns from (Nøkland & Eidnes 2019, Fig. 1; METHOD.md,
Local losses and Backprop-free variant).

Usage::

    cfg = HeadConfig(loss="predsim", num_classes=10)
    terms = LocalHead(cfg).apply(variables, h, labels)   # h: a block output before dropout
    terms["loss"]     # float32 scalar, this block's local loss
    terms["logits"]   # [B, K] local prediction (None for sim-only and bio)

A head sees the block output h and the labels, never the next block: its loss trains the
block it is attached to and nothing else (the cut before every block is `network.cut`).

Letters: B batch, D features, H/W spatial size, C channels (NHWC), K classes,
P target projection size of the `bio` variant.

Variable collections: `params` (the sim projection and the pred decoder), `constants`
(fixed random matrices of `bio`: never trained, never changed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from localjax import losses
from localjax.errors import ConfigError
from localjax.ops.feedback import fa_matmul
from localjax.torch_defaults import activation, fixed_uniform, torch_bias_init, torch_kernel_init

__all__ = ["LOSSES", "UNSUPERVISED", "HeadConfig", "LocalHead", "decoder_pool_geometry"]

LOSSES = ("pred", "sim", "predsim")
UNSUPERVISED = ("none", "sim", "recon")


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
      similarity_std: S() of a feature map uses each channel's standard deviation over
        space (the reference's default); False flattens the map instead (the
        reference's `--no-similarity-std`).

    Raises:
      ConfigError (a ValueError): on an unknown loss or unsup name, or a value out of range.
    """

    loss: str = "predsim"
    num_classes: int = 10
    beta: float = 0.99
    dim_in_decoder: int = 4096
    bio: bool = False
    target_proj_size: int = 128
    unsup: str = "none"
    alpha: float = 0.0
    similarity_std: bool = True

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(
                f"unknown local loss {self.loss!r}; choose one of {list(LOSSES)} "
                "(or build the model with loss='backprop' for the baseline)."
            )
        if self.unsup not in UNSUPERVISED:
            raise ConfigError(
                f"unknown unsupervised loss {self.unsup!r}; choose one of {list(UNSUPERVISED)}."
            )
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2; got {self.num_classes}.")
        if not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"beta and alpha must be in [0, 1]; got {self.beta}, {self.alpha}.")
        if self.dim_in_decoder < 1 or self.target_proj_size < 1:
            raise ConfigError("dim_in_decoder and target_proj_size must be >= 1.")

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


class LocalHead(nn.Module):
    """The local heads of one block and its local loss.

    Attach it to the output `h` (before dropout) of any Linen module:
    `sim` uses a learned no-bias projection g (dense D×D, or conv 3×3 C→C) and matches
    S(g(h)) to S(Y); `pred` average-pools a feature map (`decoder_pool_geometry`),
    flattens it and applies a zero-initialised dense decoder trained with cross-entropy;
    `predsim` mixes them with β. With `bio`, S(P·Y) is matched by S of the (pooled) h
    itself and the decoder is a feedback-alignment layer trained with BCE against
    (P·Y) > 0. One method per term: `_targets`, `_sim`, `_pred` / `_bio_pred`, `_unsup`.

    Attributes:
      config: a `HeadConfig`.
      nonlin: name of the block's nonlinearity (used by the `recon` decoder).

    Call: `head(h, labels, x=None, first_layer=False)` with `h` `[B, D]` or `[B, H, W, C]`
    float and `labels` `[B]` int in [0, K); returns a dict of float32 scalars `loss`,
    `pred`, `sim` and `logits` (`[B, K]` float32 or None); see `__call__`.

    Raises:
      ValueError: `h` not 2-D or 4-D, `labels` not `[B]` or (concrete) outside [0, K),
        `x` missing for an unsupervised term.
      ConfigError: an unknown `nonlin` with `recon`.
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
        self._check_inputs(h, labels, x)
        # the order of the calls below is the order of the random draws at init
        sim_target = self._targets(labels)
        zero = jnp.zeros((), jnp.float32)
        terms = {"pred": zero, "sim": zero, "logits": None}
        z_sim = self._sim_features(h) if cfg.uses_sim else None
        if cfg.loss in ("sim", "predsim"):
            terms["sim"] = losses.sim_loss(z_sim, sim_target, cfg.similarity_std)
        if cfg.uses_pred and cfg.bio:
            terms["pred"] = self._bio_pred(h, sim_target)
        elif cfg.uses_pred:
            terms["pred"], terms["logits"] = self._pred(h, labels)
        supervised = {
            "pred": terms["pred"],
            "sim": terms["sim"],
            "predsim": losses.predsim_loss(terms["pred"], terms["sim"], cfg.beta),
        }[cfg.loss]
        # loss = α·unsup + (1 − α)·supervised, as the reference computes it for every
        # setting (unsup = 0 when off, so α alone scales the supervised loss)
        unsup = self._unsup(h, x, z_sim, first_layer) if cfg.unsup != "none" else 0.0
        terms["loss"] = cfg.alpha * unsup + (1.0 - cfg.alpha) * supervised
        return terms

    def _check_inputs(self, h, labels, x) -> None:
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
        if cfg.unsup != "none" and x is None:
            raise ValueError(f"unsup={cfg.unsup!r} needs the block input x passed to LocalHead.")

    def _targets(self, labels: jax.Array) -> jax.Array:
        """The similarity target: one-hot Y `[B, K]`, or P·Y `[B, P]` for `bio`."""
        cfg = self.config
        onehot = jax.nn.one_hot(labels, cfg.num_classes, dtype=jnp.float32)
        if not cfg.bio:
            return onehot
        proj = self.variable(
            "constants",
            "label_projection",
            fixed_uniform(cfg.num_classes),
            self.make_rng("params") if self.is_initializing() else None,
            (cfg.num_classes, cfg.target_proj_size),
        ).value
        return onehot @ proj  # [B, K] -> [B, P]

    def _sim_features(self, h: jax.Array) -> jax.Array:
        """What S() is taken of: g(h) (learned no-bias projection), or for `bio` the
        (pooled) h itself."""
        cfg = self.config
        if cfg.bio:
            return _decoder_pool(h, cfg.dim_in_decoder) if h.ndim == 4 else h
        if h.ndim == 4:
            proj = nn.Conv(
                h.shape[-1],
                (3, 3),
                padding=1,
                use_bias=False,
                kernel_init=torch_kernel_init(),
                dtype=h.dtype,
                name="sim_proj",
            )
        else:
            proj = nn.Dense(
                h.shape[-1],
                use_bias=False,
                kernel_init=torch_kernel_init(),
                dtype=h.dtype,
                name="sim_proj",
            )
        return proj(h)

    def _pooled(self, h: jax.Array) -> jax.Array:
        """The decoder input: [B, D], or a map average-pooled and flattened to [B, D']."""
        hp = _decoder_pool(h, self.config.dim_in_decoder) if h.ndim == 4 else h
        return hp.reshape(hp.shape[0], -1)

    def _pred(self, h: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Prediction loss: cross-entropy of a zero-initialised linear decoder."""
        hp = self._pooled(h)
        # zero weight as in the reference; its bias keeps PyTorch's default init
        logits = nn.Dense(
            self.config.num_classes,
            kernel_init=nn.initializers.zeros,
            bias_init=torch_bias_init(hp.shape[-1]),
            dtype=hp.dtype,
            name="decoder",
        )(hp)
        return losses.pred_loss(logits, labels), logits.astype(jnp.float32)

    def _bio_pred(self, h: jax.Array, projected: jax.Array) -> jax.Array:
        """`bio` prediction loss: a feedback-alignment decoder, BCE against (P·Y) > 0."""
        cfg = self.config
        hp = self._pooled(h)
        fan_in = hp.shape[-1]
        w = self.param("decoder_kernel", nn.initializers.zeros, (fan_in, cfg.target_proj_size))
        b = self.param("decoder_bias", nn.initializers.zeros, (cfg.target_proj_size,))
        feedback = self.variable(
            "constants",
            "decoder_feedback",
            fixed_uniform(fan_in),
            self.make_rng("params") if self.is_initializing() else None,
            (fan_in, cfg.target_proj_size),
        ).value
        logits = fa_matmul(hp, w.astype(hp.dtype), feedback.astype(hp.dtype))
        logits = logits + b.astype(hp.dtype)
        return losses.bce_loss(logits, losses.bio_pred_targets(projected))

    def _unsup(self, h, x, z_sim, first_layer):
        """α-weighted extra term: S(g(h)) vs S(x), or reconstruction MSE of x."""
        x = jax.lax.stop_gradient(x)
        if self.config.unsup == "sim":
            return losses.sim_loss(z_sim, x, self.config.similarity_std)
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
