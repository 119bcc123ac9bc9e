"""The fused local-learning step: every block's update in one jitted XLA program.

Usage::

    state = create_train_state(model, tx, jax.random.key(0), images[:2], labels[:2])
    step = jax.jit(make_train_step(model, tx, preprocess=..., seed=0), donate_argnums=0)
    state, metrics = step(state, images_u8, labels)   # metrics: sums over the batch

The loss differentiated is Σ_blocks local loss + w·CE(output), w = 1 − β for predsim,
else 1 (METHOD.md, Training: fused step; `objective.total_loss`). Because `network.cut`
stops gradients between blocks, one `jax.value_and_grad` of this sum gives each block
exactly its own local gradient (`make_reference_train_step`). `make_train_step` computes
the same gradients block by block inside the forward sweep (`LocalNetwork.sweep`), so
compiled memory stays flat in depth (DESIGN.md); `make_multi_step` runs several steps per
dispatch.

Raises (all builders): nothing at build time; shape errors surface when the step is traced
(e.g. `LocalHead`'s ValueError for labels that are not `[B]`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.core.scope import LazyRng

from localjax import losses
from localjax.network import LocalNetwork, output_loss_weight
from localjax.objective import step_metrics, total_loss
from localjax.training.state import TrainState

__all__ = [
    "block_value_and_grad",
    "make_train_step",
    "make_reference_train_step",
    "make_multi_step",
    "make_eval_step",
]


def _apply_update(tx, state: TrainState, grads, batch_stats) -> TrainState:
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, param_updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )


def _step_keys(base_key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    key = jax.random.fold_in(base_key, step)
    aug_key, dropout_key = jax.random.split(key)
    return aug_key, dropout_key


def block_value_and_grad(
    block, name: str, params, batch_stats, constants, h_in, labels, dropout_key
):
    """One block's forward pass and the gradient of its own local loss.

    Args:
      block: the block module (`LocalNetwork.named_layers()`).
      name: its name in the state's collections.
      params, batch_stats, constants: the state's collections keyed by block name (of a
        `TrainState`, or of a pipeline stage); batch_stats/constants may be empty.
      h_in: the block's (cut) input, [B, ...] float.
      labels: [B] int class indices.
      dropout_key: the step's dropout key; the block draws from
        `LazyRng.create(dropout_key, name)`, so its masks depend on step and block only.

    Returns:
      `(out, terms, grads, batch_stats)`: the block's output, its local-loss terms (None
      without a head), d(local loss)/d(params[name]), and its updated BatchNorm
      statistics (None when it has none).

    Implements the per-block gradient of the fused step (METHOD.md, Training).
    """

    def block_loss(p):
        variables = {"params": p}
        for col, tree in (("batch_stats", batch_stats), ("constants", constants)):
            if tree and name in tree:
                variables[col] = tree[name]
        (out, terms), updates = block.apply(
            variables,
            h_in,
            labels,
            train=True,
            rngs={"dropout": LazyRng.create(dropout_key, name)},
            mutable=["batch_stats"],
        )
        # a block without a head (or labels) has no local loss: no gradient
        loss = jnp.zeros((), jnp.float32) if terms is None else terms["loss"]
        return loss, (out, terms, updates)

    (_, (out, terms, updates)), g = jax.value_and_grad(block_loss, has_aux=True)(params[name])
    return out, terms, g, updates.get("batch_stats")


def make_reference_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    output_weight: float | None = None,
    seed: int = 0,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """The plain step: one `jax.value_and_grad` of the summed objective.

    Because `network.cut` stops gradients between blocks, the gradient of
    Σ_blocks local loss + w·CE(output) gives each block exactly its own local gradient.
    This is the definition `make_train_step` is tested against; it keeps every block's
    activations alive until the backward pass, so its memory grows with depth.
    Arguments, returns and metrics are those of `make_train_step`.

    Raises:
      Nothing of its own; errors surface when the step is traced (e.g. `LocalHead`'s
      ValueError/TypeError for labels that are not `[B]` integers in [0, K)).

    Implements the fused step (METHOD.md, Training: one fused step; DESIGN.md, Decisions:
    one cut, one gradient).
    """
    weight = output_loss_weight(model) if output_weight is None else output_weight
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        aug_key, dropout_key = _step_keys(base_key, state.step)
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
            return total_loss(out_loss, local, weight), (logits, local, out_loss, updates)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (total, (logits, local, out_loss, updates)), grads = grad_fn(state.params)
        new_state = _apply_update(tx, state, grads, updates.get("batch_stats", state.batch_stats))
        return new_state, step_metrics(logits, local, labels, out_loss, total)

    return train_step


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    output_weight: float | None = None,
    seed: int = 0,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """Builds the fused train step (jit it; donate the state).

    The math is that of `make_reference_train_step` (one gradient of
    Σ_blocks local loss + w·CE(output), w = 1 − β for predsim, else 1). In local
    learning (`detach=True`, the default) the step is restructured for memory: it runs
    the blocks one at a time (`LocalNetwork.sweep`) and takes each block's gradient
    right after its forward pass, so only about one block's activations are alive at
    any time and compiled memory stays flat in depth (DESIGN.md "Memory is part of the
    point"). Parameters, dropout masks (same Flax RNG streams), BatchNorm updates,
    gradients and metrics equal the reference's. Backprop and deep supervision
    (`detach=False`) use the reference step: there the whole graph is needed.

    Args:
      model: a network returning `(logits, local)`, where `local` lists each block's
        `LocalHead` dict (or None). Every `LocalNetwork` with `detach=True` (the paper's
        networks and the ones you compose) takes the per-block path; deep supervision,
        the backprop baseline and any other module take the reference one.
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

    Raises:
      Nothing of its own; errors surface when the step is traced (e.g. `LocalHead`'s
      ValueError/TypeError for labels that are not `[B]` integers in [0, K)).

    Implements the fused step (METHOD.md, Training: one fused step; DESIGN.md, Decisions:
    memory is part of the point).
    """
    if not (isinstance(model, LocalNetwork) and model.detach):
        return make_reference_train_step(
            model, tx, preprocess=preprocess, output_weight=output_weight, seed=seed
        )
    weight = output_loss_weight(model) if output_weight is None else output_weight
    base_key = jax.random.key(seed)
    out_name = model.output_name()

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        aug_key, dropout_key = _step_keys(base_key, state.step)
        x = preprocess(images, aug_key) if preprocess is not None else images
        grads: dict[str, Any] = {}
        batch_stats: dict[str, Any] = {}

        def run_block(name, block, h_in):
            out, terms, g, stats = block_value_and_grad(
                block,
                name,
                state.params,
                state.batch_stats,
                state.constants,
                h_in,
                labels,
                dropout_key,
            )
            # the block's gradient is done before the next block starts: its
            # activations are dead from here on
            out, grads[name] = jax.lax.optimization_barrier((out, g))
            if stats is not None:
                batch_stats[name] = stats
            return out, terms

        def run_output(h_in):
            def output_loss(p):
                logits = model.output.apply({"params": p}, h_in)
                out_loss = losses.pred_loss(logits, labels)
                return weight * out_loss, (logits, out_loss)

            (_, aux), grads[out_name] = jax.value_and_grad(output_loss, has_aux=True)(
                state.params[out_name]
            )
            return aux

        (logits, out_loss), local = model.sweep(x, run_block, run_output)
        total = total_loss(out_loss, local, weight)
        new_state = _apply_update(tx, state, grads, batch_stats or state.batch_stats)
        return new_state, step_metrics(logits, local, labels, out_loss, total)

    return train_step


def make_multi_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    output_weight: float | None = None,
    seed: int = 0,
    make_step: Callable[..., Callable] | None = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """Several train steps per dispatch: `lax.scan` of the step over batches on device.

    Identical updates to calling the single step S times (each step folds in its own
    step number), with one dispatch and one host round trip per S steps.

    Args:
      model, tx, preprocess, output_weight, seed: as in `make_train_step`.
      make_step: the step builder (default `make_train_step`).

    Returns:
      `multi_step(state, images [S, B, H, W, C], labels [S, B] int) -> (state, metrics)`
      where `metrics` are the single step's float32 sums, summed over the S steps.

    Raises:
      Nothing of its own; errors surface when the step is traced (e.g. `LocalHead`'s
      ValueError/TypeError for labels that are not `[B]` integers in [0, K)).

    An engineering option over the fused step (DESIGN.md, Decisions: data on device,
    augmentation in the step).
    """
    step_fn = (make_step or make_train_step)(
        model, tx, preprocess=preprocess, output_weight=output_weight, seed=seed
    )

    def multi_step(state: TrainState, images: jax.Array, labels: jax.Array):
        def body(st, batch):
            return step_fn(st, *batch)

        state, metrics = jax.lax.scan(body, state, (images, labels))
        return state, jax.tree_util.tree_map(lambda m: jnp.sum(m, axis=0), metrics)

    return multi_step


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
      `eval_step(state, images [B, H, W, C], labels [B] int) -> metrics` with float32
      sums `count`, `loss`, `correct` (and the per-block sums with `with_local`).

    Raises:
      Nothing of its own; errors surface when the step is traced (e.g. `LocalHead`'s
      ValueError/TypeError for labels that are not `[B]` integers in [0, K)).

    Evaluates the output layer's prediction with BatchNorm running averages (METHOD.md,
    Network: dense block, eval; Data: test sets, error after the last epoch).
    """

    def eval_step(state: TrainState, images: jax.Array, labels: jax.Array):
        x = preprocess(images) if preprocess is not None else images
        logits, local = model.apply(
            state.variables(), x, labels if with_local else None, train=False
        )
        return step_metrics(logits, local if with_local else [], labels)

    return eval_step
