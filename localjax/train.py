"""The whole training run: data, fused steps, evaluation, metrics files.

Usage::

    summary = train_and_evaluate(config, workdir)   # config as in experiments/configs/

The per-step math lives in `localjax.step`; this module owns the loop around it.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from localjax import augment as augment_lib
from localjax import data as data_lib
from localjax import sampling
from localjax.metric_writer import MetricWriter
from localjax.models import build_model, count_params
from localjax.step import (
    TrainState,
    create_train_state,
    epoch_learning_rate,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

__all__ = ["TrainingError", "train_and_evaluate", "TrainState"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and why."""


# ---------------------------------------------------------------- the whole run
def _model_from_config(config, num_classes: int) -> nn.Module:
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.get("dtype", "float32")]
    return build_model(
        config.model,
        num_classes,
        config.loss,
        num_layers=config.num_layers,
        num_hidden=config.num_hidden,
        feat_mult=config.feat_mult,
        nonlin=config.nonlin,
        dropout=config.dropout,
        beta=config.beta,
        dim_in_decoder=config.dim_in_decoder,
        bio=config.bio,
        target_proj_size=config.get("target_proj_size", 128),
        unsup=config.get("unsup", "none"),
        alpha=config.get("alpha", 0.0),
        detach=config.get("detach", True),
        dtype=dtype,
    )


def _summarize(sums: dict[str, float], prefix: str) -> dict[str, float]:
    """Batch sums -> means: loss, error in percent, per-block local loss/error."""
    n = sums["count"]
    out = {
        f"{prefix}_loss": sums["loss"] / n,
        f"{prefix}_error": 100.0 * (1.0 - sums["correct"] / n),
    }
    for key, value in sums.items():
        if key.startswith("local_loss/"):
            out[key] = value / n
        elif key.startswith("local_correct/"):
            out["local_error/" + key.split("/", 1)[1]] = 100.0 * (1.0 - value / n)
    return out


def _accumulate(total: dict | None, metrics: dict) -> dict:
    if total is None:
        return metrics
    return jax.tree_util.tree_map(jnp.add, total, metrics)


def _check_finite(metrics: dict[str, float], step: int) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        blocks = [k.split("/", 1)[1] for k in bad if k.startswith("local_loss/")]
        where = f" in {', '.join(blocks)}" if blocks else " in the output layer"
        raise TrainingError(
            f"non-finite loss by step {step}{where} ({', '.join(bad)}). Lower the "
            "learning rate or check the input data; checkpoints already written are kept."
        )


def _evaluate(eval_fn, state, images, labels, batch_size: int) -> dict[str, float]:
    total = None
    for start in range(0, len(labels), batch_size):
        sl = slice(start, start + batch_size)
        total = _accumulate(total, eval_fn(state, images[sl], labels[sl]))
    return {k: float(v) for k, v in jax.device_get(total).items()}


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains and evaluates one configuration, writing metrics to `workdir`.

    Args:
      config: an `ml_collections.ConfigDict` as in `experiments/configs/` (dataset,
        data_dir, model, loss, recipe fields, epochs, batch_size, seed, train_limit, ...).
      workdir: output directory; created if needed. Writes `metrics.jsonl` (one JSON
        object per epoch) and `summary.json`.

    Returns:
      The summary dict (config, parameter counts, final test error in percent, ...).

    Raises:
      ValueError: unknown dataset, model or loss.
      data.DatasetError: missing or corrupt data files.
      TrainingError: a non-finite loss.
    """
    from tqdm import tqdm  # only the full run draws a progress bar

    os.makedirs(workdir, exist_ok=True)
    spec = data_lib.get_spec(config.dataset)
    train = data_lib.load(config.dataset, "train", config.data_dir or None)
    test = data_lib.load(config.dataset, "test", config.data_dir or None)
    if config.train_limit:
        train = data_lib.Dataset(
            train.images[: config.train_limit], train.labels[: config.train_limit]
        )

    model = _model_from_config(config, spec.num_classes)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    milestones = tuple(config.milestones)
    tx = make_optimizer(config.lr, milestones, steps_per_epoch, config.lr_decay)
    sample = augment_lib.normalize(jnp.asarray(train.images[:2]), spec)
    state = create_train_state(
        model, tx, jax.random.key(config.seed), sample, jnp.asarray(train.labels[:2])
    )
    params_inference, params_total = count_params(state.params)

    train_images, train_labels = jax.device_put((train.images, train.labels))
    test_images, test_labels = jax.device_put((test.images, test.labels))

    step_fn = make_train_step(
        model,
        tx,
        preprocess=lambda im, k: augment_lib.augment(
            im, k, spec, cutout_length=config.get("cutout_length", 0)
        ),
        seed=config.seed,
    )

    gather_and_step = jax.jit(
        lambda state, images, labels, idx: step_fn(state, images[idx], labels[idx]),
        donate_argnums=0,
    )
    eval_fn = jax.jit(make_eval_step(model, preprocess=lambda im: augment_lib.normalize(im, spec)))

    print(
        f"{config.model} {config.loss} on {config.dataset}: {len(train)} train / "
        f"{len(test)} test examples, {params_inference:,} inference parameters "
        f"({params_total:,} with local heads), {steps_per_epoch} steps per epoch",
        flush=True,
    )
    history = []
    with MetricWriter(workdir) as writer:
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            total = None
            batches = sampling.epoch_order(
                train.labels,
                config.batch_size,
                config.seed,
                epoch,
                config.get("classes_per_batch", 0),
                config.get("classes_per_batch_until_epoch", 0),
            )
            for i, idx in enumerate(
                tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not config.progress_bar)
            ):
                state, metrics = gather_and_step(
                    state, train_images, train_labels, jnp.asarray(idx)
                )
                total = _accumulate(total, metrics)
                if i % config.sync_every == config.sync_every - 1:
                    jax.block_until_ready(total)  # bounded queue of dispatched steps
            train_sums = {k: float(v) for k, v in jax.device_get(total).items()}
            record = {
                "epoch": epoch,
                "lr": epoch_learning_rate(config.lr, milestones, epoch, config.lr_decay),
            }
            record.update(_summarize(train_sums, "train"))
            record["train_objective"] = train_sums["objective"] / train_sums["count"]
            _check_finite(record, int(state.step))
            record.update(
                _summarize(
                    _evaluate(eval_fn, state, test_images, test_labels, config.eval_batch_size),
                    "test",
                )
            )
            record["epoch_seconds"] = time.perf_counter() - start
            history.append(record)
            writer.write(record)
            local = " ".join(f"{record[k]:.2f}" for k in record if k.startswith("local_error/"))
            print(
                f"epoch {epoch:3d}  lr {record['lr']:.2e}  "
                f"train loss {record['train_loss']:.4f} error {record['train_error']:.2f}%  "
                f"test loss {record['test_loss']:.4f} error {record['test_error']:.2f}%  "
                f"local errors [{local}]  {record['epoch_seconds']:.1f}s",
                flush=True,
            )

    summary = {
        "config": config.to_dict(),
        "params_inference": params_inference,
        "params_total": params_total,
        "epochs": config.epochs,
        "final_test_error": history[-1]["test_error"] if history else None,
        "final_train_error": history[-1]["train_error"] if history else None,
        "published_error": config.get("published_error", None),
        "jax_backend": jax.default_backend(),
        "num_devices": jax.device_count(),
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
