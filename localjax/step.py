"""The fused local-learning step: every block's update in one jitted XLA program.

Usage::

    state = create_train_state(model, tx, jax.random.key(0), images[:2], labels[:2])
    step = jax.jit(make_train_step(model, tx, preprocess=..., seed=0), donate_argnums=0)
    state, metrics = step(state, images_u8, labels)   # metrics: sums over the batch

The loss differentiated is Σ_blocks local loss + w·CE(output), w = 1 − β for predsim,
else 1 (METHOD.md, Training: fused step). Because `models.cut` stops gradients between blocks, one
`jax.value_and_grad` of this sum gives each block exactly its own local gradient
(`make_reference_train_step`). `make_train_step` computes the same gradients block by
block inside the forward sweep, so compiled memory stays flat in depth (DESIGN.md);
`make_multi_step` runs several steps per dispatch; `shifted_wgrad_convs` is a CPU speed
option for convolutions (README.md, "Performance").

Raises (all builders): nothing at build time; shape errors surface when the step is traced
(e.g. `LocalHead`'s ValueError for labels that are not `[B]`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.core.scope import LazyRng

from localjax import losses
from localjax.models import _Network, cut, network_layers, output_loss_weight

__all__ = [
    "TrainState",
    "create_train_state",
    "milestone_schedule",
    "epoch_learning_rate",
    "make_optimizer",
    "make_train_step",
    "make_reference_train_step",
    "make_multi_step",
    "make_eval_step",
    "conv_shifted_wgrad",
    "shifted_wgrad_convs",
    "conv_wgrad_context",
    "CONV_WGRADS",
]


class TrainState(struct.PyTreeNode):
    """Everything a step reads and writes.

    Attributes:
      step: int32 scalar, number of updates done.
      params: the `params` collection (blocks, heads, output layer).
      batch_stats: BatchNorm running averages.
      constants: fixed random matrices (`bio` variant); never updated.
      opt_state: the optax optimizer state.

    Raises:
      Nothing of its own.

    Holds the state of the fused step (METHOD.md, Training; DESIGN.md, Decisions:
    Linen modules, pure losses).
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
      A `TrainState` at step 0 (int32 `step`, float32 parameters).

    Raises:
      ValueError, TypeError: from `model.init`, e.g. labels that are not `[b]` integers
        in [0, K) (see `LocalHead`) or an input of the wrong rank.

    Initialises as the reference does (METHOD.md, Training: reference PyTorch default
    init; Local losses: zero-initialised decoder and output layer).
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
    """Per-step learning rate of the paper: lr·decay^k, k = milestones passed.

    Epochs count from 1; epoch e uses k = #{m ≤ e − 1}, so with milestone 100 epoch 101
    is the first at the lower rate. Update number `count` (0-based) lies in epoch
    count // steps_per_epoch + 1.

    Args:
      lr: initial learning rate.
      milestones: epochs after which the rate is multiplied by `decay`.
      steps_per_epoch: updates per epoch (> 0).
      decay: factor per milestone (paper 0.25).

    Returns:
      An optax schedule `count` (int scalar) -> float32 scalar learning rate.

    Raises:
      Nothing of its own (`steps_per_epoch` is not validated).

    Implements the schedule (METHOD.md, Training: milestones).
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
    """The learning rate epoch `epoch` (1-based) trains at; see `milestone_schedule`.

    Args:
      lr: initial learning rate.
      milestones: epochs after which the rate is multiplied by `decay`.
      epoch: 1-based epoch number.
      decay: factor per milestone (paper 0.25).

    Returns:
      Python float, lr·decay^k with k = #{m ≤ epoch − 1}.

    Raises:
      Nothing of its own.

    Implements the schedule (METHOD.md, Training: milestones).
    """
    return lr * decay ** sum(m <= epoch - 1 for m in milestones)


def make_optimizer(
    lr: float, milestones: tuple[int, ...], steps_per_epoch: int, decay: float = 0.25
) -> optax.GradientTransformation:
    """Adam (β1 0.9, β2 0.999, eps 1e-8, no weight decay) with the milestone schedule.

    One Adam over all parameters equals the reference's one Adam per layer, since
    Adam is element-wise.

    Args:
      lr, milestones, steps_per_epoch, decay: as in `milestone_schedule`.

    Returns:
      An `optax.GradientTransformation` over any float32 parameter pytree.

    Raises:
      Nothing of its own.

    Implements the optimiser (METHOD.md, Training: Adam, milestones).
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


def _metrics(n, out_loss, total, logits, local, labels) -> dict[str, jax.Array]:
    return {
        "count": jnp.float32(n),
        "loss": out_loss * n,
        "objective": total * n,
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
        **_local_metrics(local, labels),
    }


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


def make_reference_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    output_weight: float | None = None,
    seed: int = 0,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """The plain step: one `jax.value_and_grad` of the summed objective.

    Because `models.cut` stops gradients between blocks, the gradient of
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
            total = weight * out_loss
            for terms in local:
                if terms is not None:
                    total = total + terms["loss"]
            return total, (logits, local, out_loss, updates)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (total, (logits, local, out_loss, updates)), grads = grad_fn(state.params)
        new_state = _apply_update(tx, state, grads, updates.get("batch_stats", state.batch_stats))
        return new_state, _metrics(labels.shape[0], out_loss, total, logits, local, labels)

    return train_step


def _sub(tree: Any, name: str) -> Any:
    return tree.get(name) if tree else None


def _splittable(model: nn.Module) -> bool:
    """Local learning with cuts: each block's gradient depends on that block alone.

    Only the networks of `models` list their blocks (`network_layers`); any other model
    takes the plain step, whatever attributes it has.
    """
    return isinstance(model, _Network) and model.head is not None and model.detach


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
    the blocks one at a time (`models.network_layers`) and takes each block's gradient
    right after its forward pass, so only about one block's activations are alive at
    any time and compiled memory stays flat in depth (DESIGN.md "Memory is part of the
    point"). Parameters, dropout masks (same Flax RNG streams), BatchNorm updates,
    gradients and metrics equal the reference's. Backprop and deep supervision
    (`detach=False`) use the reference step: there the whole graph is needed.

    Args:
      model: a network returning `(logits, local)`, where `local` lists each block's
        `LocalHead` dict (or None); `build_model` networks take the per-block path,
        other modules the reference one.
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
    if not (_splittable(model) and hasattr(model, "_layers")):
        return make_reference_train_step(
            model, tx, preprocess=preprocess, output_weight=output_weight, seed=seed
        )
    weight = output_loss_weight(model) if output_weight is None else output_weight
    base_key = jax.random.key(seed)

    def train_step(state: TrainState, images: jax.Array, labels: jax.Array):
        aug_key, dropout_key = _step_keys(base_key, state.step)
        x = preprocess(images, aug_key) if preprocess is not None else images
        layers, output_layer = network_layers(model, x)

        grads: dict[str, Any] = {}
        batch_stats: dict[str, Any] = {}
        local: list[dict | None] = []
        h = x.astype(model.dtype)
        for layer in layers:
            if not isinstance(layer, nn.Module):
                h = layer(h)
                continue
            name = layer.name

            def block_loss(p, h_in, layer=layer, name=name):
                variables = {"params": p}
                for col, tree in (
                    ("batch_stats", state.batch_stats),
                    ("constants", state.constants),
                ):
                    sub = _sub(tree, name)
                    if sub is not None:
                        variables[col] = sub
                (out, terms), updates = layer.apply(
                    variables,
                    h_in,
                    labels,
                    train=True,
                    rngs={"dropout": LazyRng.create(dropout_key, name)},
                    mutable=["batch_stats"],
                )
                return terms["loss"], (out, terms, updates)

            (_, (out, terms, updates)), g = jax.value_and_grad(block_loss, has_aux=True)(
                state.params[name], cut(h)
            )
            # the block's gradient is done before the next block starts: its
            # activations are dead from here on
            h, g = jax.lax.optimization_barrier((out, g))
            grads[name] = g
            if "batch_stats" in updates:
                batch_stats[name] = updates["batch_stats"]
            local.append(terms)

        out_name = output_layer.name

        def output_loss(p, h_in):
            logits = output_layer.apply({"params": p}, h_in)
            out_loss = losses.pred_loss(logits, labels)
            return weight * out_loss, (logits, out_loss)

        (_, (logits, out_loss)), grads[out_name] = jax.value_and_grad(output_loss, has_aux=True)(
            state.params[out_name], cut(h)
        )
        total = weight * out_loss
        for terms in local:
            if terms is not None:
                total = total + terms["loss"]
        new_state = _apply_update(tx, state, grads, batch_stats or state.batch_stats)
        return new_state, _metrics(labels.shape[0], out_loss, total, logits, local, labels)

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
        n = labels.shape[0]
        return {
            "count": jnp.float32(n),
            "loss": losses.pred_loss(logits, labels) * n,
            "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
            **(_local_metrics(local, labels) if with_local else {}),
        }

    return eval_step


# ---------------------------------------------------------------- CPU conv weight gradient
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
    faster than XLA's own weight-gradient convolution (README.md, "Performance"). Same math,
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
      ValueError: `choice` is not in `CONV_WGRADS`.

    An engineering option (DESIGN.md, modules: `experiments/benchmark.py`); it changes no
    math of METHOD.md.
    """
    if choice not in CONV_WGRADS:
        raise ValueError(f"unknown conv_wgrad {choice!r}; choose one of {list(CONV_WGRADS)}.")
    if choice == "shifted" or (choice == "auto" and jax.default_backend() == "cpu"):
        return shifted_wgrad_convs()
    return contextlib.nullcontext()
