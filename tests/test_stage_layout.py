"""The slot layout of pipeline stages' state and the message between stages
(localjax/training/stage_layout.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from localjax.training import stage_layout as sl


def _stage(seed, shapes, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {f"w{i}": rng.standard_normal(shape).astype(dtype) for i, shape in enumerate(shapes)}


def test_equal_shapes_share_slots_without_padding():
    big = (sl.SMALL, 2)
    stages = [_stage(0, [big, big, (3,)]), _stage(1, [big, big, (5,), (2, 2)])]
    layout = sl.StageLayout(stages)
    large = {k: v for k, v in layout.lengths.items() if not k.endswith("small")}
    assert list(large.values()) == [2 * sl.SMALL] * 2  # one slot per big leaf, no padding
    assert layout.lengths["float32/small"] == 9  # the larger stage's small leaves
    assert layout.padding_waste() == pytest.approx(6 * 4 / (2 * layout.bytes_per_stage()))


def test_pack_unpack_round_trip_for_different_stages():
    stages = [
        {"a": _stage(0, [(sl.SMALL + 7,), (4, 3)]), "step": np.int32(3)},
        {"b": _stage(1, [(sl.SMALL, 3), (sl.SMALL + 1,), (2,)]), "step": np.int32(5)},
    ]
    layout = sl.StageLayout(stages)
    for s, tree in enumerate(stages):
        rows = layout.pack(s, tree)
        assert set(rows) == set(layout.lengths)
        assert all(rows[k].shape == (n,) for k, n in layout.lengths.items())
        back = layout.unpack(s, rows)
        for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
    # stage 0's (SMALL + 7) vector pairs with stage 1's largest leaf, padded to it
    assert layout.used[0] < layout.bytes_per_stage()
    assert 0 < layout.padding_waste() < 1


def test_pack_unpack_under_jit():
    stages = [_stage(0, [(sl.SMALL, 2)]), _stage(1, [(sl.SMALL,), (3,)])]
    layout = sl.StageLayout(stages)
    rows = jax.jit(lambda t: layout.pack(1, t))(stages[1])
    back = jax.jit(lambda r: layout.unpack(1, r))(rows)
    np.testing.assert_array_equal(back["w0"], stages[1]["w0"])
    np.testing.assert_array_equal(back["w1"], stages[1]["w1"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_message_round_trip_is_bit_exact(dtype):
    act = jax.random.normal(jax.random.key(0), (6, 5)).astype(dtype)
    act = act.at[0, 0].set(jnp.nan).at[1, 1].set(-0.0)
    labels = jnp.array([0, 9, 3, -1, 2**31 - 1, 7], jnp.int32)
    msg = jax.jit(sl.to_message)(act, labels)
    assert msg.dtype == jnp.uint8
    assert msg.shape == (6, sl.message_width(5, dtype, jnp.int32))
    got_act, got_labels = sl.from_message(msg, 5, dtype, jnp.int32)
    assert got_act.dtype == dtype and got_labels.dtype == jnp.int32
    np.testing.assert_array_equal(
        jax.lax.bitcast_convert_type(got_act, jnp.uint8),
        jax.lax.bitcast_convert_type(act, jnp.uint8),
    )
    np.testing.assert_array_equal(got_labels, labels)


def test_flat_activation_round_trip():
    h = (jnp.arange(24.0).reshape(2, 3, 4), jnp.ones((2, 5), jnp.bfloat16))
    width = sl.flat_width(h)
    assert width == 17
    flat = sl.to_flat(h, width + 3, jnp.float32)
    assert flat.shape == (2, 20)
    back = sl.from_flat(flat, h)
    np.testing.assert_array_equal(back[0], h[0])
    assert back[1].dtype == jnp.bfloat16


def test_schedule_fills_and_drains():
    from types import SimpleNamespace

    from localjax.training.pipeline import Pipeline

    # 3 stages, 4 batches: stage s holds batch t - s
    valid = Pipeline.schedule(SimpleNamespace(num_stages=3), range(7), 4)
    want = np.array(
        [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], bool
    )
    np.testing.assert_array_equal(valid, want)
