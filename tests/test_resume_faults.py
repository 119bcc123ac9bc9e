"""Faults new users meet around resuming: an unreadable newest checkpoint, a checkpoint of
other shapes, two runs in one workdir, TensorBoard events after kills, a non-finite loss
with or without a checkpoint, a resume onto other data, another dataset's files, and a
full disk while saving."""

import errno
import glob
import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
from conftest import (
    cli,
    make_tiny_config,
    nan_rate_from_update,
    read_records,
    read_workdir_event_scalars,
)

from localjax import data as data_lib
from localjax.data import fingerprint
from localjax.errors import ConfigError, DatasetError, TrainingError
from localjax.training import loop as train
from localjax.training.checkpoints import Checkpointer

RUN = dict(epochs=4, checkpoint_every=1, keep=3)


@pytest.fixture(scope="module")
def reference(tiny_data_dir, tmp_path_factory):
    """metrics.jsonl records (without wall-clock fields) of an uninterrupted 4-epoch run."""
    workdir = tmp_path_factory.mktemp("reference")
    train.train_and_evaluate(make_tiny_config(tiny_data_dir, **RUN), str(workdir))
    return read_records(workdir)


def _damage(checkpoint: str) -> None:
    """Truncates the largest file of a checkpoint's arrays, as a disk fault or an
    interrupted copy would leave it."""
    files = [
        os.path.join(d, f)
        for d, _, names in os.walk(os.path.join(checkpoint, "state"))
        for f in names
    ]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 3)


def assert_events_match_metrics(workdir) -> None:
    """Every numeric metrics.jsonl value is in the event files exactly once, and nothing
    else is: TensorBoard shows what metrics.jsonl holds."""
    with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    want: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                want.setdefault(k, []).append((r["epoch"], v))
    got = read_workdir_event_scalars(workdir)
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in sorted(got[tag])] == [s for s, _ in points], tag
        np.testing.assert_allclose(
            [v for _, v in sorted(got[tag])], [v for _, v in points], rtol=1e-6, err_msg=tag
        )


# ---------------------------------------------------------------- 1. unreadable checkpoint
def test_an_unreadable_newest_checkpoint_is_skipped_with_one_line_and_an_older_one_resumed(
    tiny_config, tmp_path, reference
):
    train.train_and_evaluate(tiny_config(**{**RUN, "epochs": 3}), str(tmp_path))
    _damage(str(tmp_path / "checkpoints" / "3"))
    proc = cli(tiny_config(**RUN), tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
    skipped = [line for line in out.splitlines() if "checkpoint 3" in line]
    assert len(skipped) == 1, out
    assert "cannot be read" in skipped[0] and "resuming from checkpoint 2" in skipped[0]
    assert "different model" not in out + err
    # the damaged checkpoint is kept aside, not deleted; epochs 3 and 4 were trained again
    assert os.path.isdir(tmp_path / "unreadable_checkpoints" / "3")
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    assert ckpt.epochs() == [2, 3, 4]
    ckpt.close()
    # each epoch's metrics once, equal to an uninterrupted run's; TensorBoard agrees
    assert read_records(tmp_path) == reference
    assert_events_match_metrics(tmp_path)


def test_no_readable_checkpoint_is_refused_naming_each_and_changing_nothing(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config(epochs=2, checkpoint_every=1), str(tmp_path))
    for epoch in ("1", "2"):
        _damage(str(tmp_path / "checkpoints" / epoch))
    with pytest.raises(ConfigError, match=r"no checkpoint in .* can be read: 2 \(.*; 1 \(") as e:
        train.train_and_evaluate(tiny_config(epochs=3, checkpoint_every=1), str(tmp_path))
    assert "\n" not in str(e.value)
    # the reason names the damaged file, not the repr of Orbax's TensorStore
    assert "TensorStore(" not in str(e.value) and 'Error reading "' in str(e.value)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    assert [r["epoch"] for r in read_records(tmp_path)] == [1, 2]


def test_a_checkpoint_of_other_shapes_blames_the_model_not_the_run(tiny_config, tmp_path):
    config = tiny_config(epochs=1)
    train.train_and_evaluate(config, str(tmp_path))
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=3)
    meta, saved = ckpt.restore_meta(1), ckpt.restore_as_saved(1)
    ckpt.close()

    def rewrite(state):
        shutil.rmtree(tmp_path / "checkpoints" / "1")
        writer = Checkpointer(str(tmp_path / "checkpoints"), keep=3)
        writer.save(1, state, meta)
        writer.close()

    kernel = saved["params"]["output"]["dense"]["kernel"]  # [32, 10]
    saved["params"]["output"]["dense"]["kernel"] = np.zeros((32, 11), kernel.dtype)
    rewrite(saved)
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))
    message = str(e.value)
    assert "params/output/dense/kernel has shape [32, 11] in the checkpoint but [32, 10]" in message
    assert "model code changed" in message and "different run" not in message

    saved["params"]["output"]["dense"]["kernel"] = kernel
    saved["params"]["extra"] = {"w": np.ones(3, np.float32)}
    rewrite(saved)
    with pytest.raises(ConfigError, match=r"the checkpoint has params/extra/w \[3\], the model"):
        train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))


# ---------------------------------------------------------------- 2. two runs, one workdir
def test_a_second_run_in_the_same_workdir_stops_naming_the_first_and_a_killed_run_frees_it(
    tiny_config, tmp_path
):
    config = tiny_config(epochs=10_000, checkpoint_every=1)
    proc = cli(config, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for line in proc.stdout:
            if line.startswith("epoch"):
                break
        with pytest.raises(TrainingError) as e:  # (unlocked, it would resume and return)
            train.train_and_evaluate(tiny_config(epochs=1, checkpoint_every=1), str(tmp_path))
        message = str(e.value)
        assert f"pid {proc.pid}" in message and str(tmp_path) in message, message
        assert "\n" not in message
        assert proc.poll() is None  # the first run goes on
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    # SIGKILL released the lock: a new run resumes the killed one's checkpoint
    resumed = train.train_and_evaluate(tiny_config(epochs=1, checkpoint_every=1), str(tmp_path))
    assert resumed["resumed_from_epoch"] >= 1
    with open(tmp_path / "metrics.jsonl") as f:
        epochs = [json.loads(line)["epoch"] for line in f]  # every line whole
    assert epochs == list(range(1, len(epochs) + 1))


# ---------------------------------------------------------------- 3. TensorBoard after kills
def test_tensorboard_events_are_rebuilt_from_metrics_jsonl_on_resume(tiny_config, tmp_path):
    from tensorboardX import SummaryWriter

    train.train_and_evaluate(tiny_config(epochs=2, checkpoint_every=1), str(tmp_path))
    # a killed run's leftovers: epoch 3 trained past the checkpoint (a whole event record
    # and a torn metrics line) and part of epoch 4's scalars, in an event file of its own
    killed = SummaryWriter(logdir=str(tmp_path), filename_suffix=".killed")
    for tag in ("test_error", "train_loss", "local_error/block_0"):
        killed.add_scalar(tag, 99.0, global_step=3)
    killed.add_scalar("test_error", 98.0, global_step=4)
    killed.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "test_error": 99.0}) + "\n" + '{"epoch": 4, "te')
    train.train_and_evaluate(tiny_config(epochs=3, checkpoint_every=1), str(tmp_path))
    assert [r["epoch"] for r in read_records(tmp_path)] == [1, 2, 3]
    assert_events_match_metrics(tmp_path)
    assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 1


# ---------------------------------------------------------------- 4. non-finite loss
def test_a_non_finite_loss_before_any_checkpoint_says_nothing_is_kept(
    tiny_config, tmp_path, monkeypatch
):
    nan_rate_from_update(monkeypatch, 0)  # the second step's loss is the first NaN
    with pytest.raises(TrainingError) as e:
        train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))
    message = str(e.value)
    assert "step 2 (epoch 1, batch 2 of 8)" in message and "\n" not in message
    assert "No checkpoint has been written yet" in message and "is kept" not in message
    assert "--config.lr=0.0005" in message
    # the advice works: the same workdir with a lower rate starts over
    monkeypatch.undo()
    again = train.train_and_evaluate(tiny_config(epochs=1, lr=5e-4), str(tmp_path))
    assert again["resumed_from_epoch"] == 0


def test_a_non_finite_loss_after_a_checkpoint_names_it_and_gives_commands_that_work(
    tiny_config, tmp_path, monkeypatch
):
    nan_rate_from_update(monkeypatch, 8)  # epoch 2's first update: step 10's loss is NaN
    with pytest.raises(TrainingError) as e:
        train.train_and_evaluate(tiny_config(epochs=3), str(tmp_path))
    message = str(e.value)
    assert "newest checkpoint, of epoch 1, is kept" in message and "\n" not in message
    new_workdir = f"--workdir={tmp_path}_lr0.0005 --config.lr=0.0005"
    assert new_workdir in message and "rerun the same command unchanged" in message
    monkeypatch.undo()
    # a lower rate in this workdir is refused (lr is part of the run), as the message says
    with pytest.raises(ConfigError, match="different run: lr"):
        train.train_and_evaluate(tiny_config(epochs=3, lr=5e-4), str(tmp_path))
    # ... while the unchanged command resumes from epoch 1
    resumed = train.train_and_evaluate(tiny_config(epochs=2), str(tmp_path))
    assert resumed["resumed_from_epoch"] == 1


# ---------------------------------------------------------------- 5. other data
def test_a_resume_onto_other_data_is_refused_but_moved_files_resume(
    tiny_data_dir, tiny_config, tmp_path
):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(epochs=1), workdir)
    moved, other = tmp_path / "moved", tmp_path / "other"
    shutil.copytree(tiny_data_dir, moved)
    shutil.copytree(tiny_data_dir, other)
    images = other / "train-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    raw[16 + 300] ^= 0xFF  # one pixel of the first training image
    images.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=r"was trained on other data .* train ") as e:
        train.train_and_evaluate(make_tiny_config(str(other), epochs=2), workdir)
    assert "test " not in str(e.value).split("fingerprints:")[1]  # only train differs
    # the same files elsewhere: data_dir may change on a resume
    resumed = train.train_and_evaluate(make_tiny_config(str(moved), epochs=2), workdir)
    assert resumed["resumed_from_epoch"] == 1


def test_fingerprints_change_with_any_value_and_only_then():
    a = (np.zeros((4, 2, 2, 1), np.uint8), np.arange(4, dtype=np.int32))
    b = (a[0].copy(), a[1].copy())
    assert fingerprint.fingerprints({"x": a}) == fingerprint.fingerprints({"x": b})
    b[0][3, 1, 1, 0] = 1
    assert fingerprint.fingerprints({"x": a}) != fingerprint.fingerprints({"x": b})


needs_debian_fmnist = pytest.mark.skipif(
    not os.path.isdir(data_lib.DEBIAN_FASHION_MNIST),
    reason="Debian's dataset-fashion-mnist is not installed",
)


@needs_debian_fmnist
def test_fashion_mnist_files_are_refused_as_mnist_and_pass_as_themselves(caplog):
    with pytest.raises(DatasetError, match=r"fashion_mnist's published t10k-images-idx3-ubyte"):
        data_lib.load("mnist", "test", data_lib.DEBIAN_FASHION_MNIST, source="files")
    caplog.clear()
    test = data_lib.load("fashion_mnist", "test", data_lib.DEBIAN_FASHION_MNIST, source="files")
    assert len(test) == 10_000
    assert not [r for r in caplog.records if "published" in r.getMessage()]


def test_files_that_differ_from_the_published_ones_warn_in_one_line(tiny_data_dir, caplog):
    caplog.set_level("WARNING")
    data_lib.load("fashion_mnist", "test", tiny_data_dir, source="files")
    warnings = [r.getMessage() for r in caplog.records if "published" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "t10k-images-idx3-ubyte" in warnings[0] and "fashion_mnist" in warnings[0]
    caplog.clear()
    data_lib.load("mnist", "test", tiny_data_dir, source="files")  # no published checksums
    assert not [r for r in caplog.records if "published" in r.getMessage()]


def test_published_checksums_match_debians_fashion_mnist_files():
    """The table's sha256s are those of the decompressed Debian files (where installed)."""
    for file, (sha256, md5) in fingerprint.PUBLISHED["fashion_mnist"].items():
        assert len(sha256) == 64 and len(md5) == 32
        path = os.path.join(data_lib.DEBIAN_FASHION_MNIST, file + ".gz")
        if os.path.exists(path):
            assert fingerprint.idx_sha256(data_lib.read_idx(path)) == sha256, file


# ---------------------------------------------------------------- 6. full disk
@pytest.mark.parametrize("fail_epoch", [1, 2])
def test_a_full_disk_while_saving_stops_with_one_line_and_the_run_resumes(
    tiny_config, tmp_path, monkeypatch, reference, fail_epoch
):
    save = Checkpointer.save

    def full_disk_save(self, epoch, state, meta):
        if epoch == fail_epoch:
            # as TensorStore reports it: an error whose cause is the OS's
            raise ValueError("writing the checkpoint failed") from OSError(
                errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints")
            )
        return save(self, epoch, state, meta)

    monkeypatch.setattr(Checkpointer, "save", full_disk_save)
    config = tiny_config(**RUN)
    with pytest.raises(TrainingError) as e:
        train.train_and_evaluate(config, str(tmp_path))
    message = str(e.value)
    assert "\n" not in message and "No space left on device" in message
    assert f"checkpoint of epoch {fail_epoch}" in message
    if fail_epoch == 1:
        assert "No earlier checkpoint exists" in message
    else:
        assert "previous checkpoint, of epoch 1, is intact" in message
        assert "resumes from epoch 1" in message
    monkeypatch.undo()
    resumed = train.train_and_evaluate(config, str(tmp_path))
    assert resumed["resumed_from_epoch"] == fail_epoch - 1
    assert read_records(tmp_path) == reference


def test_a_plain_oserror_while_saving_is_one_line_too(tiny_config, tmp_path, monkeypatch):
    def read_only_save(self, epoch, state, meta):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Checkpointer, "save", read_only_save)
    with pytest.raises(TrainingError, match=r"Read-only file system\. No earlier checkpoint"):
        train.train_and_evaluate(tiny_config(epochs=1), str(tmp_path))


def test_a_checkpoint_from_before_the_optimizer_switches_resumes_with_their_defaults():
    """Checkpoints written before `optim`, `momentum`, `weight_decay`, `n_holes`,
    `similarity_std`, `pre_act` and `no_batch_norm` existed were trained as those defaults
    train: they resume; another value is refused."""
    from experiments.configs import default
    from localjax.training.resume import LEGACY_VALUES, _resume_mismatch

    defaults = default.get_config()
    assert {k: defaults[k] for k in LEGACY_VALUES} == LEGACY_VALUES  # the defaults train so
    old = {"lr": 5e-4, "loss": "predsim"}
    assert _resume_mismatch(old, {**old, **LEGACY_VALUES}) == []
    assert _resume_mismatch(old, {**old, **LEGACY_VALUES, "optim": "sgd"}) == [
        "optim (checkpoint 'adam', now 'sgd')"
    ]
