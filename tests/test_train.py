"""The training run: learning-rate milestones, epoch order, the output contract, and a
one-epoch smoke run of every Fashion-MNIST config (shrunk) on real data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import fashion_mnist
from localjax import data
from localjax.training import loop as train
from localjax.training import optimizer as step

FMNIST = data.DEBIAN_FASHION_MNIST
needs_fmnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz")),
    reason=f"real Fashion-MNIST not in {FMNIST}: apt-get install -y dataset-fashion-mnist",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_milestone_schedule_lowers_rate_from_the_epoch_after_each_milestone():
    spe, milestones = 3, (2, 4)
    schedule = step.milestone_schedule(1.0, milestones, spe)
    for epoch in range(1, 7):
        want = step.epoch_learning_rate(1.0, milestones, epoch)
        for count in range((epoch - 1) * spe, epoch * spe):  # the epoch's update numbers
            assert float(schedule(count)) == pytest.approx(want), (epoch, count)
    assert [step.epoch_learning_rate(1.0, milestones, e) for e in (1, 2, 3, 4, 5)] == [
        1.0,
        1.0,
        0.25,
        0.25,
        0.0625,
    ]


def test_epoch_batches_cover_every_example_once_and_keep_the_last_partial_batch():
    batches = data.epoch_batches(1000, 128, seed=3, epoch=2)
    assert [len(b) for b in batches] == [128] * 7 + [104]
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    again = data.epoch_batches(1000, 128, seed=3, epoch=2)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))
    other = data.epoch_batches(1000, 128, seed=3, epoch=3)
    assert not (batches[0] == other[0]).all()


def shrunk(row, tmp_path):
    c = fashion_mnist.get_config(row)
    c.epochs, c.train_limit, c.batch_size = 1, 96, 32
    c.num_hidden, c.progress_bar, c.data_dir = 32, False, FMNIST
    c.test_limit, c.eval_batch_size = 64, 64
    if c.model != "mlp":
        c.feat_mult = 1 / 16
    return c


# every row builds and initialises in test_configs.py; these train one epoch on real data:
# the four MLP rows and VGG8b's backprop and predsim rows; the predsim one is the cutout row
# (shrunk to the same width, it is vgg8b_predsim plus its own augmentation path)
SMOKE_ROWS = [
    "mlp_backprop",
    "mlp_pred",
    "mlp_sim",
    "mlp_predsim",
    "vgg8b_backprop",
    "vgg8b_x2_predsim_cutout",
]


@needs_fmnist
@pytest.mark.parametrize("row", SMOKE_ROWS)
def test_one_epoch_smoke_run_of_each_config(row, tmp_path):
    summary = train.train_and_evaluate(shrunk(row, tmp_path), str(tmp_path))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    for key in (
        "epoch",
        "lr",
        "train_loss",
        "train_error",
        "test_loss",
        "test_error",
        "epoch_seconds",
    ):
        assert np.isfinite(record[key]), key
    n_blocks = 3 if row.startswith("mlp") else 7
    if not row.endswith("backprop"):
        for i in range(n_blocks):
            assert np.isfinite(record[f"local_loss/block_{i}"])
            if "sim" != row.split("_")[-1]:
                assert 0 <= record[f"local_error/block_{i}"] <= 100
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["final_test_error"] == summary["final_test_error"] == record["test_error"]
    assert saved["params_inference"] <= saved["params_total"]
    assert saved["config"]["model"] == fashion_mnist.ROWS[row][0]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_data_stops_with_a_message_not_a_traceback(tmp_path):
    res = run_cli(
        "--config=experiments/configs/fashion_mnist.py:mlp_predsim",
        f"--workdir={tmp_path}",
        f"--config.data_dir={tmp_path / 'nowhere'}",
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "looked in" in res.stderr and "apt-get install -y dataset-fashion-mnist" in res.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--config.foo=1"], "unknown config field 'foo' in --config.foo; fields are ["),
        (["--config.num_hidden=abc"], "flag --config.num_hidden=abc: invalid literal"),
        (["--nosuchflag"], "Unknown command line flag 'nosuchflag'"),
    ],
)
def test_flag_mistakes_stop_with_one_line_not_a_traceback(tmp_path, flags, message):
    res = run_cli(
        "--config=experiments/configs/fashion_mnist.py:mlp_predsim", f"--workdir={tmp_path}", *flags
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and message in res.stderr, res.stderr


@pytest.mark.parametrize(
    "config, message",
    [
        ("experiments/configs/fmnist.py:mlp_predsim", "config file not found: experiments/confi"),
        ("experiments/configs/fashion_mnist.py:mlp_x", "unknown fashion_mnist row 'mlp_x'; choose"),
    ],
)
def test_config_file_mistakes_stop_with_one_line(tmp_path, config, message):
    res = run_cli(f"--config={config}", f"--workdir={tmp_path}")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and message in res.stderr, res.stderr


@needs_fmnist
def test_cli_prints_one_line_per_epoch(tmp_path):
    res = run_cli(
        "--config=experiments/configs/fashion_mnist.py:mlp_predsim",
        f"--workdir={tmp_path}",
        "--config.epochs=2",
        "--config.train_limit=256",
        "--config.num_hidden=32",
    )
    assert res.returncode == 0, res.stderr
    epochs = [ln for ln in res.stdout.splitlines() if ln.startswith("epoch")]
    assert len(epochs) == 2 and "test" in epochs[0] and "error" in epochs[0]
