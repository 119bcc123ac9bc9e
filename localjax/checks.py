"""Checks for models you compose yourself: gradient isolation and label ranges
(METHOD.md, Local losses: no gradient passes to the block's input).

Usage::

    check_gradient_isolation(model, state.variables(), x, labels)  # raises on a leak
    step = checked_step(make_train_step(model, tx), num_classes=10, donate_argnums=0)
    state, metrics = step(state, images, labels)   # bad labels raise instead of training

Letters: B batch, K classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from localjax import losses
from localjax.losses import check_labels

__all__ = ["GradientLeakError", "checked_step", "check_gradient_isolation"]


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
        with losses.traced_label_checks():  # the blocks' check_labels become debug_checks
            check_labels(labels, num_classes, where="checked_step")
            return step(state, images, labels)

    jitted = jax.jit(checkify.checkify(guarded, errors=checkify.user_checks), **jit_kwargs)

    def checked(state, images, labels):
        err, out = jitted(state, images, labels)
        err.throw()
        return out

    return checked


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
