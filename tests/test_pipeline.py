"""Pipelined training (issue 16, docs/pipeline.md): blocks on different devices, the
numbers of the fused step.

Compiling dominates, so the combinations are a representative subset, each program
compiled once (the fused reference runs data parallel over as many devices as one
pipeline stage has where it can, so both split the batch alike):

- library, MLP (4 blocks) `bio` predsim with dropout, 4 stages x 2 data (S x 2), Adam with
  a milestone inside the run: parameters, optimizer state and per-batch metrics against
  the fused step (bitwise equal here); the compiled program's collectives; per-device
  state memory; 500 ticks; the state laid out on 2 and 4 stages and back;
- library, a small VGG (vgg6b at 1/32 width without dense block: 4 conv blocks) predsim
  with dropout, 2 stages x 1 data (1 x S), 2 ticks per dispatched program, SGD with
  momentum (Adam turns the rounding noise of a bias before BatchNorm into whole steps,
  see tests/test_sharding.py);
- the training loop, MLP (2 blocks) predsim with dropout, 2 stages x 1 data (1 x S), a last
  partial batch, against the fused loop on 2 devices: metrics.jsonl and checkpoints; an
  exact resume of the pipelined run, and its checkpoint resumed on 1 stage (fused);
- refusals (ConfigError, one line), stage balancing and the FLOP count.
"""

import json
import os
import re
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_records

from localjax.errors import ConfigError
from localjax.models import build_model
from localjax.training import loop as train
from localjax.training import pipeline as pl
from localjax.training import sharding, stages
from localjax.training.checkpoints import Checkpointer
from localjax.training.config import validate
from localjax.training.optimizer import make_optimizer
from localjax.training.state import create_train_state
from localjax.training.steps import make_train_step

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
RTOL = 1e-5


def _preprocess(images, key):
    del key
    return images.astype(jnp.float32) / 255.0 - 0.5


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, 28, 28, 1)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return images, labels


def _host_state(model, tx, images, labels):
    x = _preprocess(jnp.asarray(images[:2]), None)
    return jax.device_get(create_train_state(model, tx, jax.random.key(0), x, labels[:2]))


def _fused(model, tx, state, data, epochs, n_devices):
    """The fused step, data parallel over `n_devices`: (final host state, [per-batch
    metrics as Python floats])."""
    mesh = sharding.make_mesh(n_devices)
    step = make_train_step(model, tx, preprocess=_preprocess, seed=3)
    fn = sharding.data_parallel(lambda s, im, lb, idx: step(s, im[idx], lb[idx]), mesh)
    state = sharding.put_replicated(state, mesh)
    images, labels = sharding.put_replicated(data[:2], mesh)
    history = []
    for batches in epochs:
        for idx in batches:
            state, m = fn(state, images, labels, sharding.put_batch(idx, mesh))
            history.append(m)
    history = [{k: float(v) for k, v in m.items()} for m in jax.device_get(history)]
    return jax.device_get(state), history


def _pipelined(pipe, state, data, epochs, mesh, ticks_per_call=1):
    """`run_epoch` per epoch: (final host state, [per-batch metrics])."""
    state = sharding.put_replicated(state, mesh)
    images, labels = sharding.put_replicated(data[:2], mesh)
    history = []
    for batches in epochs:
        state, _, n = pl.run_epoch(
            pipe,
            state,
            images,
            labels,
            batches,
            sync_every=4,
            ticks_per_call=ticks_per_call,
            check=lambda step, m: history.append((step, m)),
        )
        assert n == len(batches)
    assert [s for s, _ in history] == list(range(1, len(history) + 1))  # in order, once
    return jax.device_get(state), [m for _, m in history]


def _assert_trees_close(got, want, rtol=RTOL, exact=False):
    flat_got = jax.tree_util.tree_leaves_with_path(got)
    flat_want = jax.tree_util.tree_leaves(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    worst = 0.0
    for (path, g), w in zip(flat_got, flat_want, strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, jax.tree_util.keystr(path)
        if exact or not np.issubdtype(w.dtype, np.floating):
            np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))
            continue
        # relative to the leaf's size, absolute below 1 (as tests/test_sharding.py): a
        # bias before BatchNorm, or its momentum, holds rounding noise of about 1e-7
        scale = max(float(np.max(np.abs(w))), 1.0)
        worst = max(worst, float(np.max(np.abs(g - w))) / scale)
        np.testing.assert_allclose(
            g, w, rtol=rtol, atol=rtol * scale, err_msg=jax.tree_util.keystr(path)
        )
    return worst


def _assert_metrics_close(got, want, rtol=RTOL):
    assert len(got) == len(want)
    worst = 0.0
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert sorted(g) == sorted(w), step
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=rtol, atol=rtol, err_msg=f"{step} {k}")
            worst = max(worst, abs(g[k] - w[k]) / max(abs(w[k]), 1e-6))
    return worst


# -- the 4 x 2 MLP bio pipeline: equivalence, collectives, memory, 500 ticks -------------


@pytest.fixture(scope="module")
def mlp_4x2():
    model = build_model("mlp", 10, "predsim", num_layers=4, num_hidden=32, dropout=0.2, bio=True)
    images, labels = data = _data(64)
    batches = [np.arange(i, i + 16, dtype=np.int32) for i in range(0, 64, 16)]
    tx = make_optimizer(1e-2, (1,), len(batches))  # lr drops after epoch 1
    state = _host_state(model, tx, images, labels)
    flat = sharding.make_mesh(8)
    c = dict(model=model, tx=tx, state=state, data=data, batches=batches, flat=flat)
    c["pipe"] = _mlp_pipeline(c, pl.make_pipeline_mesh(flat, 4))
    return c


def _mlp_pipeline(c, mesh):
    images, labels = c["data"]
    return pl.make_pipeline(
        c["model"],
        c["tx"],
        c["state"],
        mesh,
        sample=(images[:2], labels[:2]),
        batch_size=16,
        preprocess=_preprocess,
        seed=3,
        state_mesh=c["flat"],
    )


@needs_8
def test_mlp_bio_on_4_stages_x_2_equals_the_fused_step(mlp_4x2):
    c = mlp_4x2
    epochs = [c["batches"], c["batches"][::-1]]
    want_state, want = _fused(c["model"], c["tx"], c["state"], c["data"], epochs, 2)
    got_state, got = _pipelined(c["pipe"], c["state"], c["data"], epochs, c["flat"])
    assert c["pipe"].cuts == (1, 2, 3)
    metric_diff = _assert_metrics_close(got, want)
    state_diff = _assert_trees_close(got_state, want_state)
    print(f"mlp bio 4x2: max relative difference metrics {metric_diff:.2g}, state {state_diff:.2g}")
    assert int(got_state.step) == 8
    assert not np.allclose(want_state.params["output"]["dense"]["kernel"], 0.0)


def _groups(line: str, n_devices: int) -> list[list[int]]:
    """The device groups of one HLO collective (explicit or iota replica_groups)."""
    explicit = re.search(r"replica_groups=\{(\{[\d,]+\}(?:,\{[\d,]+\})*)\}", line)
    if explicit:
        return [[int(d) for d in g.split(",")] for g in re.findall(r"\{([\d,]+)\}", explicit[1])]
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if iota:
        shape = [int(d) for d in iota[3].split(",")]
        ids = np.arange(int(np.prod(shape))).reshape(shape)
        if iota[4]:
            ids = ids.transpose([int(d) for d in iota[4].split(",")])
        return ids.reshape(int(iota[1]), int(iota[2])).tolist()
    return [list(range(n_devices))]  # replica_groups={}: every device


@needs_8
def test_only_collective_permutes_cross_stages_and_state_memory_is_per_stage(mlp_4x2):
    pipe, flat = mlp_4x2["pipe"], mlp_4x2["flat"]
    images, labels = sharding.put_replicated(mlp_4x2["data"][:2], flat)
    state = sharding.put_replicated(mlp_4x2["state"], flat)
    buffers, carry = pipe.pack(state), pipe.init_carry(16)
    feed = pipe.put_feed(np.zeros((1, 16), np.int32), np.ones((1, 4), bool))
    compiled = pipe.tick.lower(buffers, carry, images, labels, *feed).compile()
    hlo = compiled.as_text()
    stage_of = {i: i // pipe.data_size for i in range(8)}  # partition id -> stage

    permutes = [line for line in hlo.splitlines() if " collective-permute(" in line]
    pairs = {
        (int(a), int(b))
        for line in permutes
        for a, b in re.findall(r"\{(\d+),(\d+)\}", line.split("source_target_pairs=")[1])
    }
    assert {(stage_of[a], stage_of[b]) for a, b in pairs} >= {(0, 1), (1, 2), (2, 3)}
    crossing = []
    for line in hlo.splitlines():
        op = re.search(r" (all-reduce|all-gather|reduce-scatter|all-to-all)(-start)?\(", line)
        if op and any(len({stage_of[d] for d in g}) > 1 for g in _groups(line, 8)):
            crossing.append(line.strip()[:200])
    assert not crossing, crossing  # no parameter (or any) all-reduce over the stage axis

    # per-device memory of the state: one stage's padded buffers, not the whole state
    memory = compiled.memory_analysis()
    others = jax.tree.leaves((carry, images, labels, feed))
    other_bytes = sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in others
    )
    per_device = memory.argument_size_in_bytes - other_bytes
    total = sum(x.nbytes for x in jax.tree.leaves(mlp_4x2["state"]))
    waste = pipe.padding_waste()
    fraction = per_device / total
    print(
        f"state per device {per_device} B of {total} B: {fraction:.3f} (1/S = 0.25), "
        f"padding waste {waste:.3f}"
    )
    assert per_device == pytest.approx(pipe.state_bytes_per_device(), rel=0.01)
    # all stages' buffers hold the whole state once (plus each stage's step counts)
    assert fraction * 4 * (1 - waste) == pytest.approx(1.0, rel=0.01)
    assert fraction < 0.7


@needs_8
def test_500_ticks_on_8_devices_finish(mlp_4x2):
    c = mlp_4x2
    flat, pipe = c["flat"], c["pipe"]
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 64, 16).astype(np.int32) for _ in range(497)]  # + 3 drain
    images, labels = sharding.put_replicated(c["data"][:2], flat)
    start = time.perf_counter()
    state, totals, n = pl.run_epoch(
        pipe, sharding.put_replicated(c["state"], flat), images, labels, batches, sync_every=16
    )
    print(f"500 ticks: {time.perf_counter() - start:.1f} s")
    assert n == 497 and int(state.step) == 497 and totals["count"] == 497 * 16
    assert np.isfinite(totals["objective"])


# -- a small VGG on 2 stages x 1 data device -----------------------------------------------


@needs_8
def test_small_vgg_on_2_stages_x_1_equals_the_fused_step():
    model = build_model("vgg6b", 10, "predsim", feat_mult=1 / 32, num_layers=0, dropout=0.2)
    images, labels = data = _data(32)
    batches = [np.arange(i, i + 16, dtype=np.int32) for i in (0, 16)]
    tx = make_optimizer(0.05, (1,), 2, optim="sgd", momentum=0.9)
    state = _host_state(model, tx, images, labels)
    flat = sharding.make_mesh(2)
    mesh = pl.make_pipeline_mesh(flat, 2)
    pipe = pl.make_pipeline(
        model,
        tx,
        state,
        mesh,
        sample=(images[:2], labels[:2]),
        batch_size=16,
        preprocess=_preprocess,
        seed=3,
        state_mesh=flat,
    )
    # FLOP-balanced (blocks 0-1 | 2-3: any other cut makes the largest stage larger)
    assert pipe.cuts == (2,) and pipe.plans[1].has_output
    assert 0.5 < pipe.stage_flops[0] / sum(pipe.stage_flops) < 0.7
    epochs = [batches, batches[::-1]]
    want_state, want = _fused(model, tx, state, data, epochs, 1)
    # 2 ticks per dispatch (a lax.scan): 2 batches + 1 drain tick + 1 tick with no batch
    got_state, got = _pipelined(pipe, state, data, epochs, flat, ticks_per_call=2)
    metric_diff = _assert_metrics_close(got, want)
    state_diff = _assert_trees_close(got_state, want_state)
    print(f"vgg 2x1: max relative difference metrics {metric_diff:.2g}, state {state_diff:.2g}")


# -- the training loop: metrics.jsonl, checkpoints, resume ----------------------------------


def _saved(workdir, epoch):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    try:
        return ckpt.restore_as_saved(epoch)
    finally:
        ckpt.close()


def _records_close(got, want):
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w)
        np.testing.assert_allclose([g[k] for k in w], [w[k] for k in w], rtol=RTOL, atol=RTOL)


def _restart_after_epoch_1(source, target):
    shutil.copytree(source, target)
    shutil.rmtree(os.path.join(target, "checkpoints", "2"))


@needs_8
def test_the_loop_pipelined_equals_fused_and_resumes_exactly_or_on_other_stages(
    tiny_config, tmp_path
):
    # 7 batches of 16 and a last one of 8 per epoch; the lr drops after epoch 1. SGD:
    # Adam would turn the rounding noise of the dense biases before BatchNorm into whole
    # steps (their true gradient is 0) and so move the BatchNorm means by ~1e-4.
    common = dict(
        num_layers=2,
        dropout=0.1,
        train_limit=120,
        epochs=2,
        milestones=(1,),
        optim="sgd",
        momentum=0.9,
        lr=0.05,
        num_devices=2,
    )
    fused = tiny_config(**common)
    piped = tiny_config(pipeline_stages=2, **common)  # 2 stages x 1 device
    train.train_and_evaluate(fused, str(tmp_path / "fused"))
    summary = train.train_and_evaluate(piped, str(tmp_path / "piped"))
    assert summary["steps"] == 16
    want, got = read_records(tmp_path / "fused"), read_records(tmp_path / "piped")
    _records_close(got, want)
    _assert_trees_close(_saved(tmp_path / "piped", 2), _saved(tmp_path / "fused", 2))

    # exact resume: from the pipelined run's epoch-1 checkpoint, with the same stages
    _restart_after_epoch_1(tmp_path / "piped", tmp_path / "again")
    train.train_and_evaluate(piped, str(tmp_path / "again"))
    assert read_records(tmp_path / "again") == got
    _assert_trees_close(_saved(tmp_path / "again", 2), _saved(tmp_path / "piped", 2), exact=True)

    # the same checkpoint resumed with another stage count (here 1: the fused step; the
    # checkpoint holds the ordinary TrainState, which each stage count lays out anew)
    _restart_after_epoch_1(tmp_path / "piped", tmp_path / "other")
    train.train_and_evaluate(fused, str(tmp_path / "other"))
    _records_close(read_records(tmp_path / "other"), want)
    _assert_trees_close(_saved(tmp_path / "other", 2), _saved(tmp_path / "fused", 2))
    with open(tmp_path / "other" / "summary.json") as f:
        assert json.load(f)["resumed_from_epoch"] == 1


@needs_8
def test_a_state_laid_out_on_any_stage_count_unpacks_to_itself(mlp_4x2):
    c = mlp_4x2
    state = sharding.put_replicated(c["state"], c["flat"])
    for s in (2, 4):  # 2 x 4 and 4 x 2 over the same 8 devices
        mesh = pl.make_pipeline_mesh(c["flat"], s)
        pipe = c["pipe"] if s == 4 else _mlp_pipeline(c, mesh)
        buffers = pipe.pack(state)
        assert all(b.sharding.spec[0] == pl.STAGE for b in buffers.values())
        assert {d for b in buffers.values() for d in b.sharding.device_set} == set(jax.devices())
        _assert_trees_close(jax.device_get(pipe.unpack(buffers)), c["state"], exact=True)


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(loss="backprop"), r"backprop baseline .* pipeline_stages=1"),
        (dict(detach=False), r"deep supervision \(detach=False\)"),
        (dict(num_layers=2, pipeline_stages=3), r"exceeds the network's 2 blocks"),
        (dict(pipeline_cuts=(2, 1)), r"pipeline_cuts=\(2, 1\) must be 1 block index in"),
        (dict(pipeline_stages=0), r"pipeline_stages=0 must be an integer >= 1"),
        (dict(data_pipeline="stream"), r"data_pipeline=stream: the pipeline feeds"),
    ],
)
def test_what_cannot_be_pipelined_is_refused_in_validate(tiny_config, tmp_path, overrides, message):
    config = tiny_config(**{"pipeline_stages": 2, **overrides})
    with pytest.raises(ConfigError, match=message) as error:
        validate(config, str(tmp_path))
    assert "\n" not in str(error.value)


@needs_8
@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_layers=3, pipeline_stages=3), r"pipeline_stages=3 does not divide the 8 devices"),
        (dict(batch_size=6, pipeline_stages=2), r"batch_size=6 does not divide over the 4 data"),
    ],
)
def test_devices_and_batches_that_do_not_divide_are_refused_before_training(
    tiny_config, tmp_path, overrides, message
):
    with pytest.raises(ConfigError, match=message) as error:
        train.train_and_evaluate(tiny_config(num_devices=8, **overrides), str(tmp_path))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_make_pipeline_refuses_networks_without_cuts():
    state = jax.ShapeDtypeStruct((), jnp.int32)  # refused before the state is read
    mesh = pl.make_pipeline_mesh(jax.devices()[:1], 1)
    for model in (
        build_model("mlp", 10, "backprop", num_layers=2, num_hidden=8),
        build_model("mlp", 10, "predsim", num_layers=2, num_hidden=8, detach=False),
    ):
        with pytest.raises(ConfigError, match=r"cannot train on separate devices"):
            pl.make_pipeline(model, None, state, mesh, sample=(None, None), batch_size=2)


# -- balancing and counting -----------------------------------------------------------------


def test_balance_cuts_minimises_the_largest_stage_and_plans_keep_layers_in_order():
    assert stages.balance_cuts([1, 1, 1, 1], 2) == (2,)
    assert stages.balance_cuts([4, 1, 1, 1, 1], 2) == (1,)
    assert stages.balance_cuts([1, 1, 1, 1], 2, tail=2.5) == (3,)  # the output layer counts
    assert stages.balance_cuts([5, 1, 1, 5], 3) == (1, 3)
    assert stages.balance_cuts([3, 2, 1], 3) == (1, 2)
    model = build_model("vgg6b", 10, "predsim", feat_mult=1 / 32, num_hidden=8)
    plans = stages.plan_stages(model, (2, 4))
    names = [name for name, _ in model.named_layers()]
    assert [n for p in plans for n, _ in p.layers] == names  # every layer exactly once
    assert [p.block_indices for p in plans] == [(0, 1), (2, 3), (4,)]
    assert plans[0].layers[-1][0] is None  # the pool after block 1 runs before the cut
    assert [p.has_output for p in plans] == [False, False, True]


def test_jaxpr_flops_counts_matmuls_and_convolutions():
    a, b = jnp.zeros((8, 16)), jnp.zeros((16, 4))
    assert stages.jaxpr_flops(jax.make_jaxpr(jnp.matmul)(a, b)) == 2 * 8 * 16 * 4
    x, w = jnp.zeros((2, 6, 6, 3)), jnp.zeros((3, 3, 3, 5))

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    assert stages.jaxpr_flops(jax.make_jaxpr(conv)(x, w)) == 2 * (2 * 6 * 6 * 5) * (3 * 3 * 3)
    # a gradient counts its backward matmuls too; jitted sub-jaxprs are entered
    grad = jax.make_jaxpr(jax.grad(lambda a: jnp.sum(jax.jit(jnp.matmul)(a, b))))(a)
    assert stages.jaxpr_flops(grad) == 2 * (2 * 8 * 16 * 4)


def test_bubble_fraction_counts_fill_drain_and_imbalance():
    from localjax.perf.pipeline_timing import bubble_fraction

    # stages of 1 s in a tick of 1 s: only the fill and drain idle, (S - 1) / (n + S - 1)
    assert bubble_fraction([1.0, 1.0], 1.0, 9) == pytest.approx(1 / 10)
    # the same stages run one after the other (fake devices sharing cores): about 1 - 1/S
    assert bubble_fraction([1.0, 1.0], 2.0, 9) == pytest.approx(1 - 9 / 20)
    # an imbalanced pair: the tick waits for the slower stage
    assert bubble_fraction([1.0, 3.0], 3.0, 1000) == pytest.approx(1 - 4000 / (6 * 1001))
