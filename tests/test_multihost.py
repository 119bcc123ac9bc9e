"""Multi-host: two processes joined by `jax.distributed` on 127.0.0.1 (CPU collectives),
one device each, train like one process with two devices; only process 0 writes files."""

import os
import socket
import subprocess

import numpy as np
from conftest import cli, make_tiny_config, read_records

from localjax.training import loop as train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(tiny_data_dir, tmp_path, epochs):
    """Runs the job as 2 processes of 1 CPU device each; returns their (stdout, stderr)."""
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = []
    for pid in range(2):
        c = make_tiny_config(
            tiny_data_dir,
            epochs=epochs,
            coordinator_address=address,
            num_processes=2,
            process_id=pid,
        )
        procs.append(
            cli(c, tmp_path / f"p{pid}", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outputs


def test_two_processes_agree_with_one_process_and_resume(tiny_data_dir, tmp_path):
    first = _run_two_processes(tiny_data_dir, tmp_path, epochs=1)
    assert "2 device(s) in 2 process(es)" in first[0][0]
    # run on to epoch 2: process 0 reads its checkpoint and broadcasts it to process 1
    outputs = _run_two_processes(tiny_data_dir, tmp_path, epochs=2)
    assert "resuming after epoch 1" in outputs[0][0]
    assert "epoch" not in outputs[1][0]  # process 1 prints no progress ...
    assert not os.path.exists(tmp_path / "p1" / "metrics.jsonl")  # ... and writes nothing
    assert not os.path.exists(tmp_path / "p1" / "checkpoints" / "1")

    single = train.train_and_evaluate(
        make_tiny_config(tiny_data_dir, epochs=2, num_devices=2), str(tmp_path / "single")
    )
    got, want = read_records(tmp_path / "p0"), read_records(tmp_path / "single")
    assert [r["epoch"] for r in got] == [1, 2] and single["num_devices"] == 2
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w)
        np.testing.assert_allclose([g[k] for k in w], [w[k] for k in w], rtol=1e-5, atol=1e-5)
    assert os.path.isdir(tmp_path / "p0" / "checkpoints" / "2")
