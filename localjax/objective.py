"""The objective the fused step differentiates, and its metrics (METHOD.md, Training: one
fused step; Local losses: output layer).

Usage::

    total = local_objective(logits, local, labels, output_weight=0.01)
    sums = step_metrics(logits, local, labels, out_loss, total)    # inside the step
    summarize_metrics(sums)            # {"loss": .., "error": .., "local_error/block_0": ..}
    summarize_metrics(sums, prefix="train_", percent=True)   # metrics.jsonl's fields

Letters: B batch, K classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from localjax import losses

__all__ = ["local_objective", "total_loss", "step_metrics", "summarize_metrics"]


def local_objective(
    logits: jax.Array,
    local: list[Mapping[str, Any] | None],
    labels: jax.Array,
    output_weight: float = 1.0,
) -> jax.Array:
    """The loss the fused step differentiates: Σ_blocks local loss + w·CE(output).

    Because every block's input is cut, one gradient of this sum gives each block its
    own local gradient. Use it to train models outside `make_train_step` (e.g. an NNX
    model with bridged blocks); `make_train_step` computes the same sum.

    Args:
      logits: `[B, K]` float output-layer logits.
      local: one entry per block: a dict with a float32 scalar `loss`, or None.
      labels: `[B]` int class indices in [0, K).
      output_weight: w; the paper uses 1 − β for predsim, else 1
        (`models.output_loss_weight`).

    Returns:
      float32 scalar.

    Raises:
      ValueError: on mismatched logits/labels shapes (`pred_loss`).
      KeyError: if a non-None `local` entry has no `loss`.

    Implements the fused objective (METHOD.md, Training: one fused step;
    Local losses: output layer).
    """
    return total_loss(losses.pred_loss(logits, labels), local, output_weight)


def total_loss(
    out_loss: jax.Array, local: list[Mapping[str, Any] | None], output_weight: float = 1.0
) -> jax.Array:
    """w·out_loss + Σ_blocks local loss: the one place the objective is summed.

    Args:
      out_loss: float32 scalar, the output layer's cross-entropy.
      local: one entry per block: a dict with a float32 scalar `loss`, or None.
      output_weight: w.

    Returns:
      float32 scalar.

    Raises:
      KeyError: a non-None `local` entry without `loss`.
    """
    total = output_weight * out_loss
    for terms in local:
        if terms is not None:
            total = total + terms["loss"]
    return total


def step_metrics(
    logits: jax.Array,
    local: list[Mapping[str, Any] | None],
    labels: jax.Array,
    out_loss: jax.Array | None = None,
    total: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """A batch's metrics as float32 sums (so that batches and devices add up).

    Args:
      logits: `[B, K]` output-layer logits.
      local: one entry per block (`LocalHead` dict or None); `[]` when not evaluated.
      labels: `[B]` int class indices.
      out_loss: the output cross-entropy (mean); computed from `logits` when None.
      total: the differentiated objective (mean), or None when there is none (eval).

    Returns:
      float32 scalars: `count` (B), `loss`, `correct`, `objective` (with `total`), and
      per block `local_loss/block_<i>` and `local_correct/block_<i>` (blocks with a pred
      decoder).

    Raises:
      ValueError: mismatched shapes (from `pred_loss`).
    """
    n = labels.shape[0]
    if out_loss is None:
        out_loss = losses.pred_loss(logits, labels)
    out = {
        "count": jnp.float32(n),
        "loss": out_loss * n,
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
    }
    if total is not None:
        out["objective"] = total * n
    for i, terms in enumerate(local):
        if terms is None:
            continue
        out[f"local_loss/block_{i}"] = terms["loss"] * n
        if terms.get("logits") is not None:
            correct = jnp.sum(jnp.argmax(terms["logits"], -1) == labels)
            out[f"local_correct/block_{i}"] = correct.astype(jnp.float32)
    return out


def summarize_metrics(
    metrics: Mapping[str, Any], *, prefix: str = "", percent: bool = False
) -> dict[str, float]:
    """Per-example means and errors from the sums of `step_metrics` (the train and eval
    steps' metrics, added up over any number of batches).

    Args:
      metrics: dict of float32 sums: `count`, `loss`, `correct`, optionally `objective`,
        `local_loss/block_<i>`, `local_correct/block_<i>`.
      prefix: put before `loss`, `error` and `objective` (e.g. `train_`); per-block keys
        keep their names.
      percent: errors in percent (metrics.jsonl) instead of fractions.

    Returns:
      dict of Python floats: `<prefix>loss`, `<prefix>error` (1 − correct/count),
      `<prefix>objective`, and per block `local_loss/block_<i>` (mean local loss) and
      `local_error/block_<i>` (error of the block's pred decoder, the paper's per-layer
      errors).

    Raises:
      KeyError: if `count` is missing.
      ZeroDivisionError: if `count` is 0.

    Reports the test error and per-block local errors (METHOD.md, Data:
    error on the test set; DESIGN.md, What flows where: per-block local loss/error).
    """
    host = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    n = host["count"]
    scale = 100.0 if percent else 1.0
    out: dict[str, float] = {}
    for name, value in host.items():
        if name == "count":
            continue
        if name == "correct":
            out[prefix + "error"] = scale * (1.0 - value / n)
        elif name.startswith("local_correct/"):
            out["local_error/" + name.split("/", 1)[1]] = scale * (1.0 - value / n)
        elif name.startswith("local_loss/"):
            out[name] = value / n
        else:
            out[prefix + name] = value / n
    return out
