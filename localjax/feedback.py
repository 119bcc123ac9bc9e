"""Feedback alignment (Lillicrap et al. 2016) for the backprop-free `bio` variant,
Nøkland & Eidnes (2019) Sec. 2.4.

Usage::

    y = fa_matmul(x, w, b_feedback)   # forward x @ w; backward sends dy @ b_feedbackᵀ to x

Letters: B batch, I input features, O output features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["fa_matmul"]


@jax.custom_vjp
def fa_matmul(x: jax.Array, w: jax.Array, feedback: jax.Array) -> jax.Array:
    """Matrix product whose input gradient uses a fixed random matrix instead of `w`.

    Forward: `x @ w`. Backward: the gradient to `x` is `dy @ feedbackᵀ` (feedback
    alignment), the gradient to `w` is the ordinary `xᵀ @ dy`, and `feedback` gets a
    zero gradient (it is never trained).

    Args:
      x: `[B, I]` float array.
      w: `[I, O]` float array, the trained forward weight.
      feedback: `[I, O]` float array, the fixed feedback weight B.

    Returns:
      `[B, O]` array of x's dtype.

    Raises:
      ValueError: if `w` and `feedback` shapes differ.
    """
    if w.shape != feedback.shape:
        raise ValueError(
            f"fa_matmul: weight {tuple(w.shape)} and feedback {tuple(feedback.shape)} "
            "must have the same shape."
        )
    return x @ w


def _fa_fwd(x, w, feedback):
    return fa_matmul(x, w, feedback), (x, feedback)


def _fa_bwd(res, dy):
    x, feedback = res
    dx = (dy @ feedback.T).astype(x.dtype)
    dw = (x.T @ dy).astype(feedback.dtype)
    return dx, dw, jnp.zeros_like(feedback)


fa_matmul.defvjp(_fa_fwd, _fa_bwd)
