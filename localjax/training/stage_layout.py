"""How a pipeline's per-stage state and activations are laid out in stage-sharded arrays
(issue 16; docs/pipeline.md, "The layout").

Usage::

    layout = StageLayout([stage0_state, stage1_state])     # pytrees (or shape structs)
    rows = layout.pack(0, stage0_state)       # {slot: [L_slot]} for stage 0
    tree = layout.unpack(0, rows)             # stage 0's pytree again
    layout.lengths                            # {slot: L_slot}; buffers are [S, L_slot]

The stages of a pipeline hold different state (their blocks' parameters, BatchNorm
statistics and optimizer state), yet one SPMD program runs them all, so each piece of
state must be one array sharded over the `stage` axis. The leaves are therefore put in
*slots*: the k-th largest leaf of every stage (per dtype) shares slot k, an array
`[S, L_k]` with L_k the largest of those leaves; leaves smaller than `SMALL` elements go
into one flat slot per dtype instead. Why slots and not one flat vector per stage: a
stage's update then writes each leaf straight into its own output buffer, and a weight
matrix whose slot it fills exactly is read in place (a reshape of the row), as the fused
step reads it. A single packed vector cost the tick a copy of every weight matrix for the
matmuls and one more pass over the whole state to concatenate the updates (MLP 4 × 1024
predsim, one stage on one core: 25 % over the fused step's time for the same blocks;
docs/pipeline.md). Leaves of equal shape are paired first, so in networks whose stages
repeat a block nothing is padded; what is padded is reported (`padding_waste`).

Activations cross a cut as one `[B, A]` array (`to_flat`, `from_flat`), A the widest cut's
elements per example, sent with the labels as one message of bytes (`to_message`,
`from_message`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SMALL",
    "StageLayout",
    "flat_width",
    "to_flat",
    "from_flat",
    "message_width",
    "to_message",
    "from_message",
]

# leaves below this many elements share one flat slot per dtype: concatenating them
# costs little, and a slot per bias or BatchNorm statistic would give a ResNet stage
# hundreds of tiny buffers
SMALL = 1 << 14


def flat_width(spec: Any) -> int:
    """Elements per example of an activation.

    Args:
      spec: an array or a pytree of `[B, ...]` arrays (or shape structs).

    Returns:
      int, the sum over leaves of the product of the non-batch dimensions.
    """
    return sum(math.prod(leaf.shape[1:]) for leaf in jax.tree.leaves(spec))


def to_flat(h: Any, width: int, dtype: Any) -> jax.Array:
    """An activation as one padded `[B, width]` array of `dtype`.

    Args:
      h: an array or pytree of `[B, ...]` arrays.
      width: A >= `flat_width(h)`.
      dtype: the dtype sent.

    Returns:
      `[B, width]` array, the leaves flattened per example in pytree order, zero-padded.
    """
    leaves = jax.tree.leaves(h)
    b = leaves[0].shape[0]
    flat = jnp.concatenate([leaf.reshape(b, -1).astype(dtype) for leaf in leaves], axis=1)
    return jnp.pad(flat, ((0, 0), (0, width - flat.shape[1])))


def from_flat(act: jax.Array, spec: Any) -> Any:
    """Inverse of `to_flat`.

    Args:
      act: `[B, A]` array.
      spec: the activation's structure: `[b, ...]` shapes (any b: the first axis is
        replaced by B) and dtypes.

    Returns:
      The pytree of `[B, ...]` arrays, cast back to `spec`'s dtypes.
    """
    leaves, treedef = jax.tree.flatten(spec)
    b, out, offset = act.shape[0], [], 0
    for leaf in leaves:
        size = math.prod(leaf.shape[1:])
        part = act[:, offset : offset + size].reshape((b, *leaf.shape[1:]))
        out.append(part.astype(leaf.dtype))
        offset += size
    return jax.tree.unflatten(treedef, out)


class StageLayout:
    """Where each stage's state leaves sit in the slot arrays.

    Args:
      templates: one pytree per stage (arrays or `ShapeDtypeStruct`s): that stage's
        state. The stages may differ in structure, shapes and dtypes.

    Attributes:
      lengths: `{slot name: L}`, elements per stage of each slot, names sorted as JAX
        sorts dict keys (`'<dtype>/<k>'`, k zero-padded to 4 digits, e.g.
        `'float32/0000'`, for a large-leaf slot; `'<dtype>/small'`).
      dtypes: `{slot name: numpy dtype}`.
      used: per stage, the bytes its leaves occupy (the rest of its rows is padding).

    Raises:
      Nothing of its own.

    Implements the state layout of issue 16 item 1 (each stage's state on its own
    devices only).
    """

    def __init__(self, templates: Sequence[Any]):
        self._treedefs, self._leaves = [], []
        for template in templates:
            leaves, treedef = jax.tree.flatten(template)
            self._treedefs.append(treedef)
            self._leaves.append([(np.dtype(x.dtype), tuple(x.shape)) for x in leaves])
        # per stage and leaf: (slot name, offset in the slot's row)
        self._where: list[list[tuple[str, int]]] = [[("", 0)] * len(x) for x in self._leaves]
        slots: dict[str, tuple[np.dtype, int]] = {}
        dtypes = sorted({dt for stage in self._leaves for dt, _ in stage}, key=str)
        for dt in dtypes:
            orders = []
            small_used = 0
            for s, stage in enumerate(self._leaves):
                large, offset = [], 0
                for i, (d, shape) in enumerate(stage):
                    if d != dt:
                        continue
                    if math.prod(shape) < SMALL:
                        self._where[s][i] = (f"{dt}/small", offset)
                        offset += math.prod(shape)
                    else:
                        large.append(i)
                small_used = max(small_used, offset)
                # largest first, equal shapes next to each other, so stages that repeat
                # a block pair their leaves exactly
                large.sort(key=lambda i, st=stage: (-math.prod(st[i][1]), st[i][1]))
                orders.append(large)
            for k in range(max(len(o) for o in orders)):
                name = f"{dt}/{k:04d}"
                members = [(s, o[k]) for s, o in enumerate(orders) if k < len(o)]
                slots[name] = (dt, max(math.prod(self._leaves[s][i][1]) for s, i in members))
                for s, i in members:
                    self._where[s][i] = (name, 0)
            if small_used:
                slots[f"{dt}/small"] = (dt, small_used)
        names = sorted(slots)
        self.lengths = {n: slots[n][1] for n in names}
        self.dtypes = {n: slots[n][0] for n in names}
        self.used = [
            sum(math.prod(shape) * dt.itemsize for dt, shape in stage) for stage in self._leaves
        ]

    @property
    def num_stages(self) -> int:
        """S."""
        return len(self._leaves)

    def pack(self, stage: int, tree: Any) -> dict[str, jax.Array]:
        """One stage's state as its rows of every slot.

        Args:
          stage: s.
          tree: a pytree of stage s's template structure, shapes and dtypes (a leaf of
            another dtype is not cast: its slot's row comes back in that dtype).

        Returns:
          `{slot: [L_slot]}` arrays of the slots' dtypes; slots stage s does not use are
          zeros.

        Raises:
          ValueError: `tree` is not of stage s's template structure.
          IndexError: no stage s.
        """
        leaves = self._treedefs[stage].flatten_up_to(tree)
        parts: dict[str, list[jax.Array]] = {n: [] for n in self.lengths}
        for (name, _), leaf in zip(self._where[stage], leaves, strict=True):
            parts[name].append(jnp.ravel(leaf))
        rows = {}
        for name, length in self.lengths.items():
            row = jnp.concatenate(parts[name]) if len(parts[name]) > 1 else None
            if row is None:
                row = parts[name][0] if parts[name] else jnp.zeros((0,), self.dtypes[name])
            if row.shape[0] < length:
                # the barrier keeps the update that computed `row` out of the padding's
                # fusion: fused, XLA:CPU ran Adam's update of a 784 x 1024 kernel
                # element by element (4.5 ms, against 0.7 ms plus a 0.3 ms copy)
                row = jnp.pad(jax.lax.optimization_barrier(row), (0, length - row.shape[0]))
            rows[name] = row
        return rows

    def unpack(self, stage: int, rows: Mapping[str, jax.Array]) -> Any:
        """Inverse of `pack`: stage s's pytree from its `{slot: [L_slot]}` rows."""
        leaves = []
        for (name, offset), (_, shape) in zip(self._where[stage], self._leaves[stage], strict=True):
            row, size = rows[name], math.prod(shape)
            part = row if offset == 0 and size == row.shape[0] else row[offset : offset + size]
            leaves.append(part.reshape(shape))
        return self._treedefs[stage].unflatten(leaves)

    def padding_waste(self) -> float:
        """The fraction of all stages' slot bytes that is padding (0 for no state)."""
        total = self.num_stages * self.bytes_per_stage()
        return 1.0 - sum(self.used) / total if total else 0.0

    def bytes_per_stage(self) -> int:
        """Bytes of one stage's rows of every slot (what one device holds)."""
        return sum(n * self.dtypes[s].itemsize for s, n in self.lengths.items())


def message_width(act_width: int, act_dtype: Any, label_dtype: Any) -> int:
    """Bytes per example of the message `to_message` builds."""
    return act_width * np.dtype(act_dtype).itemsize + np.dtype(label_dtype).itemsize


def _bytes(x: jax.Array) -> jax.Array:
    """`[B, ...]` -> `[B, n]` uint8, the same bytes (a bitcast, no arithmetic)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if np.dtype(x.dtype).itemsize > 1:
        x = jax.lax.bitcast_convert_type(x, jnp.uint8)
    return x.reshape(x.shape[0], -1)


def _from_bytes(b: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Inverse of `_bytes` for `[B, *shape]` arrays of `dtype`."""
    size = np.dtype(dtype).itemsize
    if size == 1:
        return b.reshape((b.shape[0], *shape)).astype(dtype)
    words = b.reshape((b.shape[0], *shape, size))
    return jax.lax.bitcast_convert_type(words, dtype)


def to_message(act: jax.Array, labels: jax.Array) -> jax.Array:
    """What one stage sends the next per tick, as one array: one collective per tick.

    Args:
      act: `[B, A]` activation (`to_flat`), any dtype.
      labels: `[B]` integer labels.

    Returns:
      `[B, message_width(A, act.dtype, labels.dtype)]` uint8: each example's activation
      bytes, then its label's. Bitcasts only: the values arrive bit for bit.

    Why one message: between two processes each pinned to one core, every collective of
    a tick cost milliseconds of hand-off (MLP 4 x 1024: 3 sends per tick took 4-6 ms
    where one 0.5 MB send alone takes 0.5 ms); see docs/pipeline.md.
    """
    return jnp.concatenate([_bytes(act), _bytes(labels)], axis=1)


def from_message(
    msg: jax.Array, act_width: int, act_dtype: Any, label_dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """Inverse of `to_message`: `[B, W]` uint8 -> (`[B, A]` act_dtype, `[B]` labels)."""
    split = act_width * np.dtype(act_dtype).itemsize
    act = _from_bytes(msg[:, :split], (act_width,), act_dtype)
    labels = _from_bytes(msg[:, split:], (), label_dtype)
    return act, labels
