"""Orbax checkpoints of a training run: written atomically, last `keep` retained.

Usage::

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    ckpt.save(epoch, host_state, {"epoch": epoch, ...})   # host_state: NumPy pytree
    restored = ckpt.restore_latest(host_template)          # None or (host_state, meta)
    ckpt.close()

A checkpoint (one directory per epoch, `checkpoints/<epoch>/`) holds two items: `state`,
the `TrainState` fields (step, params, batch_stats, constants, opt_state) as arrays, and
`meta`, a JSON dict (epoch, data-order state, the run's config). Orbax writes into a
temporary directory and renames it into place only once complete, so a kill during a
write leaves the previous checkpoints intact and the half-written one is ignored and
cleaned up (DESIGN.md, Decisions: checkpoints with Orbax).

Only process 0 constructs a `Checkpointer`; state goes through the host as NumPy, so
the format does not depend on the device count or the number of processes.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


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
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes the checkpoint of `epoch` (atomically) and prunes older ones beyond `keep`.

        Args:
          epoch: the epoch just completed (1-based); the checkpoint's directory name.
          state: a pytree of NumPy arrays (the host copy of the train state).
          meta: JSON-serialisable dict.

        Raises:
          orbax's StepAlreadyExistsError: a checkpoint of `epoch` already exists.
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

    def restore_latest(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
        """Reads the newest complete checkpoint.

        Args:
          template: a pytree of NumPy arrays with the structure, shapes and dtypes of the
            saved state (e.g. the host copy of a freshly initialised state).

        Returns:
          None if there is no checkpoint, else `(state, meta)`: the state as a pytree of
          NumPy arrays like `template`, and the meta dict.

        Raises:
          ValueError: the newest checkpoint does not match `template` (a different model
            in the same directory); the message says to use a new workdir.
        """
        epoch = self._manager.latest_step()
        if epoch is None:
            return None
        try:
            restored = self._manager.restore(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"cannot restore checkpoint {self.directory}/{epoch}: {e}. It belongs to a "
                "different model; use a new workdir (experiments.reproduce: a new --root), "
                "or delete that checkpoints directory to start over."
            ) from e
        return restored["state"], restored["meta"]

    def close(self) -> None:
        """Waits for pending work and releases the manager."""
        self._manager.close()
