"""The pipeline's cost model and byte counts (localjax/perf/pipeline_cost.py): pure
functions, no compilation, no timing."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from localjax.perf import pipeline_cost as pc

HLO = """
  %ppermute.9 = f32[128,1024]{1,0} collective-permute(%x), channel_id=1, source_target_pairs={{0,1}}
  %ppermute.10 = s32[128]{0} collective-permute(%y), channel_id=1, source_target_pairs={{0,1}}
  %ppermute.11 = pred[] collective-permute(%v), channel_id=1, source_target_pairs={{0,1}}
  %all-reduce.70 = (f32[128]{0}, f32[128,784]{1,0}) all-reduce(%a, %b), channel_id=9, to_apply=%add
  %all-gather.1 = f32[10,128]{0,1} all-gather(%c), channel_id=4, dimensions={1}
  %ars = (f32[256]{0}, f32[256]{0}) all-reduce-start(%d), channel_id=5, to_apply=%add
  %ard = f32[256]{0} all-reduce-done(%ars)
  %add.1 = f32[128]{0} add(%e, %f)
"""


def test_hlo_collectives_count_each_once_with_its_operand_bytes():
    ops = pc.collective_bytes_by_op(HLO)
    assert ops["collective-permute"] == {"count": 3, "bytes": 128 * 1024 * 4 + 128 * 4 + 1}
    assert ops["all-reduce"] == {"count": 2, "bytes": (128 + 128 * 784) * 4 + 256 * 4}
    assert ops["all-gather"] == {"count": 1, "bytes": 10 * 128 * 4}
    assert set(ops) == {"collective-permute", "all-reduce", "all-gather"}


def test_ring_allreduce_and_pipeline_bytes():
    assert pc.ring_allreduce_bytes(100.0, 1) == 0.0
    assert pc.ring_allreduce_bytes(100.0, 2) == 100.0
    assert pc.ring_allreduce_bytes(100.0, 4) == 150.0
    pipe = SimpleNamespace(
        num_stages=3,
        data_size=2,
        act_dtype=np.float32,
        label_dtype=np.int32,
        act_width=100,
        cut_widths=(100, 50),
    )
    sent = pc.pipeline_send_bytes(pipe, batch_size=8)
    assert sent["cut_bytes"] == [3200, 1600]
    assert sent["per_sender"] == (3200 + 32) / 2  # padded activation and labels, one message
    assert sent["per_device_mean"] == pytest.approx(sent["per_sender"] * 2 / 3)
    assert sent["padding_fraction"] == pytest.approx(0.25)


def test_fit_link_and_predict():
    sizes = [4096, 65536, 1 << 20, 1 << 24]
    alpha, beta = pc.fit_link(sizes, [2e-4 + s / 1e9 for s in sizes])
    assert alpha == pytest.approx(2e-4) and beta == pytest.approx(1e9)
    with pytest.raises(ValueError):
        pc.fit_link([10, 10], [1.0, 2.0])
    p = pc.predict_pipeline(
        [0.05, 0.04], 1e6, 1e-4, 1e9, 128, messages=3, batches_per_epoch=9, fused_seconds=0.09
    )
    assert p["comm_s"] == pytest.approx(3e-4 + 1e-3)
    assert p["tick_s"] == pytest.approx(0.05 + 1.3e-3)
    assert p["speedup"] == pytest.approx(0.09 / p["tick_s"])
    assert p["epoch_speedup"] == pytest.approx(p["speedup"] * 9 / 10)
    assert p["bound"] == pytest.approx(1.8)
    one = pc.predict_pipeline([0.09], 1e6, 1e-4, 1e9, 128)
    assert one["comm_s"] == 0.0 and one["speedup"] == 1.0 and one["epoch_speedup"] is None
    assert pc.link_seconds(1e6, 1e-4, math.inf) == 1e-4


def test_ideal_speedup_from_flops():
    # the VGG8b counts of docs/pipeline.md (10^11 FLOPs per block)
    vgg = [1.18, 6.19, 1.93, 6.19, 1.93, 0.48, 0.02]
    two, cuts2 = pc.ideal_speedup(vgg, 2)
    four, cuts4 = pc.ideal_speedup(vgg, 4)
    assert cuts2 == (3,) and two == pytest.approx(sum(vgg) / 9.30)
    assert cuts4 == (2, 3, 4) and four == pytest.approx(sum(vgg) / (1.18 + 6.19))
