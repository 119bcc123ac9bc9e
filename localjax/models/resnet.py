"""ResNets of the reference code (BasicBlock and Bottleneck units), one local-loss block
per convolution (METHOD.md, Network).

Usage::

    net = ResNet(num_classes=10, head=HeadConfig("predsim", 10), config="resnet18")
    logits, local = net.apply(variables, x, labels, train=True, ...)

Structure (the reference's `ResNet`, `BasicBlock`, `Bottleneck`): a 3×3 stem `conv1`,
four stages `layer1`..`layer4` of residual units (widths 64, 128, 256, 512 times
`feat_mult`, ×4 output channels in a Bottleneck; stride 2 in the first unit of stages
2-4), a 4×4 average pool (its output flattened: the 1×1 map of 32 px inputs) and the
output layer; `final_pool="global"` averages the final map over H and W instead (the
standard ImageNet head: 512·expansion features at any input size). Every convolution
is a block with its own local loss (`blocks.LocalResConv`), named
`layer<s>_<u>_conv<j>`; the activation between the blocks of a unit is the pair
(h, unit input), and the unit's last convolution adds the shortcut (identity, or a 1×1
conv + BatchNorm projection that belongs to that block) after its BatchNorm and before
its nonlinearity.

Letters: B batch, H/W spatial size, C channels (NHWC), K classes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from localjax.blocks import LocalResConv
from localjax.errors import ConfigError
from localjax.heads import HeadConfig
from localjax.models.mlp import network
from localjax.network import LocalNetwork

__all__ = ["RESNET_CONFIGS", "FINAL_POOLS", "ResNet", "global_avg_pool", "check_final_pool"]

# name -> (unit kind, units per stage)
RESNET_CONFIGS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
_EXPANSION = {"basic": 1, "bottleneck": 4}
_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
# the last plain layer of the (Wide) ResNets: the reference's pool then flatten, or the
# standard ImageNet head's global average pool
FINAL_POOLS = ("reference", "global")


def check_final_pool(final_pool: str) -> None:
    """Raises `ConfigError` (one line naming the choices) for a value not in `FINAL_POOLS`."""
    if final_pool not in FINAL_POOLS:
        raise ConfigError(
            f"unknown final_pool {final_pool!r}; choose one of {list(FINAL_POOLS)} (reference: "
            "the reference's final pool, its output flattened; global: the mean over H and W)."
        )


def global_avg_pool(z):
    """The standard ImageNet head's pool: the mean over H and W, `[B, H, W, C]` -> `[B, C]`
    (`final_pool="global"`); the output layer then takes C features at any input size."""
    return jnp.mean(z, axis=(1, 2))


def _avg_pool4(z):
    """The reference's `F.avg_pool2d(x, 4)`: 4×4 windows, stride 4, no padding."""
    if z.shape[1] < 4 or z.shape[2] < 4:
        raise ValueError(
            f"the ResNet's final 4x4 average pool needs a feature map of at least 4x4; got "
            f"{z.shape[1]}x{z.shape[2]} (inputs of at least 25x25 px, e.g. 28 or 32; or "
            "final_pool='global')."
        )
    return nn.avg_pool(z, (4, 4), strides=(4, 4))


def ResNet(  # noqa: N802 -- the reference's name
    num_classes: int = 10,
    head: HeadConfig | None = None,
    config: str = "resnet18",
    feat_mult: float = 1.0,
    pre_act: bool = False,
    nonlin: str = "relu",
    dropout: float = 0.0,
    detach: bool = True,
    dtype: Any = jnp.float32,
    batch_norm: bool = True,
    final_pool: str = "reference",
) -> LocalNetwork:
    """A ResNet of `RESNET_CONFIGS` built from local-loss blocks.

    Args:
      num_classes: K.
      head: `HeadConfig` of every block, or None for the backprop baseline.
      config: `resnet18`, `resnet34` (BasicBlock), `resnet50`, `resnet101`, `resnet152`
        (Bottleneck).
      feat_mult: width multiplier: stage widths int(feat_mult·64), int(feat_mult·128), ...
      pre_act: the reference's `--pre-act`: the stem's output and BasicBlock's
        convolutions are left un-normalised (BatchNorm → nonlinearity → channel dropout
        move in front of the next convolution; the local loss normalises the block
        output for itself). Bottleneck units stay post-activation, as in the reference.
      nonlin: block nonlinearity.
      dropout: channel dropout rate of every block (on the output; on the input of a
        pre-activation block; none on a pre-activation stem), as the reference.
      detach: cut the graph between blocks (False: deep supervision).
      dtype: compute dtype; parameters stay float32.
      batch_norm: the BatchNorm of every convolution (`bn`, `bn_pre`, the loss-only
        one); False is the reference's `--no-batch-norm`, which leaves the projection
        shortcuts' BatchNorm (`shortcut_bn`) in place and adds no conv bias (the
        reference's ResNet convolutions have none).
      final_pool: `reference` (default): the reference's `F.avg_pool2d(x, 4)`, its
        output flattened into the output layer: 512·expansion features at 32 px (the
        reference's Linear), ⌊h/4⌋²·512·expansion for a larger final map of h×h
        (h = ⌈H/8⌉: 7×7×512 for ResNet-18 at 224 px, most of the inference
        parameters; the reference's own code stops there with a shape error).
        `global`: the mean over H and W of the final map (`global_avg_pool`), the
        standard ImageNet head: the output layer takes 512·expansion features at any
        input size; the same as `reference` at 25-32 px (a 4×4 final map), up to
        float rounding.

    Returns:
      An unbound `LocalNetwork`: blocks `conv1`, `layer<s>_<u>_conv<j>` (s 1..4, u the
      unit, j 1..2 or 1..3), then the final pool (`final_pool`) and `output` (zero
      weight in local modes). Call it as
      `net(x [B, H, W, C] float, labels [B] int or None, train=...)` ->
      `(logits [B, K] float32, local)`; H, W >= 25 for `reference` (the final pool
      needs 4×4).

    Raises:
      ConfigError: an unknown `config` or `final_pool`, or a `feat_mult` that leaves a
        stage without a channel; an unknown `nonlin` (when first applied).

    Implements the reference's ResNet (METHOD.md, Network).
    """
    if config not in RESNET_CONFIGS:
        raise ConfigError(
            f"unknown ResNet config {config!r}; choose one of {list(RESNET_CONFIGS)}."
        )
    check_final_pool(final_pool)
    if not (math.isfinite(feat_mult) and int(feat_mult * _STAGE_WIDTHS[0]) >= 1):
        raise ConfigError(
            f"feat_mult={feat_mult} leaves the ResNet's first stage (64 channels x "
            f"feat_mult) without a channel; use a finite feat_mult >= 1/64 (the reference: 1)."
        )
    kind, units = RESNET_CONFIGS[config]
    expansion = _EXPANSION[kind]

    def conv(features, name, **kw):
        return LocalResConv(
            features,
            head=head,
            nonlin=nonlin,
            dropout=dropout,
            batch_norm=batch_norm,
            dtype=dtype,
            name=name,
            **kw,
        )

    in_planes = int(feat_mult * _STAGE_WIDTHS[0])
    # the stem: post-activation, or (pre_act) a bare conv whose output the next unit
    # normalises; the reference passes no dropout path for the latter
    layers: list[Any] = [conv(in_planes, "conv1", post_act=not pre_act)]
    for s, (width, stage_stride) in enumerate(zip(_STAGE_WIDTHS, _STAGE_STRIDES, strict=True)):
        planes = int(feat_mult * width)
        for u in range(units[s]):
            stride = stage_stride if u == 0 else 1
            out_planes = expansion * planes
            shortcut = "identity" if stride == 1 and in_planes == out_planes else "conv_bn"
            name = f"layer{s + 1}_{u}_conv"
            end = dict(shortcut=shortcut, shortcut_stride=stride)
            if kind == "basic":
                act = dict(pre_act=pre_act, post_act=not pre_act)
                layers += [
                    conv(planes, name + "1", stride=stride, keep_input=True, **act),
                    conv(planes, name + "2", **act, **end),
                ]
            else:  # Bottleneck: post-activation whatever `pre_act` says, as the reference
                layers += [
                    conv(planes, name + "1", kernel_size=1, padding=0, keep_input=True),
                    conv(planes, name + "2", stride=stride, keep_input=True),
                    conv(out_planes, name + "3", kernel_size=1, padding=0, **end),
                ]
            in_planes = out_planes
    layers.append(global_avg_pool if final_pool == "global" else _avg_pool4)
    return network(layers, num_classes, head, detach, dtype)
