"""Blocks: a layer, BatchNorm and nonlinearity whose output gets local heads
(Nøkland & Eidnes 2019, Fig. 1; METHOD.md, Network and Local losses).

Usage::

    head = HeadConfig(loss="predsim", num_classes=10)
    block = LocalConv(features=128, head=head)
    (out, local), updates = block.apply(variables, x, labels, train=True,
                                        rngs={"dropout": key}, mutable=["batch_stats"])
    local["loss"]        # scalar local loss of this block
    local["logits"]      # [B, K] local prediction (None for sim-only or bio)

    block = LocalBlock(MyResidualUnit(64), head=head)   # any Linen module as a block

    # one convolution of a residual unit (`models.resnet`, `models.wide_resnet`): the
    # activation between its blocks is the pair (h, unit input)
    conv1 = LocalResConv(64, head=head, keep_input=True)          # x -> (h1, x)
    conv2 = LocalResConv(64, head=head, shortcut="identity")      # (h1, x) -> relu(bn(conv h1) + x)

A block returns `(out, local)`: `out` is the (dropped-out) activation passed on to the
next block; `local` is `None` when no labels are given (evaluation, or the backprop
baseline built with `head=None`), else the dict of `LocalHead` computed on the activation
*before* dropout. A block never cuts its own input: `network.LocalNetwork` does.

Letters: B batch, D features, H/W spatial size, C channels (NHWC), K classes.

Variable collections: `params` (trained), `batch_stats` (BatchNorm running averages),
`constants` (fixed random matrices of the `bio` variant: never trained, never changed).
"""

from __future__ import annotations

import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from localjax.heads import HeadConfig, LocalHead
from localjax.losses import check_labels
from localjax.torch_defaults import (
    BN_EPS,
    BN_MOMENTUM,
    TorchBatchNorm,
    activation,
    torch_bias_init,
    torch_kernel_init,
)

__all__ = [
    "LARGE_INPUT",
    "SHORTCUTS",
    "LocalDense",
    "LocalConv",
    "LocalResConv",
    "LocalBlock",
]

LARGE_INPUT = 64  # the reference's first conv goes 7x7 stride 2 above this size (STL-10)


class LocalDense(nn.Module):
    """Dense block: Linear → BatchNorm → nonlinearity → dropout, with local heads.

    Attributes:
      features: D_out.
      head: `HeadConfig`, or None for a plain block (backprop baseline).
      nonlin: `relu` or `leakyrelu`.
      dropout: dropout rate on the passed-on output.
      first_layer: whether this is the network's first block (no `recon` term).
      batch_norm: the BatchNorm `bn`; False is the reference's `--no-batch-norm`
        (Linear → nonlinearity, no `batch_stats`; the Linear keeps its bias either way).
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
    batch_norm: bool = True
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
        if self.batch_norm:
            h = _batch_norm(train, self.dtype, "bn")(h)
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
      kernel_size, stride, padding: the conv geometry (3, 1, 1).
      large_input_stem: the network's first conv, which the reference turns into a 7×7,
        stride 2, padding 3 conv for inputs larger than `LARGE_INPUT` px (STL-10);
        `geometry` applies the rule.
      first_layer: whether this is the network's first block (no `recon` term).
      batch_norm: the BatchNorm `bn`; False is the reference's `--no-batch-norm`
        (Conv → nonlinearity, no `batch_stats`; the conv keeps its bias either way).
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
    large_input_stem: bool = False
    first_layer: bool = False
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.nowrap
    def geometry(self, height: int) -> tuple[int, int, int]:
        """`(kernel, stride, padding)` of the conv for an input of `height` px.

        The one place of the large-input rule (METHOD.md, Network: inputs > 64 px get a
        7×7 stride-2 first conv); `perf.flops` reads it too.
        """
        if self.large_input_stem and height > LARGE_INPUT:
            return 7, 2, 3
        return self.kernel_size, self.stride, self.padding

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
        k, stride, padding = self.geometry(x.shape[1])
        h = nn.Conv(
            self.features,
            (k, k),
            strides=stride,
            padding=padding,
            kernel_init=torch_kernel_init(),
            bias_init=torch_bias_init(k * k * x.shape[-1]),
            dtype=self.dtype,
            name="conv",
        )(x)
        if self.batch_norm:
            h = _batch_norm(train, self.dtype, "bn")(h)
        h = activation(self.nonlin)(h)
        # Dropout2d: one mask value per (example, channel), broadcast over H and W
        out = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(h)
        return out, _local_terms(self, h, labels, x)


SHORTCUTS = (None, "identity", "conv_bn", "conv")


def _batch_norm(train: bool, dtype, name: str, momentum: float = BN_MOMENTUM) -> TorchBatchNorm:
    """A PyTorch BatchNorm: weight 1, bias 0, eps 1e-5, unbiased running variance
    (`TorchBatchNorm`; it differs from Flax's in evaluation only)."""
    return TorchBatchNorm(
        use_running_average=not train, momentum=momentum, epsilon=BN_EPS, dtype=dtype, name=name
    )


class _NormedHead(nn.Module):
    """The local heads of a block whose output is not yet normalised (pre-activation
    blocks): BatchNorm → nonlinearity → `LocalHead`.

    Its BatchNorm (`bn`) serves the local loss only, as in the reference, where a block
    without post-activation normalises its output for the loss alone; it lives beside the
    heads' own parameters under `<block>/head`, so `count_params` counts it with them.
    Without `batch_norm` (the reference's `--no-batch-norm`) the heads see
    nonlinearity(h) only.
    """

    config: HeadConfig
    nonlin: str = "relu"
    dtype: Any = jnp.float32
    batch_norm: bool = True

    def setup(self):
        if self.batch_norm:
            self.bn = TorchBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=self.dtype)
        self.heads = LocalHead(self.config, nonlin=self.nonlin)
        nn.share_scope(self, self.heads)  # the heads' parameters sit beside `bn`

    def __call__(self, h, labels, *, x, train: bool):
        if self.batch_norm:
            h = self.bn(h, use_running_average=not train)
        return self.heads(activation(self.nonlin)(h), labels, x=x)


class LocalResConv(nn.Module):
    """One convolution of a residual unit as a block, with local heads (the reference's
    `LocalLossBlockConv` with `pre_act`, `post_act` and a shortcut input).

    The activation between the blocks of a unit is the pair `(h, x_unit)`: the conv
    input and the unit's input, which the unit's last convolution adds through its
    shortcut. The cut before every block (`LocalNetwork`) stops gradients on the whole
    pair, so a projection shortcut learns from the local loss of the block it feeds and
    from nothing else; its parameters live in that block (`shortcut_conv`,
    `shortcut_bn`).

    Order of operations (z the block's result, a the conv input):
      pre_act:  a = dropout2d(nonlin(bn_pre(h)))   else a = h
      z = conv(a);  post_act: z = bn(z)
      shortcut: z = z + shortcut(x_unit)
      post_act: z = nonlin(z);  out = dropout2d(z)   else out = z
      out = dropout(out)   (`out_dropout`, element-wise: Wide ResNet's dropout between
                            the two convolutions of a unit)
      final_norm: out = relu(bn_final(out))   (Wide ResNet's last BatchNorm → ReLU)
    The local loss sees z before any dropout; a block without `post_act` normalises it
    for the loss only (BatchNorm → nonlinearity, under `<block>/head/bn`), as the
    reference does. Channel dropout (`dropout`) thus hits the input in a pre-activation
    block and the output in a post-activation one, and neither in a block with neither.
    Without `batch_norm` the steps `bn_pre`, `bn` and the loss-only BatchNorm are left
    out (`shortcut_bn`, `bn_final` stay).

    Attributes:
      features: C_out.
      head: `HeadConfig`, or None for a plain block (backprop baseline).
      nonlin: `relu` or `leakyrelu`.
      kernel_size, stride, padding: the conv geometry.
      use_bias: the conv's bias (ResNet: False; Wide ResNet: True).
      pre_act: BatchNorm → nonlinearity → channel dropout on the input, before the conv.
      post_act: BatchNorm (before the shortcut is added) and nonlinearity (after) on the
        output.
      dropout: channel dropout rate (PyTorch Dropout2d), placed as above.
      out_dropout: element-wise dropout rate on the passed-on output.
      shortcut: None (no residual add), `identity`, `conv_bn` (1×1 conv without bias,
        then BatchNorm: ResNet's projection) or `conv` (1×1 conv with bias: Wide
        ResNet's); the block then expects the pair `(h, x_unit)` (or one array, used
        as both) and returns one array.
      shortcut_stride: the stride of the projection (the unit's stride).
      keep_input: return `(out, x_unit)` for the unit's next block; `x_unit` is the
        second element of a pair input, or the input itself.
      final_norm: end with the network's final BatchNorm → ReLU on the passed-on output
        (`bn_final`; Wide ResNet's `bn1`, which the reference applies to the last
        block's detached output). No local loss sees it: it learns from the output
        layer's loss only, and only in the backprop baseline.
      final_norm_affine: `bn_final` has a learned scale and bias. Without (local
        learning) it keeps scale 1 and bias 0 and still tracks batch statistics, which
        is what the reference's `bn1` does there: no optimizer of the reference holds
        its weight and bias (its global optimizer holds the output layer alone).
      final_norm_momentum: Flax momentum of `bn_final`'s running averages (the
        reference's `bn1` has PyTorch momentum 0.9, i.e. Flax 0.1).
      batch_norm: the block's own BatchNorms (`bn_pre`, `bn`, the loss-only `head/bn`).
        False is the reference's `--no-batch-norm`, which reaches its
        `LocalLossBlockConv` only: the projection's `shortcut_bn` and the final
        `bn_final` stay, and the conv's bias stays as `use_bias` says (a ResNet's
        convolutions then have neither BatchNorm nor bias).
      dtype: compute dtype (parameters stay float32).

    Call: `block(x, labels=None, *, train=False)` with `x` `[B, H, W, C_in]` float or a
    pair `(h [B, H, W, C_in], x_unit [B, H0, W0, C0])`, `labels` `[B]` int or None;
    returns `(out, local)`, `out` `[B, H', W', features]` (or the pair with
    `keep_input`), `local` as in `LocalHead` or None.

    Raises:
      ValueError: a conv input that is not 4-D, an unknown `shortcut`, an identity
        shortcut between different shapes, or the `LocalHead` errors (bad labels).
      ConfigError: an unknown `nonlin`.
      TypeError: non-integer labels (from `LocalHead`).

    Implements the residual units' blocks (METHOD.md, Network; Local losses: no gradient
    passes to the block's input).
    """

    features: int
    head: HeadConfig | None = None
    nonlin: str = "relu"
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = False
    pre_act: bool = False
    post_act: bool = True
    dropout: float = 0.0
    out_dropout: float = 0.0
    shortcut: str | None = None
    shortcut_stride: int = 1
    keep_input: bool = False
    final_norm: bool = False
    final_norm_affine: bool = True
    final_norm_momentum: float = BN_MOMENTUM
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, labels: jax.Array | None = None, *, train: bool = False):
        """Args: x `[B, H, W, C_in]` or `(h, x_unit)`; labels `[B]` int or None.

        Returns:
          `(out, local)` (`out` the pair `(out, x_unit)` with `keep_input`).
        """
        h, x_unit = x if isinstance(x, (tuple, list)) else (x, x)
        if h.ndim != 4:
            raise ValueError(
                f"LocalResConv expects [B, H, W, C] input; got shape {tuple(h.shape)}."
            )
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {self.shortcut!r}; choose one of {SHORTCUTS}.")
        act = activation(self.nonlin)
        a = h
        if self.pre_act:
            if self.batch_norm:
                a = _batch_norm(train, self.dtype, "bn_pre")(a)
            a = act(a)
            a = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(a)
        k = self.kernel_size
        z = nn.Conv(
            self.features,
            (k, k),
            strides=self.stride,
            padding=self.padding,
            use_bias=self.use_bias,
            kernel_init=torch_kernel_init(),
            bias_init=torch_bias_init(k * k * a.shape[-1]),
            dtype=self.dtype,
            name="conv",
        )(a)
        if self.post_act and self.batch_norm:
            z = _batch_norm(train, self.dtype, "bn")(z)
        if self.shortcut is not None:
            z = z + self._shortcut(x_unit, z.shape, train)
        out = z
        if self.post_act:
            z = out = act(z)
            out = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(out)
        out = nn.Dropout(self.out_dropout, deterministic=not train)(out)
        if self.final_norm:
            out = TorchBatchNorm(
                use_running_average=not train,
                momentum=self.final_norm_momentum,
                epsilon=BN_EPS,
                use_scale=self.final_norm_affine,
                use_bias=self.final_norm_affine,
                dtype=self.dtype,
                name="bn_final",
            )(out)
            out = nn.relu(out)  # the reference's F.relu, whatever the block nonlinearity
        local = None
        if self.head is not None and labels is not None:
            if self.post_act:
                local = LocalHead(self.head, nonlin=self.nonlin, name="head")(z, labels, x=a)
            else:
                local = _NormedHead(
                    self.head, self.nonlin, self.dtype, self.batch_norm, name="head"
                )(z, labels, x=a, train=train)
        return ((out, x_unit) if self.keep_input else out), local

    def _shortcut(self, x_unit: jax.Array, shape: tuple[int, ...], train: bool) -> jax.Array:
        """The shortcut branch: `x_unit` as is, or projected to `shape`."""
        if self.shortcut == "identity":
            if tuple(x_unit.shape) != tuple(shape):
                raise ValueError(
                    f"an identity shortcut needs the unit's input and output of one shape; "
                    f"got {tuple(x_unit.shape)} and {tuple(shape)} (use a projection)."
                )
            return x_unit.astype(self.dtype)
        use_bias = self.shortcut == "conv"
        s = nn.Conv(
            self.features,
            (1, 1),
            strides=self.shortcut_stride,
            padding=0,
            use_bias=use_bias,
            kernel_init=torch_kernel_init(),
            bias_init=torch_bias_init(x_unit.shape[-1]),
            dtype=self.dtype,
            name="shortcut_conv",
        )(x_unit)
        if not use_bias:
            s = _batch_norm(train, self.dtype, "shortcut_bn")(s)
        return s


def _local_terms(block, h, labels, x):
    """Runs the block's head when it has one and labels are given, else None."""
    if block.head is None or labels is None:
        return None
    head = LocalHead(block.head, nonlin=block.nonlin, name="head")
    return head(h, labels, x=x, first_layer=block.first_layer)


def _accepts_train(module: nn.Module) -> bool:
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False
    return "train" in params


class LocalBlock(nn.Module):
    """Any Linen module as a block with local heads (Fig. 1).

    `out, local = LocalBlock(module, head)(x, labels, train=train)` runs `module` on `x`
    to get the block output h, computes this block's local loss from h with a
    `LocalHead` (sim: learned no-bias projection, dense D×D or conv 3×3; pred: average
    pool sized by `dim_in_decoder`, flatten, zero-initialised linear decoder; predsim:
    their β-mix; `bio`: fixed random label projection and feedback alignment), then
    applies dropout to give `out`. Same contract as `LocalDense` / `LocalConv`, so it
    plugs into `apply_blocks` and `make_train_step`. The block does not cut its own
    input: put it in `apply_blocks(..., detach=True)` or call `cut(x)` before it.

    Attributes:
      module: a Linen module mapping `x` to a float `[B, D]` or `[B, H, W, C]` (NHWC)
        output; it may use BatchNorm (`batch_stats`) and dropout (`dropout` rng).
        A copy of it named `body` runs in the block (wherever `module` was built),
        so its variables live under `<block name>/body`, the heads' under
        `<block name>/head`; do not share one module instance between blocks.
      head: `HeadConfig`, or None for a plain block (backprop baseline; `local` None).
      dropout: dropout rate on the passed-on output (whole channels for a feature map,
        like PyTorch's Dropout2d; the local loss sees h before dropout).
      nonlin: nonlinearity of the `recon` decoder (`HeadConfig.unsup == "recon"`).
      first_layer: the network's first block (no `recon` term, as the reference).
      pass_train: call `module(x, train=train)`; None (default) does so when the
        module's `__call__` has a `train` parameter.

    Call args:
      x: `[B, ...]` float block input (already cut).
      labels: `[B]` int class indices in [0, K), or None (no heads evaluated).
      train: training mode (passed on to `module`, dropout on).

    Returns:
      `(out, local)`: `out` of h's shape and dtype; `local` None (no labels or no head)
      or `LocalHead`'s dict of float32 scalars `loss`, `pred`, `sim` and `logits`
      (`[B, K]` float32, or None for sim-only and `bio`).

    Raises:
      TypeError: the module returns something other than one array (e.g. a tuple), a
        non-float output, or non-integer labels (see `check_labels`).
      ValueError: with a head, an output that is neither `[B, D]` nor `[B, H, W, C]`
        (e.g. a 3-D `[B, T, D]` sequence: the pred decoder pools over H and W), a batch
        size different from the input's, `recon` on a block that changes the spatial
        size, or labels that are not `[B]` or outside [0, K) (`check_labels`).

    Implements a block and its heads (METHOD.md, Network; Local losses;
    Backprop-free variant).
    """

    module: nn.Module
    head: HeadConfig | None = None
    dropout: float = 0.0
    nonlin: str = "relu"
    first_layer: bool = False
    pass_train: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool = False):
        # a fresh child named "body", wherever the module was built (the parent's
        # compact method binds it to the parent): the block's variables then live
        # under <block>/body next to <block>/head, and the name cannot collide with
        # attributes of `flax.nnx.bridge.ToNNX`
        module = self.module.clone(parent=self, name="body")
        pass_train = _accepts_train(module) if self.pass_train is None else self.pass_train
        h = module(x, train=train) if pass_train else module(x)
        # a top-level LocalBlock has no name; its wrapped module's class still locates it
        where = (
            f"LocalBlock {self.name!r}"
            if self.name
            else f"LocalBlock({type(self.module).__name__})"
        )
        if not (hasattr(h, "shape") and hasattr(h, "dtype")):
            raise TypeError(
                f"{where}: the wrapped module must return one array (the block output); "
                f"got {type(h).__name__}. Return extra values through a separate module."
            )
        if self.head is not None:
            self._check_output(h, x, where)
        local = None
        if self.head is not None and labels is not None:
            check_labels(labels, self.head.num_classes, where=where)
            if labels.shape[0] != h.shape[0]:
                raise ValueError(f"{where}: {labels.shape[0]} labels for a batch of {h.shape[0]}.")
            head = LocalHead(self.head, nonlin=self.nonlin, name="head")
            local = head(h, labels, x=x, first_layer=self.first_layer)
        broadcast = (1, 2) if h.ndim == 4 else ()
        out = nn.Dropout(self.dropout, broadcast_dims=broadcast, deterministic=not train)(h)
        return out, local

    def _check_output(self, h: jax.Array, x: jax.Array, where: str) -> None:
        if h.ndim not in (2, 4):
            raise ValueError(
                f"{where}: local heads need the block output as [B, D] or [B, H, W, C] "
                f"(NHWC: the pred decoder average-pools over H and W); the "
                f"wrapped {type(self.module).__name__} returned shape {tuple(h.shape)}. "
                "Reshape it inside the module, e.g. h.reshape(h.shape[0], -1) for [B, D]."
            )
        if not jnp.issubdtype(h.dtype, jnp.floating):
            raise TypeError(f"{where}: the block output must be float; got {h.dtype}.")
        if h.shape[0] != x.shape[0]:
            raise ValueError(
                f"{where}: the block output has batch {h.shape[0]} but its input "
                f"{x.shape[0]}; a block must keep the batch axis first."
            )
        if self.head.unsup == "recon" and not self.first_layer and h.ndim == 4:
            if x.ndim != 4 or x.shape[1:3] != h.shape[1:3]:
                raise ValueError(
                    f"{where}: unsup='recon' reconstructs the input with a 3x3 conv of "
                    f"the output, so it needs equal spatial sizes; got input "
                    f"{tuple(x.shape)} and output {tuple(h.shape)}."
                )
