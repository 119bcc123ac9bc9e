"""The optimizer and the learning-rate schedule of the paper (METHOD.md, Training: Adam,
milestones).

Usage::

    tx = make_optimizer(5e-4, milestones=(100, 150, 175, 188), steps_per_epoch=469)
    epoch_learning_rate(5e-4, (100, 150, 175, 188), epoch=101)   # 1.25e-4
"""

from __future__ import annotations

import collections
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from localjax.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "milestone_schedule",
    "epoch_learning_rate",
    "scale_by_torch_amsgrad",
    "make_optimizer",
]


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


OPTIMIZERS = ("adam", "amsgrad", "sgd")


class TorchAmsgradState(NamedTuple):
    """State of `scale_by_torch_amsgrad`: step count, first and second moments, and the
    running maximum of the (uncorrected) second moment; moments shaped like the params."""

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def scale_by_torch_amsgrad(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """AMSGrad as PyTorch's `Adam(amsgrad=True)` computes it.

    PyTorch keeps the maximum of the raw second moment and bias-corrects that maximum at
    the current step: update = (m / (1 − β1^t)) / (√max_s v_s / √(1 − β2^t) + eps).
    `optax.scale_by_amsgrad` takes the maximum of the already corrected moments, which
    differs whenever the correction changes (every early step), so the reference's
    `--optim amsgrad` needs this transform.

    Args:
      b1, b2, eps: as in PyTorch's Adam (0.9, 0.999, 1e-8).

    Returns:
      An optax transformation mapping gradients (any float pytree) to unscaled updates of
      the same shapes and dtypes (follow it with a negative learning-rate scale).

    Raises:
      Nothing of its own.

    Implements the reference's `--optim amsgrad` (train.py: `optim.Adam(..., amsgrad=True)`).
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return TorchAmsgradState(jnp.zeros([], jnp.int32), zeros, zeros, zeros)

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        count = optax.safe_increment(state.count)
        c1 = 1.0 - b1 ** count.astype(jnp.float32)
        c2_sqrt = jnp.sqrt(1.0 - b2 ** count.astype(jnp.float32))
        updates = jax.tree.map(lambda m, v: (m / c1) / (jnp.sqrt(v) / c2_sqrt + eps), mu, nu_max)
        return updates, TorchAmsgradState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    lr: float,
    milestones: tuple[int, ...],
    steps_per_epoch: int,
    decay: float = 0.25,
    *,
    optim: str = "adam",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """The reference's optimizer with the milestone schedule (default: Adam, β1 0.9,
    β2 0.999, eps 1e-8, no weight decay).

    One optimizer over all parameters equals the reference's one optimizer per block,
    since Adam, AMSGrad, SGD with momentum and weight decay are all element-wise.
    `weight_decay` is PyTorch's: wd·θ added to the gradient of every parameter before the
    moments (an L2 term, not decoupled AdamW), BatchNorm and heads included, as each of
    the reference's block optimizers holds all of its block's parameters.

    Args:
      lr, milestones, steps_per_epoch, decay: as in `milestone_schedule`.
      optim: `adam`, `amsgrad` (`scale_by_torch_amsgrad`) or `sgd` (PyTorch SGD: buffer
        b ← μ·b + g, first b = g, no dampening, no Nesterov).
      momentum: μ of `sgd`; must be 0 for Adam and AMSGrad (the reference ignores it
        there).
      weight_decay: wd ≥ 0.

    Returns:
      An `optax.GradientTransformation` over any float32 parameter pytree.

    Raises:
      ConfigError: an unknown `optim`, `momentum` with Adam/AMSGrad, a momentum outside
        [0, 1) or a negative or non-finite weight decay.

    Implements the optimiser (METHOD.md, Training: Adam, milestones; the reference's
    `--optim`, `--momentum`, `--weight-decay`).
    """
    if optim not in OPTIMIZERS:
        raise ConfigError(f"unknown optim {optim!r}; choose one of {list(OPTIMIZERS)}.")
    if optim != "sgd" and momentum != 0:
        raise ConfigError(
            f"momentum={momentum} applies to optim='sgd' only; {optim} has its own moments "
            "(set --config.momentum=0, or --config.optim=sgd)."
        )
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"momentum={momentum} must be in [0, 1).")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight_decay={weight_decay} must be >= 0 and finite.")
    schedule = milestone_schedule(lr, milestones, steps_per_epoch, decay)
    scale = {
        "adam": lambda: optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        "amsgrad": scale_by_torch_amsgrad,
        "sgd": lambda: optax.trace(decay=momentum) if momentum else optax.identity(),
    }[optim]()
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    return optax.chain(*parts, scale, optax.scale_by_learning_rate(schedule))
