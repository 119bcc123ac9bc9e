"""Local losses in your own Flax models (METHOD.md, Local losses; DESIGN.md, Decisions:
Linen modules, pure losses).

Usage::

    class Net(nn.Module):                      # any design; blocks are your modules
        head: HeadConfig

        @nn.compact
        def __call__(self, x, labels=None, *, train=False):
            layers = [
                LocalBlock(MyResidualUnit(32), head=self.head, name="res_0"),
                lambda z: nn.max_pool(z, (2, 2), strides=(2, 2)),
                LocalBlock(MyResidualUnit(64), head=self.head, name="res_1"),
            ]
            h, local = apply_blocks(layers, x, labels, train=train, detach=True)
            logits = OutputLayer(self.head.num_classes, zero_init=True)(cut(h))
            return logits, local                 # the contract of make_train_step

    model = Net(HeadConfig("predsim", num_classes=10))
    state = create_train_state(model, optax.adam(5e-4), key, x, labels)
    check_gradient_isolation(model, state.variables(), x, labels)   # raises on a leak
    step = jax.jit(make_train_step(model, optax.adam(5e-4)), donate_argnums=0)
    state, metrics = step(state, x, labels)
    summarize_metrics(metrics)                   # {"local_loss/block_0": ..., ...}

A *block* is a module whose output gets local heads (`LocalHead`: a learned similarity
projection for the similarity matching loss, an average-pooled linear decoder for the
prediction loss, or the feedback-alignment `bio` variant) and whose input is cut from the
graph, so that it learns from its own local loss only.

Letters: B batch, D features, H/W spatial size, C channels (NHWC), K classes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from localjax import losses
from localjax.layers import HeadConfig, LocalHead
from localjax.losses import check_labels

__all__ = [
    "LocalBlock",
    "GradientLeakError",
    "check_labels",
    "checked_step",
    "check_gradient_isolation",
    "local_objective",
    "summarize_metrics",
    "to_nnx",
]


def checked_step(
    step: Callable[..., Any], num_classes: int, **jit_kwargs: Any
) -> Callable[..., Any]:
    """Jits a train or eval step so that bad labels raise an error instead of training.

    Wraps `step(state, images, labels)` (from `make_train_step` / `make_eval_step`) in
    `checkify.checkify` with the user checks enabled: the labels are checked against
    [0, K) before the step (the `pred` loss and the output layer's cross-entropy need
    them there), and every `check_labels` inside the blocks is active. The error is
    fetched after each call, which waits for the step to finish: use it while developing
    a model or for the first steps, and the plain jitted step afterwards.

    Args:
      step: `step(state, images [B, ...], labels [B] int) -> outputs`, not yet jitted.
      num_classes: K.
      **jit_kwargs: passed to `jax.jit` (e.g. `donate_argnums=0`).

    Returns:
      `checked(state, images, labels) -> outputs`, jitted.

    Raises:
      jax.experimental.checkify.JaxRuntimeError (a ValueError), from the returned
      function, naming the check that failed (e.g. labels out of [0, K)); the
      `check_labels` errors for labels of the wrong shape or dtype, when tracing.

    Guards the labels `y` of the local losses (METHOD.md, Local losses:
    `pred`, output layer).
    """

    def guarded(state, images, labels):
        check_labels(labels, num_classes, where="checked_step")  # traced: debug_check
        return step(state, images, labels)

    jitted = jax.jit(checkify.checkify(guarded, errors=checkify.user_checks), **jit_kwargs)

    def checked(state, images, labels):
        err, out = jitted(state, images, labels)
        err.throw()
        return out

    return checked


# ---------------------------------------------------------------- the wrapper
def _accepts_train(module: nn.Module) -> bool:
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False
    return "train" in params


class LocalBlock(nn.Module):
    """Any Linen module as a block with local heads (Fig. 1).

    `out, local = LocalBlock(module, head)(x, labels, train=train)` runs `module` on `x`
    to get the block output h, computes this block's local loss from h with a
    `LocalHead` (sim: learned no-bias projection, dense D×D or conv 3×3; pred: average
    pool sized by `dim_in_decoder`, flatten, zero-initialised linear decoder; predsim:
    their β-mix; `bio`: fixed random label projection and feedback alignment), then
    applies dropout to give `out`. Same contract as `LocalDense` / `LocalConv`, so it
    plugs into `apply_blocks` and `make_train_step`. The block does not cut its own
    input: put it in `apply_blocks(..., detach=True)` or call `cut(x)` before it.

    Attributes:
      module: a Linen module mapping `x` to a float `[B, D]` or `[B, H, W, C]` (NHWC)
        output; it may use BatchNorm (`batch_stats`) and dropout (`dropout` rng).
        A copy of it named `body` runs in the block (wherever `module` was built),
        so its variables live under `<block name>/body`, the heads' under
        `<block name>/head`; do not share one module instance between blocks.
      head: `HeadConfig`, or None for a plain block (backprop baseline; `local` None).
      dropout: dropout rate on the passed-on output (whole channels for a feature map,
        like PyTorch's Dropout2d; the local loss sees h before dropout).
      nonlin: nonlinearity of the `recon` decoder (`HeadConfig.unsup == "recon"`).
      first_layer: the network's first block (no `recon` term, as the reference).
      pass_train: call `module(x, train=train)`; None (default) does so when the
        module's `__call__` has a `train` parameter.

    Call args:
      x: `[B, ...]` float block input (already cut).
      labels: `[B]` int class indices in [0, K), or None (no heads evaluated).
      train: training mode (passed on to `module`, dropout on).

    Returns:
      `(out, local)`: `out` of h's shape and dtype; `local` None (no labels or no head)
      or `LocalHead`'s dict of float32 scalars `loss`, `pred`, `sim` and `logits`
      (`[B, K]` float32, or None for sim-only and `bio`).

    Raises:
      TypeError: the module returns something other than one array (e.g. a tuple), a
        non-float output, or non-integer labels (see `check_labels`).
      ValueError: with a head, an output that is neither `[B, D]` nor `[B, H, W, C]`
        (e.g. a 3-D `[B, T, D]` sequence: the pred decoder pools over H and W), a batch
        size different from the input's, `recon` on a block that changes the spatial
        size, or labels that are not `[B]` or outside [0, K) (`check_labels`).

    Implements a block and its heads (METHOD.md, Network; Local losses;
    Backprop-free variant).
    """

    module: nn.Module
    head: HeadConfig | None = None
    dropout: float = 0.0
    nonlin: str = "relu"
    first_layer: bool = False
    pass_train: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool = False):
        # a fresh child named "body", wherever the module was built (the parent's
        # compact method binds it to the parent): the block's variables then live
        # under <block>/body next to <block>/head, and the name cannot collide with
        # attributes of `flax.nnx.bridge.ToNNX`
        module = self.module.clone(parent=self, name="body")
        pass_train = _accepts_train(module) if self.pass_train is None else self.pass_train
        h = module(x, train=train) if pass_train else module(x)
        # a top-level LocalBlock has no name; its wrapped module's class still locates it
        where = (
            f"LocalBlock {self.name!r}"
            if self.name
            else f"LocalBlock({type(self.module).__name__})"
        )
        if not (hasattr(h, "shape") and hasattr(h, "dtype")):
            raise TypeError(
                f"{where}: the wrapped module must return one array (the block output); "
                f"got {type(h).__name__}. Return extra values through a separate module."
            )
        if self.head is not None:
            self._check_output(h, x, where)
        local = None
        if self.head is not None and labels is not None:
            check_labels(labels, self.head.num_classes, where=where)
            if labels.shape[0] != h.shape[0]:
                raise ValueError(f"{where}: {labels.shape[0]} labels for a batch of {h.shape[0]}.")
            head = LocalHead(self.head, nonlin=self.nonlin, name="head")
            local = head(h, labels, x=x, first_layer=self.first_layer)
        broadcast = (1, 2) if h.ndim == 4 else ()
        out = nn.Dropout(self.dropout, broadcast_dims=broadcast, deterministic=not train)(h)
        return out, local

    def _check_output(self, h: jax.Array, x: jax.Array, where: str) -> None:
        if h.ndim not in (2, 4):
            raise ValueError(
                f"{where}: local heads need the block output as [B, D] or [B, H, W, C] "
                f"(NHWC: the pred decoder average-pools over H and W); the "
                f"wrapped {type(self.module).__name__} returned shape {tuple(h.shape)}. "
                "Reshape it inside the module, e.g. h.reshape(h.shape[0], -1) for [B, D]."
            )
        if not jnp.issubdtype(h.dtype, jnp.floating):
            raise TypeError(f"{where}: the block output must be float; got {h.dtype}.")
        if h.shape[0] != x.shape[0]:
            raise ValueError(
                f"{where}: the block output has batch {h.shape[0]} but its input "
                f"{x.shape[0]}; a block must keep the batch axis first."
            )
        if self.head.unsup == "recon" and not self.first_layer and h.ndim == 4:
            if x.ndim != 4 or x.shape[1:3] != h.shape[1:3]:
                raise ValueError(
                    f"{where}: unsup='recon' reconstructs the input with a 3x3 conv of "
                    f"the output, so it needs equal spatial sizes; got input "
                    f"{tuple(x.shape)} and output {tuple(h.shape)}."
                )


# ---------------------------------------------------------------- objective
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
    total = output_weight * losses.pred_loss(logits, labels)
    for terms in local:
        if terms is not None:
            total = total + terms["loss"]
    return total


def summarize_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Per-example means and errors from the sums of `make_train_step`/`make_eval_step`.

    Args:
      metrics: dict of float32 sums over a batch (or over several batches, added up):
        `count`, `loss`, `correct`, optionally `objective`, `local_loss/block_<i>`,
        `local_correct/block_<i>`.

    Returns:
      dict of Python floats: `loss`, `error` (1 − correct/count), `objective`, and per
      block `local_loss/block_<i>` (mean local loss) and `local_error/block_<i>` (error
      of the block's pred decoder, the paper's per-layer errors).

    Raises:
      KeyError: if `count` is missing.
      ZeroDivisionError: if `count` is 0.

    Reports the test error and per-block local errors (METHOD.md, Data:
    error on the test set; DESIGN.md, What flows where: per-block local loss/error).
    """
    host = {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}
    n = host["count"]
    out: dict[str, float] = {}
    for name, value in host.items():
        if name == "count":
            continue
        if name == "correct":
            out["error"] = 1.0 - value / n
        elif name.startswith("local_correct/"):
            out["local_error/" + name.split("/", 1)[1]] = 1.0 - value / n
        else:
            out[name] = value / n
    return out


# ---------------------------------------------------------------- gradient isolation
class GradientLeakError(ValueError):
    """A local loss sends gradient into another block's parameters.

    The method lets no gradient pass to a block's input (METHOD.md, Local
    losses: no gradient passes to the block's input); a leak is e.g. a missing cut, a
    skip connection across a cut, or parameters shared between blocks. Raised by
    `check_gradient_isolation`; the message (one str argument) names the leaking block,
    the block it reaches and some of the parameters.

    Raises:
      Nothing of its own; it is the error `check_gradient_isolation` raises.
    """


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split("/") for p in paths]
    prefix = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        prefix.append(items[0])
    return "/".join(prefix) or "<root>"


def check_gradient_isolation(
    model: nn.Module,
    variables: Mapping[str, Any],
    x: jax.Array,
    labels: jax.Array,
    *,
    seed: int = 0,
    perturb: float = 1e-3,
    include_output: bool = True,
) -> dict[str, list[str]]:
    """Checks that each local loss trains its own block only.

    Computes, for every local loss k (and the output loss), the gradient with respect
    to all parameters, and requires that no parameter receives gradient from two
    losses: d(local loss k)/d(params of block j≠k) must be exactly zero. A parameter
    belongs to the first loss that reaches it; its block is named by the common path
    of the parameters it owns. The model must return `(logits, local)` as for
    `make_train_step`. It runs in training mode (BatchNorm batch statistics, dropout
    drawn from `seed`). The gradient is taken at the parameters plus `perturb`·N(0, 1) noise,
    so zero-initialised decoders (whose gradient to h is exactly zero at init) cannot
    hide a leak; isolation is structural and does not depend on the point.

    Args:
      model: a Linen module `model(x, labels, train=...) -> (logits, local)`.
      variables: its variables (`params`, optionally `batch_stats`, `constants`), e.g.
        `state.variables()`.
      x: `[B, ...]` float input batch (B ≥ 2 for the similarity matching loss).
      labels: `[B]` int labels in [0, K).
      seed: seed of the noise and of dropout.
      perturb: noise scale added to float parameters (0 disables).
      include_output: also treat the output cross-entropy as a loss that must reach
        only the output layer (the cut before the output layer).

    Returns:
      `{loss name: [parameter paths it trains]}`, names `block_<i> (<path>)` and
      `output`; the order of `local`.

    Raises:
      GradientLeakError (a ValueError): naming the leaking block, the block it leaks
        into and some of the parameters, e.g. when a cut between blocks is missing.
      ValueError: no local loss at all (every `local` entry None: labels not used or a
        model without heads), or a block's pred decoder width differs from the output
        layer's K; and the `check_labels` errors (ValueError/TypeError) for bad labels.

    Checks the cut (METHOD.md, Local losses: no gradient passes to the block's
    input; DESIGN.md, Decisions: one cut, one gradient).
    """
    rng = np.random.default_rng(seed)  # host noise: no PRNG kernels to compile
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    leaves = [
        jnp.asarray(np.asarray(leaf) + perturb * rng.standard_normal(np.shape(leaf)), leaf.dtype)
        if perturb and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
        else leaf
        for leaf in leaves
    ]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    dropout_key = jax.random.key(seed)

    def run(p):
        (logits, local), _ = model.apply(
            {**variables, "params": p},
            x,
            labels,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        return logits, local

    logits, local = jax.eval_shape(run, params)  # structure only, nothing compiled
    names = [f"block_{i}" for i, t in enumerate(local) if t is not None]
    if not names:
        raise ValueError(
            "check_gradient_isolation: the model returned no local loss (every `local` "
            "entry is None); give its blocks a HeadConfig and pass labels through."
        )
    for i, terms in enumerate(local):
        if terms is not None and terms.get("logits") is not None:
            if terms["logits"].shape[-1] != logits.shape[-1]:
                raise ValueError(
                    f"block_{i}'s pred decoder predicts {terms['logits'].shape[-1]} "
                    f"classes but the output layer {logits.shape[-1]}; use one "
                    "HeadConfig.num_classes for the whole model."
                )
    check_labels(labels, logits.shape[-1], where="check_gradient_isolation")
    if include_output:
        names.append("output")

    def all_losses(p):
        out_logits, loc = run(p)
        terms = [t["loss"] for t in loc if t is not None]
        if include_output:
            terms.append(losses.pred_loss(out_logits, labels))
        return jnp.stack(terms)

    # a check, not a hot loop: on CPU, skip XLA's slow backend optimisation
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    jac = jax.jit(jax.jacrev(all_losses), compiler_options=options)(params)
    # each leaf of jac: [n_losses, *leaf.shape]
    flat = jax.tree_util.tree_flatten_with_path(jac)[0]
    touched = {}
    for path, g in flat:
        g = np.asarray(g).reshape(len(names), -1)
        touched[_path_str(path)] = [k for k in range(len(names)) if np.any(g[k] != 0)]

    owned: dict[int, list[str]] = {k: [] for k in range(len(names))}
    leaks: dict[tuple[int, int], list[str]] = {}
    for path, ks in touched.items():
        if not ks:
            continue
        owner = ks[0]
        owned[owner].append(path)
        for k in ks[1:]:
            leaks.setdefault((k, owner), []).append(path)

    labels_of = {
        k: names[k] if names[k] == "output" else f"{names[k]} ({_common_prefix(owned[k])})"
        for k in owned
    }
    if leaks:
        lines = []
        for (k, j), paths in sorted(leaks.items()):
            source = (
                "the output loss" if names[k] == "output" else f"the local loss of {labels_of[k]}"
            )
            shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
            lines.append(
                f"  {source} sends gradient into {labels_of[j]}: {len(paths)} parameter(s) "
                f"[{shown}]"
            )
        first = labels_of[min(k for k, _ in leaks)]
        raise GradientLeakError(
            "gradient is not isolated per block (a cut is missing):\n"
            + "\n".join(lines)
            + f"\nCut the graph before {first}: `cut(x)` on its input, or "
            "`apply_blocks(..., detach=True)`; before the output layer, "
            "`OutputLayer(...)(cut(h))`. Skip connections and shared parameters must not "
            "cross a cut."
        )
    return {labels_of[k]: owned[k] for k in owned}


# ---------------------------------------------------------------- Flax NNX
def to_nnx(block: nn.Module, *sample_args: Any, rngs: Any, **sample_kwargs: Any):
    """A Linen block as a Flax NNX module, initialised on a sample batch.

    A thin wrapper over `flax.nnx.bridge.ToNNX(block, rngs=rngs).lazy_init(...)`: the
    result lives inside an `nnx.Module`, keeps the block's `params` / `batch_stats` /
    `constants` as NNX variables, and is called like the Linen block. Pass
    `mutable=["batch_stats"]` when calling it with `train=True` (BatchNorm updates its
    running averages). Train it with `local_objective` and `nnx.value_and_grad`.

    Args:
      block: a Linen block, e.g. `LocalBlock(...)`, `LocalConv(...)`.
      *sample_args: sample inputs for initialisation, e.g. `x [b, ...]` float and
        `labels [b]` int (give labels so that the local heads are created).
      rngs: `nnx.Rngs` (with a `dropout` stream if the block uses dropout) or a key.
      **sample_kwargs: sample keyword arguments (e.g. `train=False`).

    Returns:
      An initialised `flax.nnx.bridge.ToNNX` module.

    Raises:
      Nothing of its own; whatever the block raises on the sample inputs (see
      `LocalBlock`: ValueError/TypeError for bad outputs or labels).

    Bridges the blocks (METHOD.md, Network; DESIGN.md, Decisions: Linen
    modules, pure losses — users of Flax NNX wrap our blocks with `flax.nnx.bridge`).
    """
    from flax import nnx

    return nnx.bridge.ToNNX(block, rngs=rngs).lazy_init(*sample_args, **sample_kwargs)
