"""Multi-host: two processes joined by `jax.distributed` on 127.0.0.1 (CPU collectives),
one device each, train like one process with two devices. Both are given one workdir (a
file system both reach, as on a cluster): process 0 alone prints and writes metrics,
TensorBoard events and the summary; each process writes its own shards of every
checkpoint into the shared `checkpoints/`, and on resume reads them back itself."""

import glob
import json
import os
import socket
import subprocess

import numpy as np
from conftest import cli, make_tiny_config, read_records
from test_resume_faults import _damage

from localjax.training import loop as train
from localjax.training import streamed
from localjax.training.checkpoints import Checkpointer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(tiny_data_dir, workdir, returncode=0, script=None, **overrides):
    """Runs the job as 2 processes of 1 CPU device each, both on `workdir` (or on
    `workdir[i]`), expecting `returncode` from both (None: any); returns their (stdout,
    stderr). `script`: a file run instead of `experiments.train` (it starts that itself)."""
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    if script is not None:
        env["PYTHONPATH"] = os.getcwd()
    procs = []
    for pid in range(2):
        c = make_tiny_config(
            tiny_data_dir,
            coordinator_address=address,
            num_processes=2,
            process_id=pid,
            **overrides,
        )
        where = workdir[pid] if isinstance(workdir, (list, tuple)) else workdir
        procs.append(cli(c, where, script, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert returncode is None or p.returncode == returncode, err[-3000:]
    return outputs


def _saved(workdir, epoch):
    """A checkpoint's arrays as NumPy, read in this (8-device) test process."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    try:
        return ckpt.restore_as_saved(epoch)
    finally:
        ckpt.close()


def test_two_processes_share_one_checkpoint_dir_resume_exactly_and_agree_with_one(
    tiny_data_dir, tmp_path
):
    run, common = tmp_path / "run", dict(epochs=2, checkpoint_every=1, keep=3)
    first = _run_two_processes(tiny_data_dir, run, **common)
    assert "2 device(s) in 2 process(es)" in first[0][0]
    assert "epoch" not in first[1][0]  # process 1 prints no progress ...
    # ... nor writes metrics or events: one line per epoch, one event file
    records = read_records(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert len(glob.glob(str(run / "events.out.tfevents.*"))) == 1
    # each process wrote its part of the checkpoint, into the one shared directory
    for pid in (0, 1):
        assert os.path.isdir(run / "checkpoints" / "2" / "state" / "array_metadatas")
        assert os.listdir(run / "checkpoints" / "2" / "state" / f"ocdbt.process_{pid}"), pid
    saved = _saved(run, 2)

    # checkpoint 2 damaged: both processes fail to read it and agree to pass it over
    # (reads go to Orbax's handlers, which hold no barrier a failed read could leave the
    # other process waiting at), read their shards of checkpoint 1 and train epoch 2
    # again: exactly the first run's metrics and arrays
    _damage(str(run / "checkpoints" / "2"))
    again = _run_two_processes(tiny_data_dir, run, **common)
    out0, out1 = again[0][0], again[1][0]
    skipped = [line for line in out0.splitlines() if "checkpoint 2" in line]
    assert len(skipped) == 1 and "resuming from checkpoint 1" in skipped[0], out0
    assert "resuming after epoch 1" in out0 and "epoch" not in out1
    assert os.path.isdir(run / "unreadable_checkpoints" / "2")
    assert read_records(run) == records
    resumed = _saved(run, 2)
    flat, flat_resumed = (
        {"/".join(map(str, k)): v for k, v in _flatten(tree)} for tree in (saved, resumed)
    )
    assert sorted(flat) == sorted(flat_resumed)
    for name, value in flat.items():
        np.testing.assert_array_equal(flat_resumed[name], value, err_msg=name)

    single = train.train_and_evaluate(
        make_tiny_config(tiny_data_dir, epochs=2, num_devices=2), str(tmp_path / "single")
    )
    want = read_records(tmp_path / "single")
    assert single["num_devices"] == 2
    for g, w in zip(records, want, strict=True):
        assert sorted(g) == sorted(w)
        np.testing.assert_allclose([g[k] for k in w], [w[k] for k in w], rtol=1e-5, atol=1e-5)


def test_workdirs_the_processes_do_not_share_are_refused_in_one_line(tiny_data_dir, tmp_path):
    # each process its own workdir (as if on each host's local disk): the checkpoint
    # directory is not shared, so before training both stop with one line
    outputs = _run_two_processes(
        tiny_data_dir, [tmp_path / "host0", tmp_path / "host1"], returncode=1, epochs=1
    )
    for pid, (_, err) in enumerate(outputs):
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
        assert "is not shared by the processes of this run: process(es) 1 cannot" in lines[0]
        assert str(tmp_path / f"host{pid}" / "checkpoints") in lines[0]
    assert not os.path.exists(tmp_path / "host0" / "metrics.jsonl")


# Each process leaves at once (os._exit: no clean-up, as a kill) when it is about to
# hand its `to_global` call number EXIT_AT to the step; both processes reach it at the
# same batch, after the mid-epoch checkpoint before it was committed.
EXIT_MID_EPOCH = """
import os
from localjax.training import streamed
real, calls = streamed.streaming.to_global, []
def to_global(batch, mesh):
    calls.append(1)
    if len(calls) == int(os.environ["LOCALJAX_TEST_EXIT_AT"]):
        os._exit(17)
    return real(batch, mesh)
streamed.streaming.to_global = to_global
from absl import app
from experiments import train
app.run(train.main)
"""


def test_a_streamed_run_in_two_processes_resumes_mid_epoch_from_each_process_shards(
    tiny_data_dir, tmp_path, monkeypatch
):
    """Streamed data (grain, each process its share of every batch): both processes
    write their shards of the epoch and mid-epoch checkpoints; killed in epoch 2, then
    rerun, they read their shards and stream states back and metrics.jsonl equals an
    uninterrupted two-process run's."""
    common = dict(
        data_pipeline="stream",
        train_limit=64,  # 4 steps per epoch of 16
        epochs=2,
        checkpoint_every_steps=2,
    )
    _run_two_processes(tiny_data_dir, tmp_path / "whole", **common)
    want = read_records(tmp_path / "whole")
    assert [r["epoch"] for r in want] == [1, 2]

    script = tmp_path / "exit_mid_epoch.py"
    script.write_text(EXIT_MID_EPOCH)
    run = tmp_path / "run"
    # epoch 1: 4 train and 2 test batches; epoch 2: leave before batch 4 (after step 6)
    monkeypatch.setenv("LOCALJAX_TEST_EXIT_AT", str(4 + 2 + 4))
    _run_two_processes(tiny_data_dir, run, returncode=None, script=str(script), **common)
    monkeypatch.delenv("LOCALJAX_TEST_EXIT_AT")
    assert os.listdir(run / "checkpoints") == ["1"]
    mid = run / streamed.MID_DIR
    assert os.listdir(mid) == ["6"]
    for pid in (0, 1):  # each process wrote its part, into the one shared directory
        assert os.listdir(mid / "6" / "state" / f"ocdbt.process_{pid}"), pid
    with open(mid / "6" / "meta" / "metadata") as f:
        meta = json.load(f)
    assert [s["batches_done"] for s in meta["streams"]] == [2, 2]  # one per process

    again = _run_two_processes(tiny_data_dir, run, **common)
    assert "resuming epoch 2 after batch 2 (step 6)" in again[0][0]
    assert read_records(run) == want


def _flatten(tree, prefix=()):
    """(path, leaf) pairs of nested dicts and lists."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        if isinstance(value, (dict, list, tuple)):
            yield from _flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value
