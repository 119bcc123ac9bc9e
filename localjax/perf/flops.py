"""FLOPs of one training step, counted from the architecture (for benchmarks).

Usage::

    flops = model_flops(build_model("mlp", 10, "predsim"), batch=128, image_shape=(28, 28, 1))
    ops = dense_matmuls(build_model("mlp", 10, "predsim"), batch=128, image_shape=(28, 28, 1))
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from localjax.blocks import LocalConv, LocalDense
from localjax.heads import decoder_pool_geometry

__all__ = ["model_flops", "dense_matmuls", "MATMUL_LAYOUTS"]


def _head_flops(b: int, shape: tuple[int, ...], cfg) -> float:
    """Training FLOPs (forward + backward) of one block's local heads.

    `shape` is the block output without batch: `(D,)` or `(H, W, C)`.
    """
    if cfg is None:
        return 0.0
    flops = 0.0
    k = cfg.num_classes
    if cfg.uses_sim:
        if len(shape) == 3:
            h, w, c = shape
            if not cfg.bio:  # 3x3 conv C->C projection: forward, weight and input grads
                flops += 3 * 2 * b * h * w * 9 * c * c
            d = c  # the similarity of a map uses per-channel std: [B, C]
        else:
            d = shape[0]
            if not cfg.bio:  # D x D projection
                flops += 3 * 2 * b * d * d
        flops += 3 * 2 * b * b * d  # Gram zn zn^T: forward and both operand grads
        flops += 2 * b * b * (cfg.target_proj_size if cfg.bio else k)  # target Gram
    if cfg.uses_pred:
        if len(shape) == 3:
            h, w, c = shape
            _, _, (oh, ow) = decoder_pool_geometry(c, h, w, cfg.dim_in_decoder)
            d = c * oh * ow
        else:
            d = shape[0]
        out = cfg.target_proj_size if cfg.bio else k
        flops += 3 * 2 * b * d * out
    return flops


def _walk(model, image_shape: tuple[int, ...]):
    """Yields `(block, in_shape, out_shape, is_first_block)` per block of a `LocalNetwork`,
    and finally `(None, shape, None, ...)` for the output layer's input; shapes without
    the batch axis. Plain layers (pooling, reshapes) are traced with `jax.eval_shape`."""
    shape = tuple(image_shape)
    first = True
    for name, layer in model.named_layers():
        if name is None:
            spec = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
            shape = tuple(jax.eval_shape(layer, spec).shape[1:])
            continue
        if isinstance(layer, LocalConv):
            k, s, p = layer.geometry(shape[0])
            h, w = ((n + 2 * p - k) // s + 1 for n in shape[:2])
            out = (h, w, layer.features)
        elif isinstance(layer, LocalDense):
            out = (layer.features,)
        else:
            raise TypeError(
                f"FLOPs are counted for LocalDense and LocalConv blocks; {name!r} is a "
                f"{type(layer).__name__} (use XLA's cost analysis, `xla_flops_per_step`)."
            )
        yield layer, shape, out, first
        shape, first = out, False
    yield None, shape, None, first


def model_flops(model, batch: int, image_shape: tuple[int, int, int]) -> float:
    """Matmul and convolution FLOPs of one training step, counted from the architecture.

    Each layer's forward pass costs 2·MACs; its backward pass costs the same again for
    the weight gradient and once more for the input gradient, which is only needed when
    a gradient flows into the layer's input (never into the network input, nor across a
    `cut` in local learning). Heads: the sim projection (dense D×D or conv 3×3 C→C),
    the B×B Gram matrices, the pred decoder after its average pool (METHOD.md, Local
    losses). Elementwise work (BatchNorm, nonlinearity, pooling, the optimizer) is not counted.

    Args:
      model: a `LocalNetwork` of `LocalDense` / `LocalConv` blocks (`mlp`, the VGGs).
      batch: B.
      image_shape: `(H, W, C)` of the input.

    Returns:
      FLOPs per step, a Python float.

    Raises:
      TypeError: a block that is neither `LocalDense` nor `LocalConv`.
      AttributeError: `model` is not a `LocalNetwork`.

    Counts the layers of METHOD.md, Network and Local losses, for the benchmark's achieved
    FLOP/s (docs/performance.md).
    """
    cut = model.detach
    flops = 0.0
    for block, in_shape, out_shape, first in _walk(model, image_shape):
        if block is None:  # the output layer
            fwd = 2 * batch * math.prod(in_shape) * model.output.num_classes
            flops += fwd * (2 if cut else 3)
            break
        if isinstance(block, LocalConv):
            k, _, _ = block.geometry(in_shape[0])
            h, w, out_c = out_shape
            fwd = 2 * batch * h * w * k * k * in_shape[-1] * out_c
        else:
            fwd = 2 * batch * math.prod(in_shape) * block.features
        flops += fwd * (2 if first or cut else 3)
        flops += _head_flops(batch, out_shape, block.head)
    return float(flops)


# A[m, k] @ B[k, n] as stored: "nn" plain; "tn" contracts A's leading axis (Aᵀ·B, a weight
# gradient xᵀ·dy); "nt" contracts B's trailing axis (A·Bᵀ, an input gradient dy·Wᵀ, a Gram)
MATMUL_LAYOUTS = ("nn", "tn", "nt")


def dense_matmuls(
    model, batch: int, image_shape: tuple[int, int, int]
) -> list[tuple[str, int, int, int, str]]:
    """Every matmul of one training step of a dense network, with its shape and layout.

    The same products `model_flops` counts, listed one by one so that a benchmark can
    time each shape alone and learn what the matmul kernels reach on exactly the step's
    shapes (M = batch for forward and input gradients, K = batch for weight gradients).

    Args:
      model: a `LocalNetwork` of `LocalDense` blocks (`mlp`; local or backprop).
      batch: B.
      image_shape: `(H, W, C)` of the input (flattened into the first block).

    Returns:
      A list of `(role, m, k, n, layout)`: one `m×k @ k×n` product each (2·m·k·n FLOPs),
      `layout` in `MATMUL_LAYOUTS`. Σ 2·m·k·n equals `model_flops(model, batch,
      image_shape)`.

    Raises:
      TypeError: a block that is not `LocalDense` (convolutions are not matmuls here).
      AttributeError: `model` is not a `LocalNetwork`.

    Lists the layers of METHOD.md, Network and Local losses (docs/performance.md).
    """
    cut = model.detach
    b = batch
    ops: list[tuple[str, int, int, int, str]] = []

    def layer(role: str, k: int, n: int, input_grad: bool) -> None:
        ops.append((f"{role} forward", b, k, n, "nn"))
        ops.append((f"{role} weight grad", k, b, n, "tn"))
        if input_grad:
            ops.append((f"{role} input grad", b, n, k, "nt"))

    i = 0
    for block, in_shape, _, first in _walk(model, image_shape):
        d_in = math.prod(in_shape)
        if block is None:
            layer("output", d_in, model.output.num_classes, input_grad=not cut)
            break
        if not isinstance(block, LocalDense):
            raise TypeError(
                f"dense_matmuls lists the matmuls of dense blocks (an mlp); this network "
                f"has a {type(block).__name__} block, as a VGG does (use model_flops for "
                "its convolution FLOPs)."
            )
        d, cfg = block.features, block.head
        layer(f"block {i} dense", d_in, d, input_grad=not (first or cut))
        if cfg is not None:
            if cfg.uses_sim:
                if not cfg.bio:
                    layer(f"block {i} sim projection", d, d, input_grad=True)
                ops.append((f"block {i} Gram", b, d, b, "nt"))
                ops.append((f"block {i} Gram grad (left)", b, b, d, "nn"))
                ops.append((f"block {i} Gram grad (right)", b, b, d, "tn"))
                target = cfg.target_proj_size if cfg.bio else cfg.num_classes
                ops.append((f"block {i} target Gram", b, target, b, "nt"))
            if cfg.uses_pred:
                out = cfg.target_proj_size if cfg.bio else cfg.num_classes
                layer(f"block {i} decoder", d, out, input_grad=True)
        i += 1
    return ops
