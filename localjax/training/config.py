"""A run's configuration: validated up front, and turned into the network it describes.

Usage::

    validate(config, workdir)                  # ConfigError names the first bad field
    model = model_from_config(config, spec.num_classes)

The fields are those of `experiments/configs/default.py`.
"""

from __future__ import annotations

import math
import os

from localjax.data import get_spec
from localjax.errors import ConfigError
from localjax.models import build_model, compute_dtype
from localjax.network import LocalNetwork
from localjax.ops.conv_wgrad import conv_wgrad_context

__all__ = ["validate", "model_from_config"]


def validate(config, workdir: str) -> None:
    """Refuses settings that would train nonsense, before any data is loaded.

    Args:
      config: the run's `ml_collections.ConfigDict` (experiments/configs/default.py).
      workdir: the run's output directory (need not exist).

    Raises:
      ConfigError: the first bad setting, named with its value and the fix.

    Guards METHOD.md, Training's recipe fields and the loop's own options.
    """
    fields = ("sync_every", "checkpoint_every", "keep", "epochs", "batch_size", "eval_batch_size")
    for field in fields:
        value = config.get(field, 1)
        if value < 1:
            raise ConfigError(f"{field}={value} must be >= 1.")
    for field in ("train_limit", "test_limit"):
        if config.get(field, 0) < 0:
            raise ConfigError(f"{field}={config.get(field)} must be >= 0 (0 = every example).")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"dropout={config.dropout} must be in [0, 1).")
    lr, decay = config.lr, config.get("lr_decay", 0.25)
    if not all(math.isfinite(v) and v > 0 for v in (lr, decay)):
        raise ConfigError(
            f"lr={lr} and lr_decay={decay} must be > 0 and finite (the paper: lr 5e-4 or "
            "3e-4, lr_decay 0.25)."
        )
    if config.num_layers < 0 or (config.num_layers > 0 and config.num_hidden < 1):
        raise ConfigError(
            f"num_layers={config.num_layers} must be >= 0 and num_hidden={config.num_hidden}"
            " >= 1 (the paper's MLP: num_layers=3, num_hidden=1024)."
        )
    num_classes = get_spec(config.dataset).num_classes
    if config.get("classes_per_batch", 0) > num_classes:
        raise ConfigError(
            f"classes_per_batch={config.classes_per_batch} exceeds {config.dataset}'s "
            f"{num_classes} classes; use at most {num_classes} (0 = plain shuffling)."
        )
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir} is a file, not a directory; pass a directory.")
    conv_wgrad_context(config.get("conv_wgrad", "auto"))  # refuses an unknown choice early
    compute_dtype(config.get("dtype", "float32"))


def model_from_config(config, num_classes: int) -> LocalNetwork:
    """The network a config describes (`build_model` with the config's fields).

    Args:
      config: the run's `ml_collections.ConfigDict`.
      num_classes: K, the dataset's class count.

    Returns:
      An unbound `LocalNetwork`.

    Raises:
      ConfigError: an unknown model, loss, dtype or head setting.
    """
    return build_model(
        config.model,
        num_classes,
        config.loss,
        num_layers=config.num_layers,
        num_hidden=config.num_hidden,
        feat_mult=config.feat_mult,
        nonlin=config.nonlin,
        dropout=config.dropout,
        beta=config.beta,
        dim_in_decoder=config.dim_in_decoder,
        bio=config.bio,
        target_proj_size=config.get("target_proj_size", 128),
        unsup=config.get("unsup", "none"),
        alpha=config.get("alpha", 0.0),
        detach=config.get("detach", True),
        dtype=config.get("dtype", "float32"),
    )
