"""FLOPs of one training step, counted from the architecture (for benchmarks).

Usage::

    flops = model_flops(build_model("mlp", 10, "predsim"), batch=128, image_shape=(28, 28, 1))
    ops = dense_matmuls(build_model("mlp", 10, "predsim"), batch=128, image_shape=(28, 28, 1))
"""

from __future__ import annotations

from localjax.layers import decoder_pool_geometry
from localjax.models import VGG_CONFIGS

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


def model_flops(model, batch: int, image_shape: tuple[int, int, int]) -> float:
    """Matmul and convolution FLOPs of one training step, counted from the architecture.

    Each layer's forward pass costs 2·MACs; its backward pass costs the same again for
    the weight gradient and once more for the input gradient, which is only needed when
    a gradient flows into the layer's input (never into the network input, nor across a
    `cut` in local learning). Heads: the sim projection (dense D×D or conv 3×3 C→C),
    the B×B Gram matrices, the pred decoder after its average pool (METHOD.md, Local
    losses). Elementwise work (BatchNorm, nonlinearity, pooling, the optimizer) is not counted.

    Args:
      model: a network from `build_model` (`mlp` or a VGG).
      batch: B.
      image_shape: `(H, W, C)` of the input.

    Returns:
      FLOPs per step, a Python float.

    Raises:
      AttributeError: `model` is not a `build_model` network (no `head`, `detach`,
        `num_layers`, ...).
      KeyError: a VGG `config` that is not in `VGG_CONFIGS`.
      ValueError: `image_shape` is not a 3-tuple.

    Counts the layers of METHOD.md, Network and Local losses, for the benchmark's achieved
    FLOP/s (DESIGN.md, modules: `experiments/benchmark.py`).
    """
    cfg = model.head
    local = cfg is not None
    cut = local and model.detach
    h, w, c = image_shape
    flops = 0.0
    first = True
    if hasattr(model, "config"):
        for item in VGG_CONFIGS[model.config]:
            if item == "M":
                h, w = h // 2, w // 2
                continue
            out_c = int(item * model.feat_mult)
            k, s, p = (7, 2, 3) if first and h > 64 else (3, 1, 1)
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            fwd = 2 * batch * h * w * k * k * c * out_c
            flops += fwd * (2 if first or cut else 3)
            flops += _head_flops(batch, (h, w, out_c), cfg) if local else 0.0
            c, first = out_c, False
    d_in = h * w * c
    for i in range(model.num_layers):
        fwd = 2 * batch * d_in * model.num_hidden
        no_input_grad = (i == 0 and first) or cut
        flops += fwd * (2 if no_input_grad else 3)
        flops += _head_flops(batch, (model.num_hidden,), cfg) if local else 0.0
        d_in, first = model.num_hidden, False
    fwd = 2 * batch * d_in * model.num_classes
    flops += fwd * (2 if cut else 3)
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
      model: an `mlp` network from `build_model` (local or backprop, any head).
      batch: B.
      image_shape: `(H, W, C)` of the input (flattened into the first block).

    Returns:
      A list of `(role, m, k, n, layout)`: one `m×k @ k×n` product each (2·m·k·n FLOPs),
      `layout` in `MATMUL_LAYOUTS`. Σ 2·m·k·n equals `model_flops(model, batch,
      image_shape)`.

    Raises:
      TypeError: `model` is a VGG (convolutions are not matmuls here).
      AttributeError: `model` is not a `build_model` network.

    Lists the layers of METHOD.md, Network and Local losses (DESIGN.md, modules:
    `experiments/benchmark.py`).
    """
    if hasattr(model, "config"):
        raise TypeError(
            f"dense_matmuls lists the matmuls of an mlp; {model.config!r} is a VGG "
            "(use model_flops for its convolution FLOPs)."
        )
    cfg = model.head
    cut = cfg is not None and model.detach
    b = batch
    d_in = image_shape[0] * image_shape[1] * image_shape[2]
    ops: list[tuple[str, int, int, int, str]] = []

    def layer(role: str, k: int, n: int, input_grad: bool) -> None:
        ops.append((f"{role} forward", b, k, n, "nn"))
        ops.append((f"{role} weight grad", k, b, n, "tn"))
        if input_grad:
            ops.append((f"{role} input grad", b, n, k, "nt"))

    for i in range(model.num_layers):
        d = model.num_hidden
        layer(f"block {i} dense", d_in, d, input_grad=not (i == 0 or cut))
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
        d_in = d
    layer("output", d_in, model.num_classes, input_grad=not cut)
    return ops
