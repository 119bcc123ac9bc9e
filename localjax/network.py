"""The network: blocks cut from each other, then the output layer (METHOD.md, Network;
Local losses: no gradient passes to the block's input).

Usage::

    net = LocalNetwork(
        layers=(LocalBlock(MyUnit(32), head=head, name="res_0"),
                lambda z: nn.max_pool(z, (2, 2), strides=(2, 2)),
                LocalBlock(MyUnit(64), head=head, name="res_1")),
        output=OutputLayer(10, zero_init=True),
    )
    logits, local = net.apply(variables, x, labels, train=True, ...)  # one entry per block
    step = make_train_step(net, tx)      # per-block gradients: memory flat in depth

`LocalNetwork.sweep` is the single forward: `__call__` runs it with the blocks bound as
children, the per-block train step (`training.steps`) with each block's own gradient
taken right after its forward pass. The paper's MLP and VGG (`localjax.models`) are
`LocalNetwork`s; so is any model a user composes from blocks.

Letters: B batch, D features, H/W spatial size, C channels (NHWC), K classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from localjax.torch_defaults import torch_bias_init, torch_kernel_init

__all__ = [
    "cut",
    "apply_blocks",
    "OutputLayer",
    "LocalNetwork",
    "output_loss_weight",
    "count_params",
]


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
    return _run_layers(
        [(None if not isinstance(layer, nn.Module) else "", layer) for layer in layers],
        x,
        lambda _, block, h: block(h, labels, train=train),
        detach,
    )


def _run_layers(named_layers, h, run_block, detach: bool):
    """The block loop: plain layers applied, blocks run on their cut input."""
    local = []
    for name, layer in named_layers:
        if name is None:
            h = layer(h)
            continue
        h, terms = run_block(name, layer, cut(h, detach))
        local.append(terms)
    return h, local


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


class LocalNetwork(nn.Module):
    """Blocks and plain layers in sequence, a cut before every block, then the output layer.

    Attributes:
      layers: blocks (Linen modules called as `block(x, labels, train=train)` that return
        `(out, local)`: `LocalDense`, `LocalConv`, `LocalBlock`, or your own) interleaved
        with plain callables (pooling, reshapes). A block's variables live under its
        name, or `layers_<i>` (i its index in `layers`) when it has none.
      output: the output layer (usually `OutputLayer`), applied to the cut last output;
        its variables live under its name, or `output`.
      detach: cut the graph before every block and before the output layer (local
        learning). False: deep supervision (`local` losses still computed) or, with
        blocks that have no heads, the backprop baseline.
      output_weight: weight of the output layer's cross-entropy in the objective (the
        paper: 1 − β for predsim, else 1); read by `output_loss_weight`.
      dtype: the input is cast to it (the compute dtype; parameters stay float32).

    Call: `net(x, labels=None, *, train=False)` with `x` `[B, ...]` float (normalised)
    and `labels` `[B]` int or None; returns `(logits [B, K] float32, local)`, `local` one
    entry per block (`LocalHead`'s dict, or None without labels or heads).

    Raises:
      Nothing of its own; the blocks raise theirs (ValueError/TypeError for bad labels or
      shapes, ConfigError for bad settings).

    Implements the block stack with its cuts (METHOD.md, Network; Local losses: no
    gradient passes to the block's input; DESIGN.md, The network).
    """

    layers: Sequence[Any]
    output: nn.Module
    detach: bool = True
    output_weight: float = 1.0
    dtype: Any = jnp.float32

    # blocks keep the names they were given (checkpoints and metrics name them)
    preserve_adopted_names = True

    @nn.nowrap
    def named_layers(self) -> list[tuple[str | None, Any]]:
        """`(name, layer)` per layer, in order; plain callables have name None.

        On an unbound network these are the user's own unbound modules: block `b` named
        `n` is applied alone with `{"params": params[n], "batch_stats": ...[n], ...}`.
        """
        return [
            ((layer.name or f"layers_{i}") if isinstance(layer, nn.Module) else None, layer)
            for i, layer in enumerate(self.layers)
        ]

    @nn.nowrap
    def output_name(self) -> str:
        """Where the output layer's variables live."""
        return self.output.name or "output"

    @nn.nowrap
    def sweep(
        self,
        x: jax.Array,
        run_block: Callable[[str, nn.Module, jax.Array], tuple[jax.Array, Any]],
        run_output: Callable[[jax.Array], Any],
    ) -> tuple[Any, list[Any]]:
        """The forward pass, with how to run a block and the output layer left open.

        Args:
          x: `[B, ...]` float network input.
          run_block: `(name, block, h_cut) -> (out, local)`.
          run_output: `h_cut -> result` (the logits, or anything the caller needs).

        Returns:
          `(run_output's result, [local per block])`.
        """
        h, local = _run_layers(self.named_layers(), x.astype(self.dtype), run_block, self.detach)
        return run_output(cut(h, self.detach)), local

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool = False):
        """x `[B, ...]`, labels `[B]` int or None -> `(logits [B, K] float32, local)`."""
        bound = {
            name: layer for (name, _), layer in zip(self.named_layers(), self.layers, strict=True)
        }
        return self.sweep(
            x,
            lambda name, _, h: bound[name](h, labels, train=train),
            self.output,
        )


def output_loss_weight(model: nn.Module) -> float:
    """Weight of the output layer's cross-entropy: the network's `output_weight` (1 − β
    for the paper's predsim networks, `bio` included); for another module, 1 − β when its
    `head` attribute is a predsim `HeadConfig`, else 1.

    Args:
      model: a `LocalNetwork`, or any module (one with neither attribute gets 1).

    Returns:
      Python float in [0, 1].

    Raises:
      Nothing of its own.

    Implements the output loss weight (METHOD.md, Local losses: output layer).
    """
    if hasattr(model, "output_weight"):
        return float(model.output_weight)
    # a model of your own with a `head` attribute: the paper's rule from its head
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
