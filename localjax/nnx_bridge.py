"""Local-loss blocks inside Flax NNX models (DESIGN.md, Decisions: Linen modules, pure
losses).

Usage::

    block = to_nnx(LocalBlock(MyUnit(64), head=head), x[:2], labels[:2], rngs=nnx.Rngs(0))
    (out, local), _ = block(x, labels, train=True, mutable=["batch_stats"])
    loss = local_objective(logits, [local, ...], labels)   # train with nnx.value_and_grad
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

__all__ = ["to_nnx"]


def to_nnx(block: nn.Module, *sample_args: Any, rngs: Any, **sample_kwargs: Any):
    """A Linen block as a Flax NNX module, initialised on a sample batch.

    A thin wrapper over `flax.nnx.bridge.ToNNX(block, rngs=rngs).lazy_init(...)`: the
    result lives inside an `nnx.Module`, keeps the block's `params` / `batch_stats` /
    `constants` as NNX variables, and is called like the Linen block. Pass
    `mutable=["batch_stats"]` when calling it with `train=True` (BatchNorm updates its
    running averages). Train it with `local_objective` and `nnx.value_and_grad`.

    Args:
      block: a Linen block, e.g. `LocalBlock(...)`, `LocalConv(...)`.
      *sample_args: sample inputs for initialisation, e.g. `x [b, ...]` float and
        `labels [b]` int (give labels so that the local heads are created).
      rngs: `nnx.Rngs` (with a `dropout` stream if the block uses dropout) or a key.
      **sample_kwargs: sample keyword arguments (e.g. `train=False`).

    Returns:
      An initialised `flax.nnx.bridge.ToNNX` module.

    Raises:
      Nothing of its own; whatever the block raises on the sample inputs (see
      `LocalBlock`: ValueError/TypeError for bad outputs or labels).

    Bridges the blocks (METHOD.md, Network; DESIGN.md, Decisions: Linen
    modules, pure losses — users of Flax NNX wrap our blocks with `flax.nnx.bridge`).
    """
    from flax import nnx

    return nnx.bridge.ToNNX(block, rngs=rngs).lazy_init(*sample_args, **sample_kwargs)
