"""FLOPs of one training step, counted from the architecture (for benchmarks).

Usage::

    flops = model_flops(build_model("mlp", 10, "predsim"), batch=128, image_shape=(28, 28, 1))
"""

from __future__ import annotations

from localjax.layers import decoder_pool_geometry
from localjax.models import VGG_CONFIGS

__all__ = ["model_flops"]


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
