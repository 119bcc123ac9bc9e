"""The train state: parameters, BatchNorm statistics, fixed matrices, optimizer state
(METHOD.md, Training; DESIGN.md, Training).

Usage::

    state = create_train_state(model, tx, jax.random.key(0), images[:2], labels[:2])
    model.apply(state.variables(), x, train=False)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

__all__ = ["TrainState", "create_train_state"]


class TrainState(struct.PyTreeNode):
    """Everything a step reads and writes.

    Attributes:
      step: int32 scalar, number of updates done.
      params: the `params` collection (blocks, heads, output layer).
      batch_stats: BatchNorm running averages.
      constants: fixed random matrices (`bio` variant); never updated.
      opt_state: the optax optimizer state.

    Raises:
      Nothing of its own.

    Holds the state of the fused step (METHOD.md, Training; DESIGN.md, Decisions:
    Linen modules, pure losses).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    constants: Any
    opt_state: Any

    def variables(self) -> dict[str, Any]:
        """The Linen variables dict for `model.apply`."""
        out = {"params": self.params, "batch_stats": self.batch_stats}
        if self.constants:
            out["constants"] = self.constants
        return out


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
) -> TrainState:
    """Initialises parameters (heads included) and the optimizer state.

    Args:
      model: a network returning `(logits, local)` (see `models`).
      tx: any optax gradient transformation.
      key: PRNG key for initialisation.
      images: `[b, H, W, C]` float sample batch (values are not used, only shapes).
      labels: `[b]` int sample labels (so the local heads are created).

    Returns:
      A `TrainState` at step 0 (int32 `step`, float32 parameters).

    Raises:
      ValueError, TypeError: from `model.init`, e.g. labels that are not `[b]` integers
        in [0, K) (see `LocalHead`) or an input of the wrong rank.

    Initialises as the reference does (METHOD.md, Training: reference PyTorch default
    init; Local losses: zero-initialised decoder and output layer).
    """
    variables = jax.jit(lambda k, x, y: model.init({"params": k}, x, y))(key, images, labels)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        constants=variables.get("constants", {}),
        opt_state=tx.init(params),
    )
