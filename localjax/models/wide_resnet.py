"""Wide ResNets of the reference code (`wide_basic` units), one local-loss block per
convolution (METHOD.md, Network).

Usage::

    net = WideResNet(num_classes=10, head=HeadConfig("predsim", 10), depth=16, widen_factor=4)
    logits, local = net.apply(variables, x, labels, train=True, ...)
    parse_wide_resnet("wresnet16-4a")    # (16, 4, True)

Structure (the reference's `Wide_ResNet`, `wide_basic`): a 3×3 stem `conv1`, three
stages of n = (depth − 4)/6 pre-activation units (widths 16k, 32k, 64k; stride 2 in the
first unit of stages 2 and 3, on its second convolution), then BatchNorm → ReLU
(`bn_final`, inside the last block after its output), an 8×8 average pool (or, adapted,
a 2×2 max pool), its output flattened, and the output layer; `final_pool="global"`
averages the final map over H and W instead (64k features at any input size).
Every convolution is a block with its own local loss (`blocks.LocalResConv`, conv with
bias); a pre-activation block passes its raw conv output on, its local loss normalises
that output for itself. The second convolution of a unit adds the shortcut (identity,
or a 1×1 conv with bias that belongs to that block) to its conv output.

The adapted variant (`wresnet<d>-<k>a`) widens the stem to 16k, puts channel dropout
inside the blocks (after each pre-activation) instead of between a unit's two
convolutions, and ends with a 2×2 max pool (output layer input 16·64k).

Letters: B batch, H/W spatial size, C channels (NHWC), K classes.
"""

from __future__ import annotations

import math
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from localjax.blocks import LocalResConv
from localjax.errors import ConfigError
from localjax.heads import HeadConfig
from localjax.models.mlp import network
from localjax.models.resnet import check_final_pool, global_avg_pool
from localjax.network import LocalNetwork

__all__ = ["WIDE_RESNET_NAMES", "parse_wide_resnet", "WideResNet"]

# the reference's model table
WIDE_RESNET_NAMES = tuple(
    f"wresnet{d}-{k}{a}"
    for d, k in ((10, 8), (16, 4), (16, 8), (28, 10), (40, 10))
    for a in ("", "a")
)

_NAME = re.compile(r"wresnet(\d+)-(\d+)(a?)")
# PyTorch momentum 0.9 of the reference's `bn1` (new = 0.1·old + 0.9·batch), in Flax's
# convention (new = momentum·old + (1 − momentum)·batch)
_FINAL_BN_MOMENTUM = 0.1


def parse_wide_resnet(name: str) -> tuple[int, int, bool] | None:
    """`wresnet<depth>-<k>[a]` -> `(depth, k, adapted)`; None for another name.

    Raises:
      ConfigError: a depth that is not 6n + 4 (n >= 1) or a widen factor of 0.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    depth, k, adapted = int(match[1]), int(match[2]), bool(match[3])
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"{name}: a Wide ResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...); "
            f"got {depth}."
        )
    if k < 1:
        raise ConfigError(f"{name}: the widen factor must be >= 1; got {k}.")
    return depth, k, adapted


def _avg_pool8(z):
    """The reference's `F.avg_pool2d(x, 8)`: 8×8 windows, stride 8, no padding."""
    if z.shape[1] < 8 or z.shape[2] < 8:
        raise ValueError(
            f"the Wide ResNet's final 8x8 average pool needs a feature map of at least 8x8; "
            f"got {z.shape[1]}x{z.shape[2]} (inputs of at least 29x29 px, e.g. 32; or "
            "final_pool='global')."
        )
    return nn.avg_pool(z, (8, 8), strides=(8, 8))


def _max_pool2(z):
    """The reference's `F.max_pool2d(x, 2)` of the adapted variant."""
    return nn.max_pool(z, (2, 2), strides=(2, 2))


def WideResNet(  # noqa: N802 -- the reference's name
    num_classes: int = 10,
    head: HeadConfig | None = None,
    depth: int = 16,
    widen_factor: int = 4,
    adapted: bool = False,
    feat_mult: float = 1.0,
    nonlin: str = "relu",
    dropout: float = 0.0,
    detach: bool = True,
    dtype: Any = jnp.float32,
    batch_norm: bool = True,
    final_pool: str = "reference",
) -> LocalNetwork:
    """A Wide ResNet WRN-depth-k built from local-loss blocks.

    Args:
      num_classes: K.
      head: `HeadConfig` of every block, or None for the backprop baseline.
      depth: 6n + 4 (n units per stage).
      widen_factor: k; stage widths 16k, 32k, 64k; stem 16 (adapted: 16k).
      adapted: the reference's adapted variant (`wresnet<d>-<k>a`).
      feat_mult: multiplies every width (int(feat_mult·w)); 1 is the reference, which
        has no such option for Wide ResNets (useful for small test models).
      nonlin: block nonlinearity (the final BatchNorm is followed by ReLU, as the
        reference's `F.relu`).
      dropout: the reference's dropout rate: element-wise between a unit's two
        convolutions (inside the blocks, channel-wise after each pre-activation, when
        adapted); never in the stem.
      detach: cut the graph between blocks (False: deep supervision).
      dtype: compute dtype; parameters stay float32.
      batch_norm: the BatchNorm of every convolution (`bn_pre`, the loss-only one);
        False is the reference's `--no-batch-norm`, which leaves the final BatchNorm
        (`bn_final`, the reference's `bn1`) in place; the convolutions keep their bias.
      final_pool: `reference` (default): the reference's `F.avg_pool2d(x, 8)` (adapted:
        `F.max_pool2d(x, 2)`), its output flattened into the output layer: 64k features
        at 32 px (adapted: 16·64k); ⌊h/8⌋²·64k (adapted: ⌊h/2⌋²·64k) for a larger final
        map of h×h, h = ⌈H/4⌉ (the reference's own code stops there with a shape
        error). `global`: the mean over H and W of the final map
        (`resnet.global_avg_pool`), 64k features at any input size: the same as
        `reference` at 29-32 px when not adapted, up to float rounding; adapted, a mean
        instead of the 2×2 max pool.

    Returns:
      An unbound `LocalNetwork`: blocks `conv1`, `layer<s>_<u>_conv<j>` (s 1..3, u the
      unit, j 1..2; the last one ends with the final BatchNorm → ReLU, `bn_final`, which
      with local heads has no scale or bias, as the reference never trains them then),
      the pooling (`final_pool`), `output` (zero weight in local modes). Call it as
      `net(x [B, H, W, C] float, labels [B] int or None, train=...)` ->
      `(logits [B, K] float32, local)`; H, W >= 29 for `reference`, not adapted (the
      final pool needs 8×8).

    Raises:
      ConfigError: a depth that is not 6n + 4, a widen factor < 1, a `feat_mult` that
        leaves a stage without a channel or an unknown `final_pool`; an unknown
        `nonlin` (when first applied).

    Implements the reference's Wide_ResNet (METHOD.md, Network).
    """
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"a Wide ResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...); got {depth}."
        )
    if widen_factor < 1:
        raise ConfigError(f"the Wide ResNet widen factor must be >= 1; got {widen_factor}.")
    check_final_pool(final_pool)
    n = (depth - 4) // 6
    k = widen_factor
    stages = [16 * k if adapted else 16, 16 * k, 32 * k, 64 * k]
    if not (math.isfinite(feat_mult) and int(feat_mult * min(stages)) >= 1):
        raise ConfigError(
            f"feat_mult={feat_mult} leaves a Wide ResNet stage ({min(stages)} channels x "
            f"feat_mult) without a channel; use a finite feat_mult >= 1/{min(stages)}."
        )
    stages = [int(feat_mult * w) for w in stages]

    def conv(features, name, **kw):
        return LocalResConv(
            features,
            head=head,
            nonlin=nonlin,
            use_bias=True,
            batch_norm=batch_norm,
            dtype=dtype,
            name=name,
            **kw,
        )

    # the stem: a bare conv (no dropout), its output normalised by the next unit
    layers: list[Any] = [conv(stages[0], "conv1", post_act=False)]
    in_planes = stages[0]
    unit_drop = dict(pre_act=True, post_act=False, dropout=dropout if adapted else 0.0)
    for s, (planes, stage_stride) in enumerate(zip(stages[1:], (1, 2, 2), strict=True)):
        for u in range(n):
            stride = stage_stride if u == 0 else 1
            shortcut = "identity" if stride == 1 and in_planes == planes else "conv"
            name = f"layer{s + 1}_{u}_conv"
            layers += [
                conv(
                    planes,
                    name + "1",
                    keep_input=True,
                    out_dropout=0.0 if adapted else dropout,
                    **unit_drop,
                ),
                conv(
                    planes,
                    name + "2",
                    stride=stride,
                    shortcut=shortcut,
                    shortcut_stride=stride,
                    **unit_drop,
                ),
            ]
            in_planes = planes
    # the final BatchNorm → ReLU rides on the last block (after its output, which no
    # local loss sees beyond): the reference trains its weight and bias only by backprop
    layers[-1] = layers[-1].clone(
        final_norm=True, final_norm_affine=head is None, final_norm_momentum=_FINAL_BN_MOMENTUM
    )
    if final_pool == "global":
        layers.append(global_avg_pool)
    else:
        layers.append(_max_pool2 if adapted else _avg_pool8)
    return network(layers, num_classes, head, detach, dtype)
