"""Which examples each batch of an epoch holds.

Usage::

    for idx in epoch_order(labels, 128, seed=0, epoch=3):   # idx: [<=128] int32
        ...

Plain shuffling (every example once per epoch, last partial batch kept).
"""

from __future__ import annotations

import numpy as np

from localjax.data import epoch_batches

__all__ = ["epoch_order"]


def epoch_order(
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    classes_per_batch: int = 0,
    until_epoch: int = 0,
) -> list[np.ndarray]:
    """The batches of one epoch as index arrays.

    Args:
      labels: `[N]` int labels of the training set.
      batch_size: examples per batch.
      seed: run seed; the order depends only on (seed, epoch), so resumed runs repeat it.
      epoch: 1-based epoch.
      classes_per_batch: reserved for the classes-per-batch sampler (0 = off).
      until_epoch: reserved for the classes-per-batch sampler.

    Returns:
      A list of int32 index arrays covering every example once.
    """
    del classes_per_batch, until_epoch
    return epoch_batches(len(labels), batch_size, seed, epoch)
