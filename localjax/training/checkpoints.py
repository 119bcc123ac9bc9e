"""Orbax checkpoints of a training run: written atomically, last `keep` retained.

Usage::

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    ckpt.save(epoch, host_state, {"epoch": epoch, ...})   # host_state: NumPy pytree
    restored = ckpt.restore_latest(host_template)          # None or (host_state, meta)
    meta = ckpt.restore_meta(epoch)                        # one checkpoint, step by step
    state = ckpt.restore_state(epoch, host_template)       # or restore_as_saved(epoch)
    ckpt.close()

A checkpoint (one directory per epoch, `checkpoints/<epoch>/`) holds two items: `state`,
the `TrainState` fields (step, params, batch_stats, constants, opt_state) as arrays, and
`meta`, a JSON dict (epoch, data-order state, the run's config, the data's fingerprint).
Orbax writes into a temporary directory and renames it into place only once complete, so a
kill during a write leaves the previous checkpoints intact and the half-written one is
ignored and cleaned up (DESIGN.md, Decisions: checkpoints with Orbax).

A checkpoint can still be unreadable later (a damaged disk, a partly copied workdir): the
restore methods then raise `UnreadableCheckpoint`, and `set_aside` moves it out of the way
so that an older one can be resumed (`training.resume`). One whose arrays do not fit the
model (other shapes, other parameters) raises `CheckpointMismatch` instead.

Only process 0 constructs a `Checkpointer`; state goes through the host as NumPy, so
the format does not depend on the device count or the number of processes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from localjax.errors import ConfigError

__all__ = ["Checkpointer", "UnreadableCheckpoint", "CheckpointMismatch", "SET_ASIDE_DIR"]

# where `set_aside` moves unreadable checkpoints: beside `checkpoints/`, not inside it
SET_ASIDE_DIR = "unreadable_checkpoints"


class UnreadableCheckpoint(Exception):
    """A checkpoint's files cannot be read (damaged, truncated, partly copied).

    Attributes:
      epoch: the checkpoint's epoch.
      reason: one line: what failed to read.
    """

    def __init__(self, epoch: int, reason: str):
        super().__init__(f"checkpoint {epoch} cannot be read: {reason}")
        self.epoch, self.reason = epoch, reason


class CheckpointMismatch(ConfigError):
    """A readable checkpoint whose arrays do not fit the model being trained (other
    shapes, missing or extra arrays): written by other model code, or its files edited.

    Attributes:
      epoch: the checkpoint's epoch.
      detail: one line naming the first array that differs.
    """

    def __init__(self, epoch: int, detail: str, message: str | None = None):
        super().__init__(message or f"checkpoint {epoch} does not fit the model: {detail}")
        self.epoch, self.detail = epoch, detail


def _one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, shortened: the reason in a one-line message."""
    text = str(error).strip().splitlines()
    text = text[0].strip() if text else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ignore_closed_loop_callbacks() -> None:
    """Drops the "Event loop is closed" errors of a failed restore's in-flight reads.

    When one read of a restore fails, Orbax closes its asyncio loop while TensorStore
    still completes the other reads; their callbacks then raise RuntimeError('Event loop
    is closed') on a TensorStore thread, which Python prints as unraisable tracebacks
    after the restore has already raised. Only that exact error is dropped; every other
    unraisable exception goes to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_localjax_closed_loop_filter", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._localjax_closed_loop_filter = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a warning per missing or bad metadata file it meets while listing or
    restoring checkpoints; an unreadable checkpoint is reported in one line of our own
    instead (`training.resume`), and one that restores needs no report."""
    _ignore_closed_loop_callbacks()
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _path_name(path) -> str:
    """`params/block_0/dense/kernel` from a JAX key path, whatever the containers."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        _path_name(path): tuple(np.shape(x))
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _first_difference(saved: dict, wanted: dict) -> str | None:
    """One line naming the first array that is missing, extra or shaped differently."""
    for name in sorted(set(saved) | set(wanted)):
        if name not in saved:
            return f"the model has {name} {list(wanted[name])}, the checkpoint does not"
        if name not in wanted:
            return f"the checkpoint has {name} {list(saved[name])}, the model does not"
        if saved[name] != wanted[name]:
            return (
                f"{name} has shape {list(saved[name])} in the checkpoint but "
                f"{list(wanted[name])} in the model"
            )
    return None


class Checkpointer:
    """Saves and restores `(state, meta)` pairs under one directory, keyed by epoch.

    Args:
      directory: where the per-epoch checkpoint directories go; created if needed.
      keep: how many of the newest checkpoints to retain (>= 1).

    Raises:
      ValueError: keep < 1.
      OSError: `directory` cannot be created.

    Implements the checkpoints (DESIGN.md, Decisions: checkpoints with Orbax).
    """

    def __init__(self, directory: str, keep: int):
        if keep < 1:
            raise ValueError(f"keep={keep}: at least the newest checkpoint must be kept (>= 1).")
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            create=False,  # made below: orbax refuses create with active_processes
            cleanup_tmp_directories=True,  # half-written checkpoints of a killed run
            enable_async_checkpointing=False,  # save() returns once the rename is done
            # this process alone reads and writes: no barriers with other processes
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=0, active_processes={0}
            ),
        )
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        with _quiet_orbax():  # it reads every checkpoint's metadata; a bad one is ours to report
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "meta")
            )
        # (epoch, reason) of the checkpoints `restore_latest` passed over as unreadable
        self.skipped: list[tuple[int, str]] = []

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes the checkpoint of `epoch` (atomically) and prunes older ones beyond `keep`.

        Args:
          epoch: the epoch just completed (1-based); the checkpoint's directory name.
          state: a pytree of NumPy arrays (the host copy of the train state).
          meta: JSON-serialisable dict.

        Raises:
          orbax's StepAlreadyExistsError: a checkpoint of `epoch` already exists.
          OSError (or an error caused by one): the disk is full or not writable; the
            checkpoints written before are intact.
        """
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self._manager.wait_until_finished()

    def epochs(self) -> list[int]:
        """The epochs with a complete checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def restore_meta(self, epoch: int) -> dict[str, Any]:
        """Reads the meta dict of one checkpoint.

        Raises:
          UnreadableCheckpoint: its meta is missing or not a JSON dict.
        """
        try:
            with _quiet_orbax():
                meta = self._manager.restore(
                    epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )["meta"]
        except Exception as e:  # orbax/JSON/OS errors alike: the files are bad
            raise UnreadableCheckpoint(epoch, _one_line(e)) from e
        if not isinstance(meta, dict):
            raise UnreadableCheckpoint(epoch, f"its meta is a {type(meta).__name__}, not a dict")
        return meta

    def restore_state(self, epoch: int, template: Any) -> Any:
        """Reads the state of one checkpoint into the structure of `template`.

        Args:
          epoch: a value of `epochs()`.
          template: a pytree of NumPy arrays with the structure, shapes and dtypes of the
            saved state (e.g. the host copy of a freshly initialised state).

        Returns:
          The state, a pytree of NumPy arrays like `template`.

        Raises:
          UnreadableCheckpoint: its files cannot be read (damaged, truncated).
          CheckpointMismatch: it reads, but its arrays do not fit `template` (names the
            first array that differs).
        """
        try:
            with _quiet_orbax():
                state = self._manager.restore(
                    epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(template))
                )["state"]
        except Exception as e:
            # readable as saved, without the template? then it is another model's state
            try:
                saved = self.restore_as_saved(epoch)
            except UnreadableCheckpoint:
                raise UnreadableCheckpoint(epoch, _one_line(e)) from e
            difference = _first_difference(_shapes(saved), _shapes(template))
            if difference is None:
                raise  # readable and fitting, yet the restore failed: not a known fault
            raise CheckpointMismatch(epoch, difference) from e
        # Orbax restores each array with its saved shape, whatever the template's
        difference = _first_difference(_shapes(state), _shapes(template))
        if difference is not None:
            raise CheckpointMismatch(epoch, difference)
        return state

    def restore_as_saved(self, epoch: int) -> Any:
        """Reads the state of one checkpoint as it was saved (nested dicts and lists of
        NumPy arrays), without a template.

        Raises:
          UnreadableCheckpoint: its files cannot be read.
        """
        try:
            with _quiet_orbax():
                return self._manager.restore(
                    epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore())
                )["state"]
        except Exception as e:
            raise UnreadableCheckpoint(epoch, _one_line(e)) from e

    def restore_latest(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
        """Reads the newest checkpoint that can be read, passing over unreadable ones.

        Args:
          template: a pytree of NumPy arrays with the structure, shapes and dtypes of the
            saved state (e.g. the host copy of a freshly initialised state).

        Returns:
          None if there is no readable checkpoint, else `(state, meta)`: the state as a
          pytree of NumPy arrays like `template`, and the meta dict. The newer checkpoints
          passed over are listed in `self.skipped` as `(epoch, reason)`.

        Raises:
          CheckpointMismatch (a ConfigError, a ValueError): the newest readable checkpoint
            does not fit `template` (another model's, or its files were edited).
        """
        self.skipped = []
        for epoch in reversed(self.epochs()):
            try:
                meta = self.restore_meta(epoch)
                return self.restore_state(epoch, template), meta
            except UnreadableCheckpoint as e:
                self.skipped.append((epoch, e.reason))
        return None

    def set_aside(self, epoch: int) -> str:
        """Moves an unreadable checkpoint out of `directory`; returns where it went.

        It goes to `<directory>/../unreadable_checkpoints/<epoch>` (a numbered suffix if
        that exists), so a resumed run can write that epoch again and nothing is deleted.
        """
        parent = os.path.join(os.path.dirname(self.directory), SET_ASIDE_DIR)
        os.makedirs(parent, exist_ok=True)
        target, n = os.path.join(parent, str(epoch)), 1
        while os.path.exists(target):
            n += 1
            target = os.path.join(parent, f"{epoch}.{n}")
        os.rename(os.path.join(self.directory, str(epoch)), target)
        with _quiet_orbax():
            self._manager.reload()
        return target

    def close(self) -> None:
        """Waits for pending work and releases the manager."""
        self._manager.close()
