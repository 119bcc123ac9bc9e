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
    activation,
    torch_bias_init,
    torch_kernel_init,
)

__all__ = ["LARGE_INPUT", "LocalDense", "LocalConv", "LocalBlock"]

LARGE_INPUT = 64  # the reference's first conv goes 7x7 stride 2 above this size (STL-10)


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
      kernel_size, stride, padding: the conv geometry (3, 1, 1).
      large_input_stem: the network's first conv, which the reference turns into a 7×7,
        stride 2, padding 3 conv for inputs larger than `LARGE_INPUT` px (STL-10);
        `geometry` applies the rule.
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
    large_input_stem: bool = False
    first_layer: bool = False
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
