"""Test setup: 8 fake CPU devices, fast compiles, a compilation cache, a tiny dataset.

`--xla_force_host_platform_device_count=8` must be in XLA_FLAGS before jax is imported, so
it is set here, at collection time; subprocesses started by tests inherit it (and the
persistent compilation cache under .pytest_cache/jax).
"""

import os

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}=8".strip()
# The tests check behaviour, not speed, and compiling dominates their time: without LLVM's
# backend optimisation a VGG step compiles ~2.5x faster (measured 25 s -> 12 s).
_OPT = "--xla_backend_optimization_level"
if _OPT not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {_OPT}=0"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Identical programs (the same tiny run in several tests and their subprocesses) compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_TRAIN, TINY_TEST = 8000, 256


def _write_idx(path: str, array: np.ndarray) -> None:
    """Writes an uncompressed IDX file (uint8 data) as the MNIST family stores it."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
    """A directory of Fashion-MNIST-format IDX files: 8000 train / 256 test 28x28 images.

    Each class is a bright 7x7 square at its own place plus noise, so tiny models learn it.
    """
    directory = tmp_path_factory.mktemp("tiny_fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", TINY_TRAIN), ("t10k", TINY_TEST)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 120, (n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            r, c = 7 * (y // 4), 7 * (y % 4)
            images[i, r : r + 7, c : c + 7] += 120
        _write_idx(str(directory / f"{prefix}-images-idx3-ubyte"), images)
        _write_idx(str(directory / f"{prefix}-labels-idx1-ubyte"), labels)
    return str(directory)


TINY_OVERRIDES = dict(
    dataset="fashion_mnist",
    data_source="files",
    model="mlp",
    loss="predsim",
    num_layers=2,
    num_hidden=32,
    dropout=0.0,
    batch_size=16,
    eval_batch_size=128,
    train_limit=128,
    epochs=3,
    milestones=(2,),
    lr=1e-3,
    progress_bar=False,
)


def make_tiny_config(data_dir: str, **overrides):
    """The default config shrunk to a seconds-long MLP run on the data in `data_dir`."""
    from experiments.configs import default

    c = default.get_config()
    for key, value in {**TINY_OVERRIDES, "data_dir": data_dir, **overrides}.items():
        c[key] = value
    return c


@pytest.fixture
def tiny_config(tiny_data_dir):
    """`tiny_config(**overrides)` -> `make_tiny_config` on the tiny synthetic dataset."""
    return lambda **overrides: make_tiny_config(tiny_data_dir, **overrides)


def read_records(workdir) -> list[dict]:
    """metrics.jsonl as dicts, without the wall-clock fields (`train.TIMING_KEYS`)."""
    from localjax.training.metrics import TIMING_KEYS

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def cli(config, workdir, script=None, **popen_kwargs):
    """Starts `python -m experiments.train` (or `script`) on `config`; returns the Popen."""
    command = ["-m", "experiments.train"] if script is None else [script]
    args = [
        sys.executable,
        *command,
        "--config=experiments/configs/default.py",
        f"--workdir={workdir}",
        *config_flags(config),
    ]
    return subprocess.Popen(args, cwd=ROOT, text=True, **popen_kwargs)


def config_flags(config) -> list[str]:
    """The `--config.<field>=value` flags that rebuild `config` from default.py in a CLI run."""
    from experiments.configs import default

    base = default.get_config()
    flags = []
    for key, value in config.items():
        if key in base and base[key] != value:
            if isinstance(value, tuple):
                value = ",".join(map(str, value)) if value else "()"
                value = f"({value},)" if "," not in value else f"({value})"
            flags.append(f"--config.{key}={value}")
    return flags


def nan_rate_from_update(monkeypatch, first_nan_update: int) -> None:
    """Makes the training loop's optimizer Adam whose learning rate is NaN from update
    number `first_nan_update` (0-based): a non-finite update injected where a config
    cannot ask for one (a NaN lr or lr_decay is refused up front)."""
    import jax.numpy as jnp
    import optax

    from localjax.training import loop

    monkeypatch.setattr(
        loop,
        "make_optimizer",
        lambda *_, **__: optax.adam(
            lambda count: jnp.where(count >= first_nan_update, jnp.nan, 1e-3)
        ),
    )


def read_event_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from one TensorBoard event file (TFRecord framing: u64
    length, u32 crc, payload, u32 crc), parsed with tensorboardX's own protobufs."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def read_workdir_event_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
    """`read_event_scalars` over every event file in `workdir`, merged."""
    import glob

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(str(workdir), "events.out.tfevents.*"))):
        for tag, points in read_event_scalars(path).items():
            out.setdefault(tag, []).extend(points)
    return out
