"""The main job: train one configuration and evaluate it every epoch.

    python -m experiments.train \
        --config=experiments/configs/fashion_mnist.py:mlp_predsim \
        --workdir=runs/mlp_predsim --config.epochs=5

Writes WORKDIR/metrics.jsonl (one JSON object per epoch), WORKDIR/summary.json and Orbax
checkpoints in WORKDIR/checkpoints/; rerunning with a workdir that holds a checkpoint
resumes it. Uses every device; for N hosts add, on host i,

    --config.coordinator_address=host0:1234 --config.num_processes=N --config.process_id=i

(or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID). bfloat16 compute:
--config.dtype=bfloat16. See README.md, "Scaling up".
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from localjax.training import loop as train
from localjax.data import DatasetError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with ':row' (see experiments/configs/).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _config_path(argv: list[str]) -> str | None:
    """The file part of --config=FILE[:ROW] (or --config FILE[:ROW]), if given."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with config mistakes reported in one line, not a traceback.

    ml_collections reports a missing config file only when the config is first read, an
    error inside the config file as a flag error carrying the whole loader traceback, and
    an override of a field the config lacks as a bare KeyError/AttributeError.
    """
    path = _config_path(argv)
    if path and not os.path.isfile(path):
        _fail(
            f"config file not found: {path}. Config files are in experiments/configs/, "
            "e.g. --config=experiments/configs/fashion_mnist.py:mlp_predsim."
        )
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [repr(e)]
        flag = re.match(r"flag (\S+?): ", lines[0])
        if flag is None or len(lines) == 1:
            _fail(f"{lines[0]} (see --helpshort)")
        # the config loader's traceback follows; its last line is the cause
        cause = re.sub(r"^\w+(Error|Exception): ", "", lines[-1])
        _fail(f"{flag.group(1)}: {cause}")
    except (AttributeError, KeyError) as e:
        from experiments.configs import default

        name = str(e).strip("\"'")
        fields = sorted(default.get_config().keys())
        _fail(f"unknown config field {name!r} in --config.{name}; fields are {fields}.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (DatasetError, train.TrainingError, ValueError) as e:
        _fail(str(e))  # a message the user can act on, no traceback


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
