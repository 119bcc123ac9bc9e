"""VGG-style networks of the paper: conv blocks (`VGG_CONFIGS`), then dense blocks, then
the output layer (METHOD.md, Network: VGG configs; inputs > 64 px).

Usage::

    net = VGG(num_classes=10, head=HeadConfig("predsim", 10), config="vgg8b")
    logits, local = net.apply(variables, x, labels, train=True, ...)

Letters: B batch, H/W spatial size, C channels (NHWC), K classes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from localjax.blocks import LocalConv
from localjax.errors import ConfigError
from localjax.heads import HeadConfig
from localjax.models.mlp import dense_blocks, network
from localjax.network import LocalNetwork

__all__ = ["VGG_CONFIGS", "VGG"]

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg6a": [128, "M", 256, "M", 512, "M", 512],
    "vgg6b": [128, "M", 256, "M", 512, "M", 512, "M"],
    "vgg8": [64, "M", 128, "M", 256, "M", 512, "M", 512, "M"],
    "vgg8a": [128, 256, "M", 256, 512, "M", 512, "M", 512],
    "vgg8b": [128, 256, "M", 256, 512, "M", 512, "M", 512, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg11b": [128, 128, 128, 256, "M", 256, 512, "M", 512, 512, "M", 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


def _max_pool(z):
    return nn.max_pool(z, (2, 2), strides=(2, 2))


def _flatten(z):
    return z.reshape(z.shape[0], -1)  # [B, h, w, C] -> [B, D]


def VGG(  # noqa: N802 -- the paper's name, and the class name of earlier versions
    num_classes: int = 10,
    head: HeadConfig | None = None,
    config: str = "vgg8b",
    feat_mult: float = 1.0,
    num_layers: int = 1,
    num_hidden: int = 1024,
    nonlin: str = "relu",
    dropout: float = 0.0,
    detach: bool = True,
    dtype: Any = jnp.float32,
    batch_norm: bool = True,
) -> LocalNetwork:
    """VGG-style conv net (`VGG_CONFIGS`), then `num_layers` dense blocks, then output.

    Args:
      num_classes: K.
      head: `HeadConfig` of every block, or None for the backprop baseline.
      config: name in `VGG_CONFIGS` (e.g. `vgg8b`); numbers are channels, "M" a 2×2
        max-pool between blocks. The first conv turns 7×7 stride 2 on inputs larger
        than 64 px (`LocalConv.geometry`).
      feat_mult: channel multiplier.
      num_layers, num_hidden: the dense blocks after the conv stack.
      nonlin, dropout: block nonlinearity and dropout rate (whole channels in convs).
      detach: cut the graph between blocks (False: deep supervision).
      dtype: compute dtype; parameters stay float32.
      batch_norm: BatchNorm in every conv and dense block; False is the reference's
        `--no-batch-norm` (no `batch_stats` at all; the layers keep their biases).

    Returns:
      An unbound `LocalNetwork`: blocks `block_conv_<i>` (i the index in the config),
      then `block_dense_<i>`, then `output`. Call it as
      `net(x [B, H, W, C] float, labels [B] int or None, train=...)` ->
      `(logits [B, K] float32, local)`.

    Raises:
      ConfigError: an unknown `config`, a `feat_mult` that leaves a conv block 0 channels
        wide, `num_layers` < 0 or `num_hidden` < 1 with dense blocks, or an unknown
        `nonlin` (the latter when first applied).

    Implements the VGG networks (METHOD.md, Network: VGG configs; inputs > 64 px).
    """
    if config not in VGG_CONFIGS:
        raise ConfigError(f"unknown VGG config {config!r}; choose one of {list(VGG_CONFIGS)}.")
    narrowest = min(item for item in VGG_CONFIGS[config] if item != "M")
    if not (math.isfinite(feat_mult) and int(narrowest * feat_mult) >= 1):
        raise ConfigError(
            f"feat_mult={feat_mult} leaves {config}'s narrowest conv block ({narrowest} "
            f"channels x feat_mult) without a channel; use a finite feat_mult >= "
            f"1/{narrowest} (the paper: 1, or 2 for the x2 rows)."
        )
    layers: list[Any] = []
    for i, item in enumerate(VGG_CONFIGS[config]):
        if item == "M":
            layers.append(_max_pool)
            continue
        first = not any(isinstance(layer, LocalConv) for layer in layers)
        layers.append(
            LocalConv(
                int(item * feat_mult),
                head=head,
                nonlin=nonlin,
                dropout=dropout,
                large_input_stem=first,
                first_layer=first,
                batch_norm=batch_norm,
                dtype=dtype,
                name=f"block_conv_{i}",
            )
        )
    layers.append(_flatten)
    # the reference's dense classifier treats its first block as a first layer
    layers += dense_blocks(head, num_layers, num_hidden, nonlin, dropout, dtype, batch_norm)
    return network(layers, num_classes, head, detach, dtype)
