"""A run's configuration: validated up front, and turned into the network it describes.

Usage::

    validate(config, workdir)                  # ConfigError names the first bad field
    model = model_from_config(config, spec.num_classes)

The fields are those of `experiments/configs/default.py`.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile

from localjax.data import get_spec
from localjax.errors import ConfigError
from localjax.models import build_model, compute_dtype
from localjax.network import LocalNetwork
from localjax.ops.conv_wgrad import conv_wgrad_context
from localjax.torch_defaults import activation
from localjax.training.optimizer import make_optimizer
from localjax.training.pipeline import check_pipelinable
from localjax.training.stages import check_cuts, num_blocks

__all__ = ["validate", "check_workdir", "model_from_config"]

# losses that compare the examples of a batch with each other (the similarity matrix)
_SIMILARITY_LOSSES = ("sim", "predsim")


def validate(config, workdir: str) -> None:
    """Refuses settings that would train nonsense, before any data is loaded.

    Checks the loop's counts and limits, dropout, lr and lr_decay (> 0, finite), layer
    widths, classes_per_batch, cutout_length, seed, milestones (whole epochs >= 1), a
    sim/predsim batch of one example (batch_size=1, or a train_limit leaving one example
    over), conv_wgrad, dtype and nonlin names, the network itself (`model_from_config`:
    unknown model or loss, head values, a conv width of 0 from feat_mult, an unknown
    final_pool or one on a model other than a (Wide) ResNet), the pipeline fields
    (`pipeline_stages`, `pipeline_cuts`: docs/pipeline.md) and that the workdir can be
    created and written (`check_workdir`). Creates nothing.

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
    if config.get("classes_per_batch", 0) < 0:
        raise ConfigError(
            f"classes_per_batch={config.classes_per_batch} must be >= 0 (0 = plain shuffling)."
        )
    if config.get("cutout_length", 0) < 0:
        raise ConfigError(f"cutout_length={config.cutout_length} must be >= 0 (0 = no cutout).")
    seed = config.get("seed", 0)
    if not _is_whole(seed) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be an integer >= 0.")
    _check_milestones(config.get("milestones", ()))
    _check_batch_of_one(config)
    conv_wgrad_context(config.get("conv_wgrad", "auto"))  # refuses an unknown choice early
    compute_dtype(config.get("dtype", "float32"))
    activation(config.get("nonlin", "relu"))  # applied only when first traced
    model = model_from_config(config, num_classes)  # unknown model/loss, head values, widths 0
    _check_pipeline(config, model)
    make_optimizer(  # unknown optim, momentum with Adam, a negative weight decay
        config.lr,
        tuple(config.milestones),
        1,
        config.get("lr_decay", 0.25),
        optim=config.get("optim", "adam"),
        momentum=config.get("momentum", 0.0),
        weight_decay=config.get("weight_decay", 0.0),
    )
    if config.get("n_holes", 1) < 1:
        raise ConfigError(f"n_holes={config.n_holes} must be >= 1 (cutout holes per image).")
    check_workdir(workdir)


def _check_pipeline(config, model) -> None:
    """pipeline_stages and pipeline_cuts (docs/pipeline.md): a whole S >= 1; with S > 1 a
    network whose blocks are cut (not the backprop baseline, not deep supervision) with
    at least S blocks; cuts, if given, S − 1 increasing block indices. The device count
    and the batch's split over each stage's devices are checked once the devices are
    known (`pipeline.make_pipeline_mesh`, `pipeline.check_batch_divisible`)."""
    stages, cuts = config.get("pipeline_stages", 1), config.get("pipeline_cuts", ())
    if not _is_whole(stages) or stages < 1:
        raise ConfigError(f"pipeline_stages={stages!r} must be an integer >= 1 (1 = no pipeline).")
    if not isinstance(cuts, (tuple, list)) or not all(_is_whole(c) for c in cuts):
        raise ConfigError(
            f"pipeline_cuts={cuts!r} must be a tuple of block indices, e.g. "
            "--config.pipeline_cuts='(3,)' (or '()' to balance the stages by FLOPs)."
        )
    if stages > 1:
        check_pipelinable(model, stages, loss=config.loss)
        if config.get("data_pipeline", "auto") == "stream":
            raise ConfigError(
                f"pipeline_stages={stages} with data_pipeline=stream: the pipeline feeds its "
                "first stage from the training set held on the devices; use "
                "data_pipeline=memory (or pipeline_stages=1)."
            )
    if cuts:
        check_cuts(cuts, num_blocks(model), stages)


def _is_whole(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_milestones(milestones) -> None:
    """Milestones are whole epochs >= 1 (a tuple; `--config.milestones='(100,150)'`)."""
    ok = isinstance(milestones, (tuple, list)) and all(_is_whole(m) and m >= 1 for m in milestones)
    if not ok:
        raise ConfigError(
            f"milestones={milestones!r} must be a tuple of epochs >= 1 after which lr is "
            "multiplied by lr_decay, e.g. --config.milestones='(100,150)' (or '()' for none)."
        )


def _similarity_term(config) -> str | None:
    """The setting that compares a batch's examples with each other, or None."""
    loss, unsup = config.loss, config.get("unsup", "none")
    if loss in _SIMILARITY_LOSSES:
        return f"loss={loss}"
    return "unsup=sim" if loss != "backprop" and unsup == "sim" else None


def _check_batch_of_one(config) -> None:
    """sim and predsim compare a batch's examples with each other: one example is no batch.

    The similarity matrix of one example is the constant [[1]], and a dense block's
    BatchNorm normalises a single example to zeros, so such a step teaches the block
    nothing; on a fresh network (BatchNorm offsets still 0) the centred block output is 0
    and the gradient of its norm is NaN (measured: `batch_size=1` predsim turns NaN at
    step 2). A batch_size of 1 is refused, and so is a `train_limit` that leaves a last
    batch of one example each epoch (the loop keeps the last partial batch; mid-run such a
    step stays finite but wasted, as the first step of an epoch of one example it is NaN).
    The full training split's size is known only once loaded: `check_last_batch` then.
    """
    what = _similarity_term(config)
    if what is None:
        return
    batch, limit = config.batch_size, config.get("train_limit", 0)
    if batch == 1:
        raise ConfigError(
            f"batch_size=1 with {what}: the similarity matrix of a single example is "
            "constant, so the local loss cannot learn from it (and such a step can turn the "
            "weights NaN). Use batch_size >= 2 (the paper: 128)."
        )
    if limit:
        check_last_batch(config, limit)


def check_last_batch(config, num_examples: int) -> None:
    """Refuses an epoch whose last batch holds one example under a similarity loss.

    `validate` checks it for a `train_limit`; the loop again once the training split is
    loaded (its size is known only then).

    Args:
      config: the run's config (`loss`, `unsup`, `batch_size`, `train_limit`).
      num_examples: N, the examples one epoch visits.

    Raises:
      ConfigError: N % batch_size == 1 with loss sim/predsim (or unsup=sim).
    """
    what = _similarity_term(config)
    batch, limit = config.batch_size, config.get("train_limit", 0)
    if what is None or num_examples % batch != 1:
        return
    if limit and limit == num_examples:
        fix = f"train_limit={limit - 1} or {limit + 1}" if limit > 1 else "train_limit >= 2"
        where = f"train_limit={limit}"
    else:
        fix = f"batch_size={batch + 1}, or train_limit={num_examples - 1}"
        where = f"the {num_examples} training examples"
    raise ConfigError(
        f"{where} with batch_size={batch} leaves 1 example for the last "
        f"batch of every epoch, and {what} cannot learn from a single example (its "
        f"similarity matrix is constant). Use {fix}, or another batch_size."
    )


def check_workdir(workdir: str, what: str = "workdir", flag: str = "--workdir") -> None:
    """Refuses a workdir that cannot be created or written, before anything runs.

    Creates nothing: an existing workdir gets a probe file, else the nearest existing
    parent a probe directory (both removed at once). Permission bits alone would not do:
    root passes `os.access` on read-only places such as /proc.

    Args:
      workdir: the run's output directory (need not exist).
      what, flag: how the message names the directory and the flag that sets it.

    Raises:
      ConfigError: the workdir is a file, lies under a file, or cannot be created or
        written; the message names the path, the reason and the fix.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"{what} {workdir} is a file, not a directory; pass a directory.")
    path = os.path.abspath(workdir)
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        if os.path.lexists(existing):
            raise ConfigError(
                f"{what} {workdir} cannot be created: {existing} is a broken symbolic link. "
                f"Remove it or pass another {flag}."
            )
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(
            f"{what} {workdir} cannot be created: {existing} is a file, not a directory. "
            f"Pass another {flag}."
        )
    try:
        if existing == path:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".localjax-probe-"):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".localjax-probe-"))
    except OSError as e:
        verb = "written" if existing == path else f"created (in {existing})"
        raise ConfigError(
            f"{what} {workdir} cannot be {verb}: {e.strerror or e}. Pass a {flag} you can write to."
        ) from e


def model_from_config(config, num_classes: int) -> LocalNetwork:
    """The network a config describes (`build_model` with the config's fields).

    Args:
      config: the run's `ml_collections.ConfigDict`.
      num_classes: K, the dataset's class count.

    Returns:
      An unbound `LocalNetwork`.

    Raises:
      ConfigError: an unknown model, loss, dtype, final_pool or head setting.
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
        similarity_std=config.get("similarity_std", True),
        pre_act=config.get("pre_act", False),
        no_batch_norm=config.get("no_batch_norm", False),
        detach=config.get("detach", True),
        dtype=config.get("dtype", "float32"),
        final_pool=config.get("final_pool", "reference"),
    )
