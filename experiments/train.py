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

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from localjax import train
from localjax.data import DatasetError

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, optionally with ':row' (see experiments/configs/).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (DatasetError, train.TrainingError, ValueError) as e:
        # a message the user can act on, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
