"""Acceptance of issue 4: `python -m experiments.train` runs one epoch of a shrunk config on
mock data for each of the seven datasets.

Each run takes a published row of `experiments/configs/<dataset>.py` and shrinks it (tiny
MLP, 16 training examples). Mock data = tiny files each test writes in the dataset's real
on-disk format (test_readers.write_dataset), read through `--config.data_source=files`;
one more run goes through the TFDS route under `tfds.testing.mock_data` (skipped without
TFDS). The runs are separate processes started together, so their start-up and compilation
overlap; each test then checks its own run.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_readers import write_dataset

from localjax import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(data.PAPER_DATASETS)  # the ImageNet family: test_streaming.py
N_TRAIN, N_TEST, LIMIT = 20, 8, 16
# a published row of each dataset's config file, shrunk by the flags below
ROW = {"svhn": "vgg8b_predsim", "stl10": "vgg8b_predsim"}
HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None


def _flags(name: str, data_dir: str, workdir: str, source: str) -> list[str]:
    return [
        f"--config=experiments/configs/{name}.py:{ROW.get(name, 'mlp_predsim')}",
        f"--workdir={workdir}",
        f"--config.dataset={name}",
        f"--config.data_dir={data_dir}",
        f"--config.data_source={source}",
        "--config.epochs=1",
        "--config.model=mlp",
        "--config.num_layers=1",
        "--config.num_hidden=32",
        "--config.batch_size=16",
        "--config.eval_batch_size=8",
        f"--config.train_limit={LIMIT}",
        "--config.progress_bar=False",
    ]


# runs the real main with TFDS mocked in-process: the TFDS route without TensorFlow
_TFDS_MOCK_MAIN = """
import sys
import tensorflow_datasets as tfds
from absl import app
from experiments import train
with tfds.testing.mock_data(num_examples=int(sys.argv[1])):
    app.run(train.main, argv=["experiments.train", *sys.argv[2:]])
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts every run at once; returns {id: (process, workdir)}."""
    root = tmp_path_factory.mktemp("e2e")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "LOCALJAX_DATA_DIR": str(root / "default")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    procs = {}

    def start(key, cmd, workdir):
        out = open(root / f"{key}.log", "w+")  # noqa: SIM115 (closed by the test)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs[key] = (proc, workdir, out)

    for name in NAMES:
        data_dir, workdir = str(root / name / "data"), str(root / name / "run")
        write_dataset(name, data_dir, n_train=N_TRAIN, n_test=N_TEST)
        start(
            name,
            [sys.executable, "-m", "experiments.train", *_flags(name, data_dir, workdir, "files")],
            workdir,
        )
    if HAS_TFDS:
        data_dir, workdir = str(root / "tfds_svhn" / "data"), str(root / "tfds_svhn" / "run")
        # files too: the run must still take TFDS, as --config.data_source says
        write_dataset("svhn", data_dir, n_train=N_TRAIN, n_test=N_TEST)
        flags = _flags("svhn", data_dir, workdir, "tfds")
        start("tfds_svhn", [sys.executable, "-c", _TFDS_MOCK_MAIN, str(N_TRAIN), *flags], workdir)
    yield procs
    for proc, _, out in procs.values():
        if proc.poll() is None:
            proc.kill()
        out.close()


def _check_run(runs, key, dataset, source):
    proc, workdir, out = runs[key]
    rc = proc.wait(timeout=600)
    out.seek(0)
    log = out.read()
    assert rc == 0, f"{key} run failed (exit {rc}):\n{log[-3000:]}"
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["config"]["dataset"] == dataset
    assert summary["config"]["data_source"] == source
    assert summary["epochs"] == 1
    assert 0.0 <= summary["final_test_error"] <= 100.0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records] == [1]
    assert records[0]["train_loss"] > 0 and records[0]["test_loss"] > 0
    return log


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_one_epoch_on_mock_files(runs, name):
    _check_run(runs, name, name, "files")


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_TFDS, reason="tensorflow-datasets not installed: pip install -e '.[test]'"
)
def test_one_epoch_on_tfds_mock_svhn(runs):
    _check_run(runs, "tfds_svhn", "svhn", "tfds")
    data_dir = os.path.join(os.path.dirname(runs["tfds_svhn"][1]), "data")
    with np.load(data.cache_path("svhn", "train", data_dir)) as z:
        assert z["images"].shape == (2 * N_TRAIN, 32, 32, 3)  # mock train + extra, not the files
    assert os.path.exists(data.cache_path("svhn", "test", data_dir))
