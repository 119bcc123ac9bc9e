"""The reference's optimizers (train.py `--optim`, `--momentum`, `--weight-decay`) against
NumPy transcriptions of PyTorch's update rules (torch.optim.Adam / SGD, PyTorch 2.x)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from localjax.errors import ConfigError
from localjax.training.optimizer import make_optimizer

LR, STEPS = 1e-2, 6


def _grads(seed=0, n=STEPS, shape=(5, 3)):
    rng = np.random.default_rng(seed)
    # gradients that shrink and grow, so AMSGrad's running maximum matters
    return [rng.standard_normal(shape) * (3.0 if t % 3 == 0 else 0.3) for t in range(n)]


def _run_optax(tx, p0, grads):
    p = {"w": jnp.asarray(p0, jnp.float32)}
    state = tx.init(p)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, p)
        p = optax.apply_updates(p, updates)
    return np.asarray(p["w"])


def _torch_adam(p0, grads, wd=0.0, amsgrad=False, b1=0.9, b2=0.999, eps=1e-8):
    p, m, v, vmax = p0.copy(), 0 * p0, 0 * p0, 0 * p0
    for t, g in enumerate(grads, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        c1, c2 = 1 - b1**t, 1 - b2**t
        if amsgrad:
            vmax = np.maximum(vmax, v)
            denom = np.sqrt(vmax) / np.sqrt(c2) + eps
        else:
            denom = np.sqrt(v) / np.sqrt(c2) + eps
        p = p - (LR / c1) * m / denom
    return p


def _torch_sgd(p0, grads, momentum=0.0, wd=0.0):
    p, buf = p0.copy(), None
    for g in grads:
        g = g + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = buf
        p = p - LR * g
    return p


P0 = np.random.default_rng(9).standard_normal((5, 3))


@pytest.mark.parametrize(
    "kwargs, reference",
    [
        (dict(), lambda g: _torch_adam(P0, g)),
        (dict(weight_decay=5e-2), lambda g: _torch_adam(P0, g, wd=5e-2)),
        (dict(optim="amsgrad"), lambda g: _torch_adam(P0, g, amsgrad=True)),
        (dict(optim="amsgrad", weight_decay=1e-2), lambda g: _torch_adam(P0, g, 1e-2, True)),
        (dict(optim="sgd"), lambda g: _torch_sgd(P0, g)),
        (
            dict(optim="sgd", momentum=0.9, weight_decay=5e-4),
            lambda g: _torch_sgd(P0, g, 0.9, 5e-4),
        ),
    ],
)
def test_optimizers_follow_pytorchs_update_rules(kwargs, reference):
    grads = _grads()
    got = _run_optax(make_optimizer(LR, (), steps_per_epoch=10, **kwargs), P0, grads)
    np.testing.assert_allclose(got, reference(grads), rtol=2e-5, atol=1e-6)


def test_amsgrad_differs_from_optax_amsgrad_where_pytorch_does():
    """The reason for `scale_by_torch_amsgrad`: optax takes the maximum of corrected
    moments, PyTorch of raw ones; the two give different parameters."""
    grads = _grads()
    optax_ams = _run_optax(optax.amsgrad(LR), P0, grads)
    assert np.max(np.abs(optax_ams - _torch_adam(P0, grads, amsgrad=True))) > 1e-5


def test_default_is_adam_with_the_milestone_schedule_unchanged():
    grads = _grads(n=4)
    schedule = lambda count: jnp.where(count >= 2, LR * 0.25, LR)  # milestone 1, 2 steps/epoch
    want = _run_optax(optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8), P0, grads)
    got = _run_optax(make_optimizer(LR, (1,), steps_per_epoch=2), P0, grads)
    np.testing.assert_array_equal(got, want)
    params = {"w": jnp.zeros((2,))}
    structure = jax.tree_util.tree_structure
    assert structure(make_optimizer(LR, (1,), 2).init(params)) == structure(
        optax.adam(schedule).init(params)
    )  # checkpoints of earlier runs keep their layout


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(optim="rmsprop"), r"unknown optim 'rmsprop'"),
        (dict(momentum=0.9), r"momentum=0.9 applies to optim='sgd' only"),
        (dict(optim="sgd", momentum=1.5), r"momentum=1.5 must be in \[0, 1\)"),
        (dict(weight_decay=-1e-4), r"weight_decay=-0.0001 must be >= 0"),
    ],
)
def test_bad_optimizer_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_optimizer(LR, (), 10, **kwargs)
