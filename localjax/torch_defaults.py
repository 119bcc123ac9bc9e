"""The PyTorch defaults the reference code relies on: initialisers, BatchNorm constants,
nonlinearities (METHOD.md, Training: reference PyTorch default init; Network).

Usage::

    nn.Dense(512, kernel_init=torch_kernel_init(), bias_init=torch_bias_init(784))
    nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPS)
    h = activation("leakyrelu")(h)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import normalization

from localjax.errors import ConfigError

__all__ = [
    "TorchBatchNorm",
    "BN_MOMENTUM",
    "BN_EPS",
    "NONLINEARITIES",
    "torch_kernel_init",
    "torch_bias_init",
    "fixed_uniform",
    "activation",
]

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 in Flax's convention
BN_EPS = 1e-5

NONLINEARITIES = {
    "relu": nn.relu,
    "leakyrelu": functools.partial(nn.leaky_relu, negative_slope=0.01),
}


def torch_kernel_init() -> Callable:
    """PyTorch's default weight init for Linear/Conv2d: U(−1/√fan_in, 1/√fan_in).

    Returns:
      A Flax initializer `(key, shape, dtype) -> array`; fan_in is read from the
      kernel shape (`[I, O]` dense, `[kh, kw, I, O]` conv).

    Raises:
      Nothing of its own (Flax's initializer raises when called on a shape it cannot
      read a fan_in from).

    Implements the reference init (METHOD.md, Training: reference PyTorch default init).
    """
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
    """PyTorch's default bias init: U(−1/√fan_in, 1/√fan_in).

    Args:
      fan_in: number of inputs of the layer (I, or kh·kw·I for a conv); > 0.

    Returns:
      A Flax initializer `(key, shape, dtype) -> array`.

    Raises:
      ValueError: if `fan_in` is not positive.

    Implements the reference init (METHOD.md, Training: reference PyTorch default init).
    """
    if fan_in <= 0:
        raise ValueError(f"torch_bias_init needs fan_in > 0; got {fan_in}.")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def fixed_uniform(fan_in: int) -> Callable:
    """U(−1/√fan_in, 1/√fan_in) float32 for the fixed random matrices of `bio`.

    Args:
      fan_in: the rows of the matrix (K for the label projection, D for a feedback
        matrix); > 0.

    Returns:
      `(key, shape) -> float32 array`, for `Module.variable("constants", ...)`.

    Raises:
      ZeroDivisionError: `fan_in` is 0.

    Implements the fixed matrices of METHOD.md, Backprop-free variant (the reference draws
    them as PyTorch's Linear weights).
    """
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The block nonlinearity by name (METHOD.md: relu, or leakyrelu with slope 0.01).

    Args:
      name: `relu` or `leakyrelu`.

    Returns:
      An elementwise function, any shape and float dtype in, the same out.

    Raises:
      ConfigError: for an unknown name, listing the known ones.
    """
    if name not in NONLINEARITIES:
        raise ConfigError(f"unknown nonlinearity {name!r}; choose one of {sorted(NONLINEARITIES)}.")
    return NONLINEARITIES[name]


class TorchBatchNorm(nn.BatchNorm):
    """Flax's BatchNorm whose running variance follows PyTorch: unbiased.

    In training mode both normalise by the biased batch variance; PyTorch's running
    variance then averages the *unbiased* one, var·n/(n − 1) with n = the number of
    values per feature (B, or B·H·W for a feature map), where Flax averages the biased
    one. That difference reaches evaluation only (running averages are not used in
    training). Same variables as `nn.BatchNorm` (`params`: scale, bias; `batch_stats`:
    mean, var), so checkpoints keep their layout.

    Attributes (beyond `nn.BatchNorm`'s):
      unbiased_running_var: average var·n/(n − 1) (PyTorch, the reference) when True,
        the biased var (Flax) when False.

    Call: `bn(x, use_running_average=None)` with `x` `[..., C]` float; returns the same
    shape and the module's dtype.

    Raises:
      Nothing of its own; `nn.BatchNorm`'s errors.

    Implements the reference's `torch.nn.BatchNorm1d/2d` (METHOD.md, Network: BatchNorm).
    """

    unbiased_running_var: bool = True

    @nn.compact
    def __call__(self, x, use_running_average=None, *, mask=None):
        """x `[..., C]` -> normalised x, updating `batch_stats` in training mode."""
        training = not nn.module.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        old_var = self.get_variable("batch_stats", "var")  # None while initialising
        y = super().__call__(x, use_running_average=use_running_average, mask=mask)
        if training and self.unbiased_running_var and not self.is_initializing():
            axes = tuple(range(x.ndim - 1))
            n = math.prod(x.shape[a] for a in axes)
            _, var = normalization._compute_stats(
                x,
                axes,
                dtype=self.dtype,
                use_fast_variance=self.use_fast_variance,
                force_float32_reductions=self.force_float32_reductions,
            )
            correction = n / max(n - 1, 1)
            new_var = self.momentum * old_var + (1 - self.momentum) * var * correction
            self.put_variable("batch_stats", "var", new_var)
        return y
