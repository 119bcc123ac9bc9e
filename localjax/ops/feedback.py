"""Feedback alignment (Lillicrap et al. 2016) for the backprop-free `bio` variant,
Nøkland & Eidnes (2019) (METHOD.md, Backprop-free variant: `pred`).

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
      ValueError: if `x` or `w` is not 2-D, or `w` and `feedback` shapes differ (so a
        `feedback` that is not 2-D is refused too).

    Implements the feedback-alignment decoder (METHOD.md, Backprop-free variant: `pred`).
    """
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(
            f"fa_matmul expects x [B, I] and w [I, O]; got {tuple(x.shape)} and "
            f"{tuple(w.shape)}. Flatten x to [B, I] first."
        )
    if w.shape != feedback.shape:
        raise ValueError(
            f"fa_matmul: weight {tuple(w.shape)} and feedback {tuple(feedback.shape)} "
            "must have the same shape."
        )
    return x @ w


def _fa_fwd(x, w, feedback):
    # a zero-size array of w's dtype: the cotangent of w must have w's dtype
    w_dtype = jnp.zeros((0,), w.dtype)
    return fa_matmul(x, w, feedback), (x, feedback, w_dtype)


def _fa_bwd(res, dy):
    x, feedback, w_dtype = res
    dx = (dy @ feedback.T.astype(dy.dtype)).astype(x.dtype)  # [B, O] @ [O, I] -> [B, I]
    dw = (x.T.astype(dy.dtype) @ dy).astype(w_dtype.dtype)  # [I, B] @ [B, O] -> [I, O]
    return dx, dw, jnp.zeros_like(feedback)


fa_matmul.defvjp(_fa_fwd, _fa_bwd)
