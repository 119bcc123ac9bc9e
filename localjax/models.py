"""The paper's networks: MLP and VGG-style conv nets (METHOD.md, Network).

Usage::

    model = build_model("vgg8b", num_classes=10, loss="predsim", dim_in_decoder=1024)
    variables = model.init(key, images, labels)            # heads created with labels
    logits, local = model.apply(variables, images)         # eval: no heads evaluated
    (logits, local), upd = model.apply(variables, images, labels, train=True,
                                       rngs={"dropout": k}, mutable=["batch_stats"])

`local` is a list with one entry per block: the dict of `LocalHead`, or None.
Between blocks the graph is cut with `jax.lax.stop_gradient` (`cut`, the only place
this happens), so each block learns from its own local loss only; `detach=False`
gives deep supervision and `loss="backprop"` the ordinary end-to-end baseline.

Letters: B batch, H/W image size, C channels (NHWC), K classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from localjax.layers import (
    HeadConfig,
    LocalConv,
    LocalDense,
    torch_bias_init,
    torch_kernel_init,
)

__all__ = [
    "VGG_CONFIGS",
    "MODEL_NAMES",
    "LOSS_MODES",
    "cut",
    "apply_blocks",
    "network_layers",
    "OutputLayer",
    "MLP",
    "VGG",
    "build_model",
    "output_loss_weight",
    "count_params",
]

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
MODEL_NAMES = ("mlp", *VGG_CONFIGS)
LOSS_MODES = ("pred", "sim", "predsim", "backprop")
LARGE_INPUT = 64  # inputs larger than this get a 7x7 stride-2 first conv (STL-10)


def cut(x: jax.Array, enabled: bool = True) -> jax.Array:
    """The cut between blocks: no gradient reaches earlier blocks when `enabled`.

    Args:
      x: any array, a block's input.
      enabled: False for deep supervision (`detach=False`) and the backprop baseline.

    Returns:
      `x` unchanged in value, shape and dtype; with `enabled`, wrapped in
      `jax.lax.stop_gradient`.

    Raises:
      Nothing of its own.

    Implements the graph cut (METHOD.md, Local losses: no gradient passes to the block's
    input; DESIGN.md, Decisions: one cut, one gradient).
    """
    return jax.lax.stop_gradient(x) if enabled else x


def apply_blocks(
    layers: Sequence[Any],
    x: jax.Array,
    labels: jax.Array | None,
    *,
    train: bool,
    detach: bool,
) -> tuple[jax.Array, list[dict | None]]:
    """Runs a stack of blocks and plain layers, cutting the graph before each block.

    Args:
      layers: blocks (Linen modules called as `block(x, labels, train=train)` and
        returning `(out, local)`) interleaved with plain callables (pooling, reshapes).
      x: the stack's input, float array.
      labels: `[B]` int labels for the local losses, or None (no heads evaluated).
      train: training mode (batch statistics, dropout).
      detach: cut the graph before every block (local learning).

    Returns:
      `(output, local)`: the last layer's output (shape and dtype set by the layers, e.g.
      `[B, D]` float) and one `local` entry per block (dict of float32 scalars and
      `[B, K]` logits, or None).

    Raises:
      Nothing of its own; the blocks raise theirs (e.g. `ValueError`/`TypeError` for bad
      labels, see `LocalHead`).

    Implements the block stack with a cut before each block (METHOD.md, Network; Local
    losses: no gradient passes to the block's input).
    """
    local = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            x, terms = layer(cut(x, detach), labels, train=train)
            local.append(terms)
        else:
            x = layer(x)
    return x, local


def network_layers(model: nn.Module, x: jax.Array) -> tuple[list[Any], nn.Module]:
    """The layers of a network from `build_model`, as separate top-level modules.

    Lets a training step run the blocks one at a time (`localjax.step` takes each
    block's gradient inside the forward sweep, so local learning holds about one block's
    activations; DESIGN.md "Memory is part of the point"). Each returned module carries
    the name of its sub-tree in the network's variables: block `b` is applied with
    `{"params": params[b.name], "batch_stats": batch_stats[b.name], ...}`, and running
    `apply_blocks(layers, ...)` then `output(cut(h))` is exactly the network's forward.

    Args:
      model: an unbound `MLP` or `VGG`.
      x: `[B, H, W, C]` input (only its shape is read).

    Returns:
      `(layers, output)`: the `apply_blocks` list (blocks and plain callables) and the
      `OutputLayer` (named `output`).

    Raises:
      ValueError: for a `VGG` with an unknown `config`.
      NotImplementedError: for a network class that does not list its layers.
    """
    return model._layers(x), model._output_layer()


class OutputLayer(nn.Module):
    """The linear output layer; zero-initialised weight in local modes.

    Attributes:
      num_classes: K.
      zero_init: zero the weight (local modes); the bias keeps PyTorch's default.
      dtype: compute dtype.

    Call: `OutputLayer(K, zero_init)(x)` with `x` `[B, ...]` float (flattened to
    `[B, D]`); returns logits `[B, K]` float32.

    Raises:
      Nothing of its own (Flax raises if a later call's D differs from the init's).

    Implements the output layer (METHOD.md, Local losses: output layer; Network).
    """

    num_classes: int
    zero_init: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x `[B, ...]` -> logits `[B, K]` (float32)."""
        x = x.reshape(x.shape[0], -1)
        kernel_init = nn.initializers.zeros if self.zero_init else torch_kernel_init()
        logits = nn.Dense(
            self.num_classes,
            kernel_init=kernel_init,
            bias_init=torch_bias_init(x.shape[-1]),
            dtype=self.dtype,
            name="dense",
        )(x)
        return logits.astype(jnp.float32)


class _Network(nn.Module):
    """Shared fields and the forward pass of the paper's networks."""

    num_classes: int = 10
    head: HeadConfig | None = None  # None: backprop baseline, no local heads
    num_layers: int = 3
    num_hidden: int = 1024
    nonlin: str = "relu"
    dropout: float = 0.0
    detach: bool = True
    dtype: Any = jnp.float32

    @nn.nowrap
    def _dense_blocks(self, first_is_input: bool) -> list[LocalDense]:
        return [
            LocalDense(
                self.num_hidden,
                head=self.head,
                nonlin=self.nonlin,
                dropout=self.dropout,
                first_layer=first_is_input and i == 0,
                dtype=self.dtype,
                name=f"block_dense_{i}",
            )
            for i in range(self.num_layers)
        ]

    @nn.nowrap
    def _layers(self, x: jax.Array) -> list[Any]:
        raise TypeError(f"{type(self).__name__} must define _layers(x): its list of layers.")

    @nn.nowrap
    def _output_layer(self) -> OutputLayer:
        return OutputLayer(
            self.num_classes, zero_init=self.head is not None, dtype=self.dtype, name="output"
        )

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool = False):
        """Forward pass.

        Args:
          x: `[B, H, W, C]` float images (normalised).
          labels: `[B]` int labels; when given, every block's local loss is computed.
          train: batch statistics and dropout on.

        Returns:
          `(logits [B, K] float32, local)`: `local` has one entry per block.
        """
        local_mode = self.head is not None
        detach = local_mode and self.detach
        h, local = apply_blocks(
            self._layers(x), x.astype(self.dtype), labels, train=train, detach=detach
        )
        logits = self._output_layer()(cut(h, detach))
        return logits, local


class MLP(_Network):
    """Fully connected network: `num_layers` dense blocks of `num_hidden` units, then
    the output layer (the paper's 3×1024 MLP). Input images are flattened.

    Call: `model(x, labels=None, *, train=False)` with `x` `[B, H, W, C]` float
    (normalised) and `labels` `[B]` int or None; returns `(logits [B, K] float32, local)`,
    one `local` entry per block (see `LocalHead`).

    Raises:
      ValueError: an unknown `nonlin`, or bad labels / a `HeadConfig` error from the heads.
      TypeError: non-integer labels.

    Implements the MLP (METHOD.md, Network: the MLP is `num_layers` dense blocks).
    """

    @nn.nowrap
    def _layers(self, x):
        return self._dense_blocks(first_is_input=True)


class VGG(_Network):
    """VGG-style conv net (`VGG_CONFIGS`), then `num_layers` dense blocks, then output.

    Attributes (beyond the shared ones):
      config: name in `VGG_CONFIGS` (e.g. `vgg8b`); numbers are channels, "M" a 2×2
        max-pool between blocks.
      feat_mult: channel multiplier.
      dim_in_decoder: see `HeadConfig` (taken from `head`).

    Call: `model(x, labels=None, *, train=False)` with `x` `[B, H, W, C]` float
    (normalised) and `labels` `[B]` int or None; returns `(logits [B, K] float32, local)`,
    one `local` entry per block (see `LocalHead`).

    Raises:
      ValueError: an unknown `config` or `nonlin`, a non-4-D input, or bad labels.
      TypeError: non-integer labels.

    Implements the VGG networks (METHOD.md, Network: VGG configs; inputs > 64 px).
    """

    config: str = "vgg8b"
    feat_mult: float = 1.0

    @nn.nowrap
    def _layers(self, x):
        if self.config not in VGG_CONFIGS:
            raise ValueError(
                f"unknown VGG config {self.config!r}; choose one of {list(VGG_CONFIGS)}."
            )
        layers: list[Any] = []
        first = True
        for i, item in enumerate(VGG_CONFIGS[self.config]):
            if item == "M":
                layers.append(lambda z: nn.max_pool(z, (2, 2), strides=(2, 2)))
                continue
            large = first and x.shape[1] > LARGE_INPUT
            layers.append(
                LocalConv(
                    int(item * self.feat_mult),
                    head=self.head,
                    nonlin=self.nonlin,
                    dropout=self.dropout,
                    kernel_size=7 if large else 3,
                    stride=2 if large else 1,
                    padding=3 if large else 1,
                    first_layer=first,
                    dtype=self.dtype,
                    name=f"block_conv_{i}",
                )
            )
            first = False
        layers.append(lambda z: z.reshape(z.shape[0], -1))  # [B, h, w, C] -> [B, D]
        # the reference's dense classifier treats its first block as a first layer
        return layers + self._dense_blocks(first_is_input=True)


def build_model(
    name: str,
    num_classes: int,
    loss: str = "predsim",
    *,
    num_layers: int | None = None,
    num_hidden: int = 1024,
    feat_mult: float = 1.0,
    nonlin: str = "relu",
    dropout: float = 0.0,
    beta: float = 0.99,
    dim_in_decoder: int = 4096,
    bio: bool = False,
    target_proj_size: int = 128,
    unsup: str = "none",
    alpha: float = 0.0,
    detach: bool = True,
    dtype: Any = jnp.float32,
) -> _Network:
    """Builds one of the paper's networks by name.

    Args:
      name: `mlp` or a key of `VGG_CONFIGS` (`vgg8b`, `vgg11b`, ...).
      num_classes: K.
      loss: `pred`, `sim`, `predsim` (local learning) or `backprop` (baseline, no heads).
      num_layers: dense blocks (default 3 for `mlp`, 1 after a VGG conv stack).
      num_hidden: units per dense block.
      feat_mult: VGG channel multiplier.
      nonlin, dropout: block nonlinearity and dropout rate.
      beta, dim_in_decoder, bio, target_proj_size, unsup, alpha: see `HeadConfig`.
      detach: cut the graph between blocks (False: deep supervision).
      dtype: compute dtype (`jnp.float32` or `jnp.bfloat16`); parameters stay float32.

    Returns:
      An unbound Linen module; see the module docstring for its call signature.

    Raises:
      ValueError: for an unknown model or loss name (the message lists the known ones),
        or an invalid head setting (from `HeadConfig`: beta/alpha outside [0, 1],
        num_classes < 2, unknown unsup).

    Implements the paper's networks and loss modes (METHOD.md, Network; Local losses).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}.")
    if loss not in LOSS_MODES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {list(LOSS_MODES)}.")
    head = None
    if loss != "backprop":
        head = HeadConfig(
            loss=loss,
            num_classes=num_classes,
            beta=beta,
            dim_in_decoder=dim_in_decoder,
            bio=bio,
            target_proj_size=target_proj_size,
            unsup=unsup,
            alpha=alpha,
        )
    common = dict(
        num_classes=num_classes,
        head=head,
        num_hidden=num_hidden,
        nonlin=nonlin,
        dropout=dropout,
        detach=detach,
        dtype=dtype,
    )
    if name == "mlp":
        return MLP(num_layers=3 if num_layers is None else num_layers, **common)
    return VGG(
        config=name,
        feat_mult=feat_mult,
        num_layers=1 if num_layers is None else num_layers,
        **common,
    )


def output_loss_weight(model: nn.Module) -> float:
    """Weight of the output layer's cross-entropy: 1 − β in `predsim` mode, else 1
    (the reference scales the global loss so, `bio` included).

    Args:
      model: a network from `build_model` (any object; one without a `head` gets 1).

    Returns:
      Python float in [0, 1].

    Raises:
      Nothing of its own.

    Implements the output loss weight (METHOD.md, Local losses: output layer).
    """
    head = getattr(model, "head", None)
    if head is not None and head.loss == "predsim":
        return 1.0 - head.beta
    return 1.0


def count_params(params: Any) -> tuple[int, int]:
    """Counts trained parameters.

    Args:
      params: the `params` collection (a nested dict of arrays).

    Returns:
      `(inference, total)`: Python ints, parameters used at test time (blocks and output
      layer), and those plus every local head's.

    Raises:
      AttributeError: if a leaf has no `shape` (not an array).

    Reports the cost of the local heads (METHOD.md, Local losses; DESIGN.md, Decisions:
    memory is part of the point).
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    total = inference = 0
    for path, leaf in flat:
        size = math.prod(leaf.shape)
        total += size
        if not any(getattr(k, "key", None) == "head" for k in path):
            inference += size
    return inference, total
