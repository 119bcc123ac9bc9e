"""Mistakes a user makes end `python -m experiments.train` in one `error: ...` line (exit 1,
no traceback): flag and config-file mistakes, settings that cannot train, a workdir that
cannot be written, a corrupt data file. A bug (any other exception) keeps its traceback.
Also the library checks behind those lines (`check_workdir`, the IDX reader, the model
builders)."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, _write_idx

from localjax import ConfigError, DatasetError, build_model
from localjax.data import readers
from localjax.training.config import check_workdir

CONFIG = "--config=experiments/configs/fashion_mnist.py:mlp_predsim"


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _error_line(returncode: int, stderr: str) -> str:
    """The run's one `error:` line; fails unless it ended in exactly that, no traceback."""
    assert returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr  # others: logging warnings
    assert "\\n" not in errors[0] and "\\'" not in errors[0], errors[0]  # nothing escaped
    return errors[0]


# ---------------------------------------------------------------- flags and config files
# (refused while the flags are parsed, before jax is imported: ~0.3 s each)
_CONFIG_FILES = {
    "syntax.py": "def get_config(:\n    pass\n",
    "no_get_config.py": "import ml_collections\nCONFIG = ml_collections.ConfigDict()\n",
    "returns_none.py": "def get_config():\n    pass\n",
}


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            [CONFIG, "--config.epoch=1"],
            ["unknown config field 'epoch' in --config.epoch; did you mean --config.epochs?"],
        ),
        (
            [CONFIG, "--config.milestones=abc,def"],
            ["--config.milestones=abc,def is not a tuple of epochs", "'(100,150)'"],
        ),
        (
            ["--config={dir}/syntax.py"],
            ["config file {dir}/syntax.py has a syntax error at line 1", "def get_config(:"],
        ),
        (
            ["--config={dir}/no_get_config.py"],
            ["config file {dir}/no_get_config.py defines no get_config()"],
        ),
        (
            ["--config={dir}/returns_none.py"],
            ["config file {dir}/returns_none.py: get_config() returned None"],
        ),
    ],
    ids=["field_typo", "milestones_form", "syntax_error", "no_get_config", "returns_none"],
)
def test_flag_and_config_file_mistakes_end_in_one_line(tmp_path, args, expected):
    for name, text in _CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
    args = [a.format(dir=tmp_path) for a in args]
    proc = _start("-m", "experiments.train", *args, f"--workdir={tmp_path / 'run'}")
    line = _error_line(proc.wait(timeout=120), proc.stderr.read())
    for text in expected:
        assert text.format(dir=tmp_path) in line, line


# ---------------------------------------------------------------- settings, workdir, data
# Each run imports jax before it refuses (~2.5 s of CPU); they are started together. The
# other refusals of `validate` (num_hidden=0, a bio batch of one, ...) are checked in
# process by test_train_loop.py: they reach the same one-line handler.
_BUG = """
import sys
sys.path.insert(0, {root!r})
from absl import app
from experiments import train
from localjax.training import loop

def train_and_evaluate(config, workdir):  # stands for a bug in a user's model
    raise ValueError("dot_general requires contracting dimensions to have the same shape")

loop.train_and_evaluate = train_and_evaluate
app.run(train.main, flags_parser=train._parse_flags)
"""

_CASES = {
    "milestones": (
        ["--config.milestones=abc"],
        ["milestones=('abc',) must be a tuple of epochs", "--config.milestones='(100,150)'"],
    ),
    "lr_nan": (["--config.lr=nan"], ["lr=nan and lr_decay=0.25 must be > 0 and finite"]),
    "batch_of_one": (["--config.batch_size=1"], ["batch_size=1 with loss=predsim"]),
    "last_batch_of_one": (
        ["--config.train_limit=129", "--config.batch_size=16"],
        ["train_limit=129 with batch_size=16 leaves 1 example", "train_limit=128 or 130"],
    ),
    "feat_mult_0": (
        ["--config.model=vgg8b", "--config.feat_mult=0"],
        ["feat_mult=0.0 leaves vgg8b's narrowest conv block", "1/128"],
    ),
    # the bad input for the residual networks and the reference's switches
    "unknown_model": (
        ["--config.model=resnet19"],
        ["unknown model 'resnet19'; choose one of [", "'resnet18'", "'wresnet28-10a'"],
    ),
    "wresnet_depth": (
        ["--config.model=wresnet12-4"],
        ["wresnet12-4: a Wide ResNet depth must be 6n+4"],
    ),
    "final_pool_unknown": (
        ["--config.model=resnet18", "--config.final_pool=avg4"],
        ["unknown final_pool 'avg4'; choose one of ['reference', 'global']"],
    ),
    "final_pool_on_mlp": (
        ["--config.final_pool=global"],
        ["final_pool='global' applies to the ResNets and Wide ResNets; 'mlp'"],
    ),
    "momentum_with_adam": (
        ["--config.momentum=0.9"],
        ["momentum=0.9 applies to optim='sgd' only"],
    ),
    "negative_weight_decay": (
        ["--config.weight_decay=-0.0001"],
        ["weight_decay=-0.0001 must be >= 0"],
    ),
    "workdir_under_a_file": (
        [],
        ["workdir {tmp}/file/run cannot be created: {tmp}/file is a file"],
    ),
    "corrupt_gzip": (
        ["--config.data_dir={tmp}/corrupt", "--config.data_source=files"],
        [
            "cannot read {tmp}/corrupt/train-images-idx3-ubyte.gz: the file is corrupt",
            "Re-download",
        ],
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{case: (returncode, stderr, workdir, tmp)} of every case of `_CASES`, plus `bug`."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    (tmp / "file").write_text("")
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    good = gzip.compress(bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes(4))
    # a gzip header, then bytes that are no deflate stream (zlib.error, once a traceback)
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(good[:10] + b"\xff" * 40)
    _write_idx(str(corrupt / "train-labels-idx1-ubyte"), np.zeros(4, np.uint8))
    script = tmp / "buggy_train.py"
    script.write_text(_BUG.format(root=ROOT))
    procs = {}
    for case, (flags, _) in _CASES.items():
        workdir = tmp / ("file/run" if case == "workdir_under_a_file" else case)
        flags = [f.format(tmp=tmp) for f in flags]
        procs[case] = (
            _start("-m", "experiments.train", CONFIG, *flags, f"--workdir={workdir}"),
            workdir,
        )
    procs["bug"] = (_start(str(script), CONFIG, f"--workdir={tmp / 'bug'}"), tmp / "bug")
    out = {}
    for case, (proc, workdir) in procs.items():
        _, stderr = proc.communicate(timeout=300)
        out[case] = (proc.returncode, stderr, workdir, tmp)
    return out


@pytest.mark.parametrize("case", list(_CASES))
def test_what_cannot_train_ends_in_one_line_before_training(runs, case):
    returncode, stderr, workdir, tmp = runs[case]
    line = _error_line(returncode, stderr)
    for text in _CASES[case][1]:
        assert text.format(tmp=tmp) in line, line
    if case == "corrupt_gzip":  # the workdir is made before the data are read
        assert not {"metrics.jsonl", "checkpoints", "summary.json"} & set(os.listdir(workdir))
    else:
        assert not os.path.exists(workdir)  # refused before anything was written


def test_a_bug_keeps_its_traceback(runs):
    returncode, stderr, _, _ = runs["bug"]
    assert returncode == 1
    assert "Traceback (most recent call last)" in stderr
    assert stderr.strip().endswith(
        "ValueError: dot_general requires contracting dimensions to have the same shape"
    )
    assert "error: " not in stderr


# ---------------------------------------------------------------- the checks behind them
def test_check_workdir_refuses_what_cannot_be_written_and_creates_nothing(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"workdir .*/file is a file, not a directory"):
        check_workdir(str(tmp_path / "file"))
    with pytest.raises(ConfigError, match=r"cannot be created: .*/file is a file"):
        check_workdir(str(tmp_path / "file" / "a" / "b"))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"dangling is a broken symbolic link"):
        check_workdir(str(tmp_path / "dangling" / "run"))
    if os.path.isdir("/proc/self"):  # not creatable even by root
        with pytest.raises(ConfigError, match=r"/proc/localjax/run cannot be created \(in /proc\)"):
            check_workdir("/proc/localjax/run")
    check_workdir(str(tmp_path / "new" / "run"))
    check_workdir(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file"]


def test_corrupt_gzip_idx_names_the_file_and_how_to_get_it_again(tmp_path, monkeypatch):
    raw = bytes([0, 0, 8, 1]) + (64).to_bytes(4, "big") + bytes(range(64))
    good = gzip.compress(raw)
    corrupt = {
        "garbage_deflate": good[:10] + b"\xff" * 40,  # zlib.error
        "truncated": good[: len(good) // 2],  # EOFError
        "not_gzip": b"<html>404 Not Found</html>",  # BadGzipFile
        "bad_crc": good[:-8] + bytes(4) + good[-4:],  # BadGzipFile
    }
    for name, data in corrupt.items():
        path = tmp_path / f"{name}-idx1-ubyte.gz"
        path.write_bytes(data)
        with pytest.raises(DatasetError, match="is corrupt, not a valid gzip stream") as e:
            readers.read_idx(str(path))
        assert str(path) in str(e.value) and "Re-download the file" in str(e.value), name
    (tmp_path / "empty-idx1-ubyte.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(DatasetError, match="is empty once decompressed"):
        readers.read_idx(str(tmp_path / "empty-idx1-ubyte.gz"))
    # a file of Debian's package: reinstall the package
    monkeypatch.setitem(readers._DEBIAN_PACKAGES, str(tmp_path), "dataset-fashion-mnist")
    with pytest.raises(DatasetError, match=r"apt-get install --reinstall dataset-fashion-mnist"):
        readers.read_idx(str(tmp_path / "truncated-idx1-ubyte.gz"))


def test_models_refuse_a_width_of_zero():
    with pytest.raises(ConfigError, match=r"feat_mult=0.0 leaves vgg8b's narrowest"):
        build_model("vgg8b", 10, feat_mult=0.0)
    with pytest.raises(ConfigError, match=r"feat_mult=0.01 leaves vgg11's narrowest .*1/64"):
        build_model("vgg11", 10, feat_mult=0.01)  # 64 * 0.01 -> 0 channels
    with pytest.raises(ConfigError, match=r"feat_mult=nan"):
        build_model("vgg8b", 10, feat_mult=float("nan"))
    for kwargs in (dict(num_hidden=0), dict(num_layers=-1)):
        with pytest.raises(ConfigError, match=r"num_layers=.* must be >= 0 and num_hidden"):
            build_model("mlp", 10, **kwargs)
        with pytest.raises(ConfigError, match=r"num_layers=.* must be >= 0 and num_hidden"):
            build_model("vgg8b", 10, **kwargs)
    build_model("vgg8b", 10, feat_mult=1 / 128)  # one channel in the narrowest block
    build_model("vgg8b", 10, num_layers=0, num_hidden=0)  # no dense blocks: no width needed
