"""The fused local-learning step: every block's update in one jitted XLA program.

Usage::

    state = create_train_state(model, tx, jax.random.key(0), images[:2], labels[:2])
    step = jax.jit(make_train_step(model, tx, preprocess=..., seed=0), donate_argnums=0)
    state, metrics = step(state, images_u8, labels)   # metrics: sums over the batch

The loss differentiated is Σ_blocks local loss + w·CE(output), w = 1 − β for predsim,
else 1 (Sec. 2). Because `models.cut` stops gradients between blocks, one
`jax.value_and_grad` of this sum gives each block exactly its own local gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from localjax import losses
from localjax.models import output_loss_weight

__all__ = [
    "TrainState",
    "create_train_state",
    "milestone_schedule",
    "epoch_learning_rate",
    "make_optimizer",
    "make_train_step",
    "make_eval_step",
]


class TrainState(struct.PyTreeNode):
    """Everything a step reads and writes.

    Attributes:
      step: int32 scalar, number of updates done.
      params: the `params` collection (blocks, heads, output layer).
      batch_stats: BatchNorm running averages.
      constants: fixed random matrices (`bio` variant); never updated.
      opt_state: the optax optimizer state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    constants: Any
    opt_state: Any

    def variables(self) -> dict[str, Any]:
        """The Linen variables dict for `model.apply`."""
        out = {"params": self.params, "batch_stats": self.batch_stats}
        if self.constants:
            out["constants"] = self.constants
        return out


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
) -> TrainState:
    """Initialises parameters (heads included) and the optimizer state.

    Args:
      model: a network returning `(logits, local)` (see `models`).
      tx: any optax gradient transformation.
      key: PRNG key for initialisation.
      images: `[b, H, W, C]` float sample batch (values are not used, only shapes).
      labels: `[b]` int sample labels (so the local heads are created).

    Returns:
      A `TrainState` at step 0.
    """
    variables = jax.jit(lambda k, x, y: model.init({"params": k}, x, y))(key, images, labels)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        constants=variables.get("constants", {}),
        opt_state=tx.init(params),
    )


def milestone_schedule(
    lr: float, milestones: tuple[int, ...], steps_per_epoch: int, decay: float = 0.25
) -> optax.Schedule:
    """Per-step learning rate of the paper: lr·decay^k, k = milestones passed (Sec. 3).

    Epochs count from 1; epoch e uses k = #{m ≤ e − 1}, so with milestone 100 epoch 101
    is the first at the lower rate. Update number `count` (0-based) lies in epoch
    count // steps_per_epoch + 1.

    Args:
      lr: initial learning rate.
      milestones: epochs after which the rate is multiplied by `decay`.
      steps_per_epoch: updates per epoch (> 0).
      decay: factor per milestone (paper 0.25).

    Returns:
      An optax schedule `count -> lr`.
    """
    bounds = jnp.asarray([m * steps_per_epoch for m in milestones] or [2**31 - 1], jnp.int32)
    active = jnp.asarray([1.0] * len(milestones) or [0.0], jnp.float32)

    def schedule(count):
        passed = jnp.sum(active * (count >= bounds))
        return lr * decay**passed

    return schedule


def epoch_learning_rate(
    lr: float, milestones: tuple[int, ...], epoch: int, decay: float = 0.25
) -> float:
    """The learning rate epoch `epoch` (1-based) trains at; see `milestone_schedule`."""
    return lr * decay ** sum(m <= epoch - 1 for m in milestones)


def make_optimizer(
    lr: float, milestones: tuple[int, ...], steps_per_epoch: int, decay: float = 0.25
) -> optax.GradientTransformation:
    """Adam (β1 0.9, β2 0.999, eps 1e-8, no weight decay) with the milestone schedule.

    One Adam over all parameters equals the reference's one Adam per layer, since
    Adam is element-wise.
    """
    return optax.adam(
        milestone_schedule(lr, milestones, steps_per_epoch, decay), b1=0.9, b2=0.999, eps=1e-8
    )


def _local_metrics(local: list[dict | None], labels: jax.Array) -> dict[str, jax.Array]:
    n = labels.shape[0]
    out = {}
    for i, terms in enumerate(local):
        if terms is None:
            continue
        out[f"local_loss/block_{i}"] = terms["loss"] * n
        if terms.get("logits") is not None:
            correct = jnp.sum(jnp.argmax(terms["logits"], -1) == labels)
            out[f"local_correct/block_{i}"] = correct.astype(jnp.float32)
    return out


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    output_weight: float | None = None,
    seed: int = 0,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """Builds the fused train step (jit it; donate the state).

    Args:
      model: a network returning `(logits, local)`, where `local` lists each block's
        `LocalHead` dict (or None).
      tx: optax transformation; its schedule sees the update count.
      preprocess: `(images, key) -> float images`, run inside the step (augmentation and
        normalisation); None passes images through.
      output_weight: weight of the output cross-entropy; default `output_loss_weight`.
      seed: base seed; each step folds in its step number for dropout and augmentation.

    Returns:
      `train_step(state, images [B, H, W, C], labels [B] int) -> (state, metrics)`.
      `metrics` holds float32 sums over the batch: `count`, `loss` (output
      cross-entropy, unweighted), `correct`, `objective` (the differentiated total),
      and per block `local_loss/block_<i>` and `local_correct/block_<i>`.
    """
    weight = output_loss_weight(model) if output_weight is None else output_weight
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        key = jax.random.fold_in(base_key, state.step)
        aug_key, dropout_key = jax.random.split(key)
        x = preprocess(images, aug_key) if preprocess is not None else images

        def objective(params):
            variables = {**state.variables(), "params": params}
            (logits, local), updates = model.apply(
                variables,
                x,
                labels,
                train=True,
                rngs={"dropout": dropout_key},
                mutable=["batch_stats"],
            )
            out_loss = losses.pred_loss(logits, labels)
            total = weight * out_loss
            for terms in local:
                if terms is not None:
                    total = total + terms["loss"]
            return total, (logits, local, out_loss, updates)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (total, (logits, local, out_loss, updates)), grads = grad_fn(state.params)
        param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, param_updates),
            batch_stats=updates.get("batch_stats", state.batch_stats),
            opt_state=opt_state,
        )
        n = labels.shape[0]
        metrics = {
            "count": jnp.float32(n),
            "loss": out_loss * n,
            "objective": total * n,
            "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
            **_local_metrics(local, labels),
        }
        return new_state, metrics

    return train_step


def make_eval_step(
    model: nn.Module,
    *,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
    with_local: bool = False,
) -> Callable[[TrainState, jax.Array, jax.Array], dict]:
    """Builds the evaluation step: running BatchNorm averages, no dropout.

    Args:
      model: as in `make_train_step`.
      preprocess: `images -> float images` (normalisation only).
      with_local: also evaluate the local heads (per-block loss and error); off by
        default, since the prediction is the output layer's alone.

    Returns:
      `eval_step(state, images, labels) -> metrics` with float32 sums `count`, `loss`,
      `correct` (and the per-block sums with `with_local`).
    """

    def eval_step(state: TrainState, images: jax.Array, labels: jax.Array):
        x = preprocess(images) if preprocess is not None else images
        logits, local = model.apply(
            state.variables(), x, labels if with_local else None, train=False
        )
        n = labels.shape[0]
        return {
            "count": jnp.float32(n),
            "loss": losses.pred_loss(logits, labels) * n,
            "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
            **(_local_metrics(local, labels) if with_local else {}),
        }

    return eval_step
