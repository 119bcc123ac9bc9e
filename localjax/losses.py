"""Local loss functions of Nøkland & Eidnes (2019), "Training Neural Networks with
Local Error Signals" (arXiv 1901.06656): the local losses (METHOD.md, Local losses;
Backprop-free variant).

Usage::

    s = similarity_matrix(h)                    # [B, ...] -> [B, B]
    l_sim = sim_loss(g_h, onehot)               # scalar
    l_pred = pred_loss(logits, labels)          # scalar
    l = predsim_loss(l_pred, l_sim, beta=0.99)  # scalar

Letters: B batch, D features, H/W spatial size, C channels (NHWC layout), K classes,
P width of the `bio` label projection (128 in the paper).
All functions are pure, jit-able and return float32 scalars or arrays; the caller
sums the terms of all blocks.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import checkify

__all__ = [
    "similarity_matrix",
    "sim_loss",
    "pred_loss",
    "predsim_loss",
    "bce_loss",
    "bio_pred_targets",
    "check_labels",
]

# True while `checks.checked_step` traces its step: only then does `check_labels` put a
# `checkify.debug_check` into the traced program. Outside checkify the check does nothing,
# yet its error effect alone turned off JAX's C++ dispatch for every step that held it
# (about 4 ms of host time per call on one CPU core, measured on MLP 4 x 1024).
_TRACED_LABEL_CHECKS = contextvars.ContextVar("traced_label_checks", default=False)


@contextlib.contextmanager
def traced_label_checks() -> Iterator[None]:
    """Within this context `check_labels` checks traced labels with
    `checkify.debug_check` (for a step traced under `checkify.checkify`, as
    `checks.checked_step` does); outside it only concrete labels are checked."""
    token = _TRACED_LABEL_CHECKS.set(True)
    try:
        yield
    finally:
        _TRACED_LABEL_CHECKS.reset(token)


NORM_EPS = 1e-8  # the reference adds this to each row's L2 norm (METHOD.md, S(z) step 3)


def _check_batch(name: str, x: jax.Array, min_ndim: int = 2) -> None:
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have a leading batch axis and at least {min_ndim} dims "
            f"([B, D] or [B, H, W, C]); got shape {tuple(x.shape)}. "
            "Reshape a single example to [1, ...]."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (shape {tuple(x.shape)}).")


def similarity_matrix(z: jax.Array, use_std: bool = True) -> jax.Array:
    """Adjusted cosine similarity of every pair of examples in a batch.

    A feature map `[B, H, W, C]` with C > 3 and H > 1 is first reduced to the unbiased
    standard deviation of each channel over its H·W positions (`[B, C]`), unless
    `use_std` is False; any other input is flattened to `[B, D]`. Each row is centred,
    divided by (1e-8 + its L2 norm), and the Gram matrix is clipped to [-1, 1].

    Args:
      z: `[B, D]` or `[B, H, W, C]` (NHWC) floating array; B >= 1.
      use_std: reduce a feature map to its per-channel standard deviation (the
        reference's default); False flattens it instead (`--no-similarity-std`).

    Returns:
      `[B, B]` array of z's dtype with entries in [-1, 1].

    Raises:
      ValueError: if `z` has no feature axis or an empty batch.

    Implements the similarity matrix S(z) (METHOD.md, Local losses: similarity matrix).
    """
    _check_batch("similarity_matrix input", z)
    if use_std and z.ndim == 4 and z.shape[3] > 3 and z.shape[1] > 1:
        # [B, H, W, C] -> [B, C]: per-channel spread over space, divisor H*W - 1
        z = jnp.std(z, axis=(1, 2), ddof=1)
    else:
        z = z.reshape(z.shape[0], -1)  # [B, ...] -> [B, D]
    zc = z - jnp.mean(z, axis=1, keepdims=True)
    zn = zc / (NORM_EPS + jnp.sqrt(jnp.sum(zc * zc, axis=1, keepdims=True)))
    return jnp.clip(zn @ zn.T, -1.0, 1.0)


def sim_loss(z: jax.Array, targets: jax.Array, use_std: bool = True) -> jax.Array:
    """Similarity matching loss: mean over B² of (S(z) − S(targets))².

    Args:
      z: `[B, D]` or `[B, H, W, C]` float array, the block output after its learned
        similarity projection g (or the raw/pooled output in the `bio` variant).
      targets: `[B, K]` float array: one-hot labels, or projected labels P·Y (`bio`),
        or the block input for the unsupervised variant. No gradient flows into it.
      use_std: passed to `similarity_matrix` for both S() (False: feature maps are
        flattened, the reference's `--no-similarity-std`).

    Returns:
      float32 scalar.

    Raises:
      ValueError: if the batch sizes differ, or an input has no feature axis or an empty
        batch.

    Implements the `sim` loss (METHOD.md, Local losses: `sim`; Backprop-free variant:
    `sim`).
    """
    _check_batch("sim_loss z", z)
    _check_batch("sim_loss targets", targets)
    if z.shape[0] != targets.shape[0]:
        raise ValueError(
            f"sim_loss: z has batch {z.shape[0]} but targets have batch "
            f"{targets.shape[0]}; both must describe the same examples."
        )
    s_target = jax.lax.stop_gradient(similarity_matrix(targets.astype(z.dtype), use_std))
    diff = similarity_matrix(z, use_std) - s_target
    return jnp.mean(jnp.square(diff.astype(jnp.float32)))


def pred_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Prediction loss: mean softmax cross-entropy of local logits vs labels.

    Args:
      logits: `[B, K]` float array from a block's local decoder (or the output layer).
      labels: `[B]` integer class indices in [0, K).

    Returns:
      float32 scalar.

    Raises:
      ValueError: if shapes do not match `[B, K]` and `[B]`.

    Implements the `pred` loss (METHOD.md, Local losses: `pred`) and the output layer's
    cross-entropy (METHOD.md, Local losses: output layer). Label values are not checked
    here; see `check_labels`.
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"pred_loss expects logits [B, K] and labels [B]; got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}."
        )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.mean(ce)


def predsim_loss(pred: jax.Array, sim: jax.Array, beta: float = 0.99) -> jax.Array:
    """The combined `predsim` loss: (1 − β)·pred + β·sim.

    Args:
      pred: float scalar from `pred_loss` (or `bce_loss` in the `bio` variant).
      sim: float scalar from `sim_loss`.
      beta: weight of the similarity matching loss, in [0, 1]; the paper uses 0.99
        (0.01 for `bio`).

    Returns:
      float32 scalar.

    Raises:
      ValueError: if `beta` is outside [0, 1].

    Implements the `predsim` loss (METHOD.md, Local losses: `predsim`; Backprop-free
    variant: `predsim` with `bio`).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"predsim beta must be in [0, 1]; got {beta}.")
    return (1.0 - beta) * pred + beta * sim


def bce_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Binary cross-entropy with logits, mean over all entries (`bio` prediction loss).

    Args:
      logits: `[B, P]` float array from the feedback-alignment decoder.
      targets: `[B, P]` 0/1 float array, see `bio_pred_targets`.

    Returns:
      float32 scalar.

    Raises:
      ValueError: if the shapes differ.

    Implements the `bio` prediction loss (METHOD.md, Backprop-free variant: `pred`).
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"bce_loss: logits {tuple(logits.shape)} and targets "
            f"{tuple(targets.shape)} must have the same shape."
        )
    bce = optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32), jax.lax.stop_gradient(targets).astype(jnp.float32)
    )
    return jnp.mean(bce)


def bio_pred_targets(projected_labels: jax.Array) -> jax.Array:
    """Target of the `bio` prediction loss: the 0/1 vector (P·Y) > 0.

    Args:
      projected_labels: `[B, P]` float array P·Y, one-hot labels through the fixed
        random projection.

    Returns:
      `[B, P]` float32 array of 0s and 1s, with no gradient.

    Raises:
      Nothing of its own.

    Implements the `bio` target `(P·Y) > 0` (METHOD.md, Backprop-free variant: `pred`).
    """
    return jax.lax.stop_gradient((projected_labels > 0).astype(jnp.float32))


def _concrete(x: Any) -> np.ndarray | None:
    """The host value of `x`, or None when `x` is traced (inside jit / grad)."""
    if isinstance(x, jax.core.Tracer):
        # not via the conversion error: its message searches the whole trace so far,
        # which makes tracing a deep network (one check per block) quadratic in depth
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except RuntimeError:  # e.g. a global array not fully addressable from this host
        return None


def check_labels(labels: jax.Array, num_classes: int, where: str = "labels") -> jax.Array:
    """Checks class labels against the K outputs of a decoder.

    `jax.nn.one_hot` silently maps an out-of-range label to a zero row, and the
    cross-entropy of such a row is not the prediction loss of any class, so training
    would go on with wrong local losses. Shape and dtype are checked always; values are
    checked at once when `labels` is concrete (eager calls, `model.init` outside jit),
    and under `jax.jit` through `checkify.debug_check` when traced within
    `traced_label_checks()`, which `checks.checked_step` sets while it traces its step
    under `jax.experimental.checkify`.

    Args:
      labels: `[B]` integer array of class indices, expected in [0, K).
      num_classes: K, the width of the decoder (`HeadConfig.num_classes`).
      where: what to name in the error message (e.g. the block).

    Returns:
      `labels`, unchanged.

    Raises:
      ValueError: `labels` is not 1-D, or (concrete labels) a value is outside [0, K).
      TypeError: `labels` is not an integer array (e.g. one-hot or float labels).

    Guards the integer labels `y` of the `pred` loss (METHOD.md, Local losses:
    `pred`).
    """
    shape = tuple(np.shape(labels))
    if len(shape) != 1:
        raise ValueError(
            f"{where}: labels must be [B] integer class indices; got shape {shape}. "
            "One-hot labels [B, K] are not accepted: pass labels.argmax(-1)."
        )
    dtype = jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{where}: labels must be an integer array of class indices; got {dtype}.")
    host = _concrete(labels)
    if host is not None:
        bad = host[(host < 0) | (host >= num_classes)]
        if bad.size:
            raise ValueError(
                f"{where}: labels must lie in [0, {num_classes}) for a decoder with "
                f"K={num_classes} outputs; got {bad.size} out of range (e.g. "
                f"{sorted(set(bad.tolist()))[:5]}). Set HeadConfig.num_classes to the "
                "dataset's number of classes."
            )
    elif _TRACED_LABEL_CHECKS.get():
        checkify.debug_check(
            jnp.all((labels >= 0) & (labels < num_classes)),
            f"{where}: labels must lie in [0, {num_classes}) for a decoder with "
            f"K={num_classes} outputs; got min {{}} max {{}}.",
            jnp.min(labels),
            jnp.max(labels),
        )
    return labels
