"""A CPU speed option for convolutions: the weight gradient of a stride-1 'same' conv as a
sum of shifted matmuls (docs/performance.md). Same math; only float rounding differs.

Usage::

    with conv_wgrad_context("auto"):        # shifted on the CPU backend, XLA's elsewhere
        compiled = jax.jit(step).lower(state, images, labels).compile()

Letters: B batch, H/W spatial size, C channels (NHWC), k kernel size.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from localjax.errors import ConfigError

__all__ = ["CONV_WGRADS", "conv_shifted_wgrad", "shifted_wgrad_convs", "conv_wgrad_context"]

_DN = ("NHWC", "HWIO", "NHWC")


def _conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    p = w.shape[0] // 2
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=_DN)


@jax.custom_vjp
def conv_shifted_wgrad(x: jax.Array, w: jax.Array) -> jax.Array:
    """Stride-1 'same' convolution whose weight gradient is a sum of shifted matmuls.

    The value and the input gradient are XLA's (`lax.conv_general_dilated` and its
    transpose); only the weight gradient is computed differently, as
    dW[i, j] = x_shifted(i, j)ᵀ · dy over the k×k offsets: on XLA:CPU this ran ~9x
    faster than XLA's own weight-gradient convolution (docs/performance.md). Same math,
    float32 summation order differs (relative error ~1e-7).

    Args:
      x: `[B, H, W, C_in]` float input (NHWC).
      w: `[k, k, C_in, C_out]` kernel (HWIO), k odd; padding k//2 on each side.

    Returns:
      `[B, H, W, C_out]` of the promoted dtype.

    Raises:
      Nothing of its own; `lax.conv_general_dilated` raises (TypeError/ValueError) for
      mismatched ranks or channel counts.

    A CPU speed option for the conv blocks (METHOD.md, Network: conv block; DESIGN.md,
    modules: `experiments/benchmark.py`).
    """
    return _conv_same(x, w)


def _csw_fwd(x, w):
    return _conv_same(x, w), (x, w)


def _csw_bwd(res, dy):
    x, w = res
    k, _, c_in, c_out = w.shape
    p = k // 2
    _, h, wd, _ = x.shape
    dx = jax.vjp(lambda x_: _conv_same(x_, w), x)[1](dy)[0]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    d2 = dy.reshape(-1, c_out)  # [B·H·W, C_out]
    rows = [
        jnp.stack([xp[:, i : i + h, j : j + wd, :].reshape(-1, c_in).T @ d2 for j in range(k)])
        for i in range(k)
    ]
    return dx, jnp.stack(rows).astype(w.dtype)


conv_shifted_wgrad.defvjp(_csw_fwd, _csw_bwd)


def _is_plain_same_conv(m: nn.Conv, x: jax.Array) -> bool:
    ks = tuple(m.kernel_size)
    return (
        x.ndim == 4
        and len(ks) == 2
        and ks[0] == ks[1]
        and ks[0] % 2 == 1
        and m.strides in (1, (1, 1), None)
        and m.padding in (ks[0] // 2, ((ks[0] // 2,) * 2,) * 2, [(ks[0] // 2,) * 2] * 2)
        and m.input_dilation in (1, (1, 1), None)
        and m.kernel_dilation in (1, (1, 1), None)
        and m.feature_group_count == 1
        and not m.mask
    )


@contextlib.contextmanager
def shifted_wgrad_convs():
    """Within this context, every Flax `nn.Conv` that is a stride-1 'same' k×k
    convolution (all of VGG's, the sim projections included) runs as
    `conv_shifted_wgrad`; others are untouched. Trace (jit) the step inside it::

        with shifted_wgrad_convs():
            compiled = jax.jit(step).lower(state, images, labels).compile()

    The forward values are unchanged; the weight gradient equals XLA's up to float
    rounding. A CPU speed option measured in `experiments/benchmark.py --conv_wgrad`.

    Yields:
      None; shapes and dtypes of the intercepted convs are unchanged (`[B, H, W, C]`).

    Raises:
      Nothing of its own.

    An engineering option (DESIGN.md, Decisions: memory is part of the point; modules:
    `experiments/benchmark.py`); it changes no math of METHOD.md.
    """

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if not (
            isinstance(m, nn.Conv)
            and context.method_name == "__call__"
            and args
            and _is_plain_same_conv(m, args[0])
        ):
            return next_fun(*args, **kwargs)
        x = args[0]
        kernel = m.param(
            "kernel", m.kernel_init, (*m.kernel_size, x.shape[-1], m.features), m.param_dtype
        )
        bias = m.param("bias", m.bias_init, (m.features,), m.param_dtype) if m.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=m.dtype)
        y = conv_shifted_wgrad(x, kernel)
        return y + bias.reshape((1, 1, 1, -1)) if bias is not None else y

    with nn.intercept_methods(interceptor):
        yield


CONV_WGRADS = ("auto", "xla", "shifted")


def conv_wgrad_context(choice: str):
    """The tracing context for a `conv_wgrad` choice: `shifted_wgrad_convs()` or none.

    Args:
      choice: `xla` (XLA's convolution), `shifted` (`shifted_wgrad_convs`), or `auto`
        (shifted on the CPU backend, where XLA's weight-gradient convolution was measured
        ~10× slower than its forward pass; XLA's elsewhere).

    Returns:
      A context manager; trace (jit) the step inside it.

    Raises:
      ConfigError: `choice` is not in `CONV_WGRADS`.

    An engineering option (docs/performance.md); it changes no
    math of METHOD.md.
    """
    if choice not in CONV_WGRADS:
        raise ConfigError(f"unknown conv_wgrad {choice!r}; choose one of {list(CONV_WGRADS)}.")
    if choice == "shifted" or (choice == "auto" and jax.default_backend() == "cpu"):
        return shifted_wgrad_convs()
    return contextlib.nullcontext()
