"""The paper's MLP: dense blocks, then the output layer (METHOD.md, Network).

Usage::

    net = MLP(num_classes=10, head=HeadConfig("predsim", 10), num_layers=3, num_hidden=1024)
    logits, local = net.apply(variables, x, labels, train=True, ...)

Letters: B batch, D features, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from localjax.blocks import LocalDense
from localjax.errors import ConfigError
from localjax.heads import HeadConfig
from localjax.network import LocalNetwork, OutputLayer

__all__ = ["MLP", "dense_blocks", "network"]


def dense_blocks(
    head: HeadConfig | None,
    num_layers: int,
    num_hidden: int,
    nonlin: str,
    dropout: float,
    dtype,
    batch_norm: bool = True,
) -> list[LocalDense]:
    """`num_layers` dense blocks `block_dense_<i>` of `num_hidden` units; the first is a
    first layer (no `recon` term), as in the reference's MLP and VGG classifier.

    Args:
      head: `HeadConfig`, or None (backprop baseline).
      num_layers, num_hidden: count and width.
      nonlin, dropout, dtype, batch_norm: as in `LocalDense`.

    Returns:
      A list of unbound `LocalDense` (input `[B, ...]`, output `[B, num_hidden]`).

    Raises:
      ConfigError: `num_layers` < 0, or `num_hidden` < 1 with at least one block.
    """
    if num_layers < 0 or (num_layers > 0 and num_hidden < 1):
        raise ConfigError(
            f"num_layers={num_layers} must be >= 0 and num_hidden={num_hidden} >= 1 (the "
            "paper's MLP: num_layers=3, num_hidden=1024)."
        )
    return [
        LocalDense(
            num_hidden,
            head=head,
            nonlin=nonlin,
            dropout=dropout,
            first_layer=i == 0,
            batch_norm=batch_norm,
            dtype=dtype,
            name=f"block_dense_{i}",
        )
        for i in range(num_layers)
    ]


def network(
    layers: Sequence[Any], num_classes: int, head: HeadConfig | None, detach: bool, dtype
) -> LocalNetwork:
    """A paper network: the output layer and loss weight its head implies.

    Args:
      layers: the blocks and plain layers.
      num_classes: K.
      head: the blocks' `HeadConfig`, or None for the backprop baseline (no cuts, a
        PyTorch-initialised output layer).
      detach: cut between blocks in local learning (False: deep supervision).
      dtype: compute dtype.

    Returns:
      An unbound `LocalNetwork`; output layer `output` (zero weight in local modes),
      `output_weight` 1 − β for predsim, else 1.

    Raises:
      Nothing of its own.

    Implements METHOD.md, Local losses: output layer.
    """
    local = head is not None
    return LocalNetwork(
        layers=tuple(layers),
        output=OutputLayer(num_classes, zero_init=local, dtype=dtype, name="output"),
        detach=local and detach,
        output_weight=1.0 - head.beta if local and head.loss == "predsim" else 1.0,
        dtype=dtype,
    )


def MLP(  # noqa: N802 -- the paper's name, and the class name of earlier versions
    num_classes: int = 10,
    head: HeadConfig | None = None,
    num_layers: int = 3,
    num_hidden: int = 1024,
    nonlin: str = "relu",
    dropout: float = 0.0,
    detach: bool = True,
    dtype: Any = jnp.float32,
    batch_norm: bool = True,
) -> LocalNetwork:
    """Fully connected network: `num_layers` dense blocks of `num_hidden` units, then the
    output layer (the paper's 3×1024 MLP). Input images are flattened.

    Args:
      num_classes: K.
      head: `HeadConfig` of every block, or None for the backprop baseline.
      num_layers, num_hidden: depth and width.
      nonlin, dropout: block nonlinearity and dropout rate.
      detach: cut the graph between blocks (False: deep supervision).
      dtype: compute dtype; parameters stay float32.
      batch_norm: BatchNorm in every block; False is the reference's `--no-batch-norm`
        (no `batch_stats` at all).

    Returns:
      An unbound `LocalNetwork` (`block_dense_<i>`, `output`): call it as
      `net(x [B, H, W, C] float, labels [B] int or None, train=...)` ->
      `(logits [B, K] float32, local)`.

    Raises:
      ConfigError: `num_layers` < 0 or `num_hidden` < 1 (at build time); an unknown
        `nonlin` (when first applied).

    Implements the MLP (METHOD.md, Network: the MLP is `num_layers` dense blocks).
    """
    layers = dense_blocks(head, num_layers, num_hidden, nonlin, dropout, dtype, batch_norm)
    return network(layers, num_classes, head, detach, dtype)
