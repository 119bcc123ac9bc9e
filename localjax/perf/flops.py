"""FLOPs of one training step, counted from the architecture (for benchmarks).

Usage::

    flops = model_flops(build_model("mlp", 10, "predsim"), batch=128, image_shape=(28, 28, 1))
    flops = model_flops(build_model("resnet18", 10), 128, (32, 32, 3))      # residual blocks
    fwd = model_flops(net, 8, (32, 32, 3), forward_only=True, count_padding=False)  # ~ XLA
    ops = dense_matmuls(build_model("mlp", 10, "predsim"), batch=128, image_shape=(28, 28, 1))
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from localjax.blocks import LocalConv, LocalDense, LocalResConv
from localjax.heads import decoder_pool_geometry

__all__ = ["model_flops", "dense_matmuls", "MATMUL_LAYOUTS"]


def _valid_taps(n: int, out: int, k: int, s: int, p: int) -> int:
    """Σ over the `out` output positions of one axis of the kernel taps that fall inside
    the input `[0, n)` (the rest read the zero padding)."""
    return sum(sum(1 for j in range(k) if 0 <= i * s - p + j < n) for i in range(out))


def _conv_flops(
    b: int,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    geometry: tuple[int, int, int],
    count_padding: bool,
) -> int:
    """Forward FLOPs (2·MACs) of a conv from `in_shape` (H, W, C_in) to `out_shape`
    (H', W', C_out) with `(kernel, stride, padding)`; with `count_padding=False` only the
    taps inside the input count, as XLA's cost analysis counts."""
    k, s, p = geometry
    (h, w, c_in), (oh, ow, c_out) = in_shape, out_shape
    if count_padding:
        taps = oh * ow * k * k
    else:
        taps = _valid_taps(h, oh, k, s, p) * _valid_taps(w, ow, k, s, p)
    return 2 * b * taps * c_in * c_out


def _head_flops(
    b: int, shape: tuple[int, ...], cfg, passes: int = 3, count_padding: bool = True
) -> float:
    """FLOPs of one block's local heads: training (`passes=3`: forward, weight and input
    gradients) or forward only (`passes=1`).

    `shape` is the block output without batch: `(D,)` or `(H, W, C)`.
    """
    if cfg is None:
        return 0.0
    flops = 0.0
    k = cfg.num_classes
    if cfg.uses_sim:
        if len(shape) == 3:
            h, w, c = shape
            if not cfg.bio:  # 3x3 conv C->C projection (stride 1, padding 1)
                flops += passes * _conv_flops(b, shape, shape, (3, 1, 1), count_padding)
            d = c  # the similarity of a map uses per-channel std: [B, C]
        else:
            d = shape[0]
            if not cfg.bio:  # D x D projection
                flops += passes * 2 * b * d * d
        flops += passes * 2 * b * b * d  # Gram zn zn^T: forward and both operand grads
        flops += 2 * b * b * (cfg.target_proj_size if cfg.bio else k)  # target Gram
    if cfg.uses_pred:
        if len(shape) == 3:
            h, w, c = shape
            _, _, (oh, ow) = decoder_pool_geometry(c, h, w, cfg.dim_in_decoder)
            d = c * oh * ow
        else:
            d = shape[0]
        out = cfg.target_proj_size if cfg.bio else k
        flops += passes * 2 * b * d * out
    return flops


def _conv_out(shape: tuple[int, ...], geometry: tuple[int, int, int], features: int):
    k, s, p = geometry
    h, w = ((n + 2 * p - k) // s + 1 for n in shape[:2])
    return (h, w, features)


def _res_geometry(block: LocalResConv) -> tuple[int, int, int]:
    return block.kernel_size, block.stride, block.padding


def _walk(model, image_shape: tuple[int, ...]):
    """Yields `(block, in_shape, out_shape, is_first_block, unit_shape)` per block of a
    `LocalNetwork`, and finally `(None, shape, None, ..., None)` for the output layer's
    input; shapes without the batch axis. `unit_shape` is the shape of a residual unit's
    input that a `LocalResConv` adds through its shortcut (the second element of a pair
    activation, else its own input), None for other blocks. Plain layers (pooling,
    reshapes) are traced with `jax.eval_shape`."""
    shape = tuple(image_shape)
    unit = None  # the unit input carried beside the activation (`keep_input`)
    first = True
    for name, layer in model.named_layers():
        if name is None:
            if unit is not None:
                raise TypeError(
                    "FLOPs are counted for plain layers between residual units, not inside "
                    "one (after a block with keep_input)."
                )
            spec = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
            shape = tuple(jax.eval_shape(layer, spec).shape[1:])
            continue
        unit_shape = None
        if isinstance(layer, LocalConv):
            out = _conv_out(shape, layer.geometry(shape[0]), layer.features)
        elif isinstance(layer, LocalDense):
            out = (layer.features,)
        elif isinstance(layer, LocalResConv):
            unit_shape = shape if unit is None else unit
            out = _conv_out(shape, _res_geometry(layer), layer.features)
        else:
            raise TypeError(
                f"FLOPs are counted for LocalDense, LocalConv and LocalResConv blocks; "
                f"{name!r} is a {type(layer).__name__} (use XLA's cost analysis, "
                "`xla_flops_per_step`)."
            )
        yield layer, shape, out, first, unit_shape
        unit = unit_shape if getattr(layer, "keep_input", False) else None
        shape, first = out, False
    yield None, shape, None, first, None


def model_flops(
    model,
    batch: int,
    image_shape: tuple[int, int, int],
    *,
    forward_only: bool = False,
    count_padding: bool = True,
) -> float:
    """Matmul and convolution FLOPs of one training step, counted from the architecture.

    Each layer's forward pass costs 2·MACs; its backward pass costs the same again for
    the weight gradient and once more for the input gradient, which is only needed when
    a gradient flows into the layer's input: never into the network input, nor across a
    `cut` in local learning, except into a pre-activation block's own BatchNorm
    (`bn_pre`, before its conv). Heads: the sim projection (dense D×D or conv 3×3 C→C),
    the B×B Gram matrices, the pred decoder after its average pool (METHOD.md, Local
    losses). Residual blocks (`LocalResConv`: the ResNets' BasicBlock and Bottleneck
    convolutions, Wide ResNets' wide_basic ones): their conv, their heads and a
    projection shortcut (1×1 conv, stride of the unit), whose input gradient flows only
    without cuts (backprop, deep supervision). Elementwise work (BatchNorm,
    nonlinearity, pooling, residual adds, the optimizer) is not counted.

    Args:
      model: a `LocalNetwork` of `LocalDense` / `LocalConv` / `LocalResConv` blocks
        (`mlp`, the VGGs, the ResNets and Wide ResNets).
      batch: B.
      image_shape: `(H, W, C)` of the input.
      forward_only: count the training forward pass alone (blocks, heads, output
        layer: what `model.apply(..., labels, train=True)` computes), no gradients.
      count_padding: a conv costs k·k taps at every output position (the usual count);
        False counts only the taps that fall inside the input, as XLA's cost analysis
        (`compiled.cost_analysis()`) does, so that the two can be compared.

    Returns:
      FLOPs per step (or per forward pass), a Python float.

    Raises:
      TypeError: a block of another kind (e.g. `LocalBlock`), or a plain layer inside a
        residual unit.
      AttributeError: `model` is not a `LocalNetwork`.

    Counts the layers of METHOD.md, Network and Local losses, for the benchmark's achieved
    FLOP/s (docs/performance.md).
    """
    cut = model.detach
    passes = 1 if forward_only else 3

    def train(fwd: float, input_grad: bool) -> float:
        if forward_only:
            return fwd
        return fwd * (3 if input_grad else 2)

    flops = 0.0
    for block, in_shape, out_shape, first, unit_shape in _walk(model, image_shape):
        if block is None:  # the output layer
            fwd = 2 * batch * math.prod(in_shape) * model.output.num_classes
            flops += train(fwd, not cut)
            break
        if isinstance(block, LocalConv):
            geometry = block.geometry(in_shape[0])
            fwd = _conv_flops(batch, in_shape, out_shape, geometry, count_padding)
            flops += train(fwd, not (first or cut))
        elif isinstance(block, LocalResConv):
            fwd = _conv_flops(batch, in_shape, out_shape, _res_geometry(block), count_padding)
            bn_pre = block.pre_act and block.batch_norm  # trained through the conv
            flops += train(fwd, bn_pre or not (first or cut))
            if block.shortcut not in (None, "identity"):  # 1x1 projection, no padding
                s = block.shortcut_stride
                geometry = (1, s, 0)
                proj_out = _conv_out(unit_shape, geometry, block.features)
                fwd = _conv_flops(batch, unit_shape, proj_out, geometry, count_padding)
                flops += train(fwd, not cut)
        else:
            fwd = 2 * batch * math.prod(in_shape) * block.features
            flops += train(fwd, not (first or cut))
        flops += _head_flops(batch, out_shape, block.head, passes, count_padding)
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
    for block, in_shape, _, first, _ in _walk(model, image_shape):
        d_in = math.prod(in_shape)
        if block is None:
            layer("output", d_in, model.output.num_classes, input_grad=not cut)
            break
        if not isinstance(block, LocalDense):
            raise TypeError(
                f"dense_matmuls lists the matmuls of dense blocks (an mlp); this network "
                f"has a {type(block).__name__} block, as a VGG or a ResNet does (use "
                "model_flops for its convolution FLOPs)."
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
