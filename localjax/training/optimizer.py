"""The optimizer and the learning-rate schedule of the paper (METHOD.md, Training: Adam,
milestones).

Usage::

    tx = make_optimizer(5e-4, milestones=(100, 150, 175, 188), steps_per_epoch=469)
    epoch_learning_rate(5e-4, (100, 150, 175, 188), epoch=101)   # 1.25e-4
"""

from __future__ import annotations

import collections

import numpy as np
import optax

__all__ = ["milestone_schedule", "epoch_learning_rate", "make_optimizer"]


def milestone_schedule(
    lr: float, milestones: tuple[int, ...], steps_per_epoch: int, decay: float = 0.25
) -> optax.Schedule:
    """Per-step learning rate of the paper: lr·decay^k, k = milestones passed.

    Epochs count from 1; epoch e uses k = #{m ≤ e − 1}, so with milestone 100 epoch 101
    is the first at the lower rate. Update number `count` (0-based) lies in epoch
    count // steps_per_epoch + 1. `optax.piecewise_constant_schedule` with a boundary at
    update m·steps_per_epoch per milestone (a milestone given twice decays twice).

    Args:
      lr: initial learning rate.
      milestones: epochs after which the rate is multiplied by `decay`.
      steps_per_epoch: updates per epoch (> 0).
      decay: factor per milestone (paper 0.25).

    Returns:
      An optax schedule `count` (int scalar) -> float32 scalar learning rate.

    Raises:
      ValueError: a negative `decay` (from optax).

    Implements the schedule (METHOD.md, Training: milestones).
    """
    repeats = collections.Counter(m * steps_per_epoch for m in milestones)
    return optax.piecewise_constant_schedule(
        lr, {boundary: decay**n for boundary, n in repeats.items()}
    )


def epoch_learning_rate(
    lr: float, milestones: tuple[int, ...], epoch: int, decay: float = 0.25
) -> float:
    """The learning rate epoch `epoch` (1-based) trains at, read off `milestone_schedule`.

    Args:
      lr: initial learning rate.
      milestones: epochs after which the rate is multiplied by `decay`.
      epoch: 1-based epoch number.
      decay: factor per milestone (paper 0.25).

    Returns:
      Python float: the float32 rate the step uses, written with the fewest digits that
      identify it (5e-4, not 0.0005000000237).

    Raises:
      ValueError: a negative `decay`.

    Implements the schedule (METHOD.md, Training: milestones).
    """
    rate = np.float32(milestone_schedule(lr, milestones, 1, decay)(epoch - 1))
    return float(np.format_float_positional(rate, unique=True))


def make_optimizer(
    lr: float, milestones: tuple[int, ...], steps_per_epoch: int, decay: float = 0.25
) -> optax.GradientTransformation:
    """Adam (β1 0.9, β2 0.999, eps 1e-8, no weight decay) with the milestone schedule.

    One Adam over all parameters equals the reference's one Adam per layer, since
    Adam is element-wise.

    Args:
      lr, milestones, steps_per_epoch, decay: as in `milestone_schedule`.

    Returns:
      An `optax.GradientTransformation` over any float32 parameter pytree.

    Raises:
      Nothing of its own.

    Implements the optimiser (METHOD.md, Training: Adam, milestones).
    """
    return optax.adam(
        milestone_schedule(lr, milestones, steps_per_epoch, decay), b1=0.9, b2=0.999, eps=1e-8
    )
