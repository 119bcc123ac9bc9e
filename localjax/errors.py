"""The errors a user acts on: each message is one line naming the problem and the fix.

`experiments/train.py` (and `experiments.reproduce`) print these as one `error:` line with
no traceback; every other exception is a bug (in localjax or in a user's model) and keeps
its traceback.

Usage::

    try:
        train_and_evaluate(config, workdir)
    except (ConfigError, DatasetError, TrainingError) as e:
        print(f"error: {e}")
"""

from __future__ import annotations

__all__ = ["ConfigError", "DatasetError", "TrainingError"]


class ConfigError(ValueError):
    """A setting that cannot train: an unknown name, a value out of range, a workdir that
    cannot be used, a resume onto a different run or different data.

    A `ValueError`, so code that caught the library's `ValueError`s still catches it.

    Args:
      message: str naming the setting, its value and what to use instead.

    Raises:
      Nothing of its own; raised by the model builders, the head configuration, the
      sharding checks and the training loop's validation (DESIGN.md, Errors).
    """


class DatasetError(RuntimeError):
    """A dataset cannot be loaded: missing, corrupt or inconsistent files.

    Args:
      message: str naming the problem, where it looked and how to fix it.

    Raises:
      Nothing of its own; the readers and `localjax.data.load` raise it.

    Part of dataset loading (DESIGN.md, Data).
    """


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a full disk, another run in the workdir);
    the message says where, why, and a command that works.

    Args:
      message: str naming the step, the block whose local loss (or the output loss) first
        turned non-finite, or the resource that failed, and the workdir.

    Raises:
      Nothing of its own; `train_and_evaluate` raises it.
    """
