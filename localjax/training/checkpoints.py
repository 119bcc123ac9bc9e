"""Orbax checkpoints of a training run: every process writes and reads its own shards,
atomically, the last `keep` retained.

Usage (every process of the run, on one directory they all reach)::

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    ckpt.save(epoch, state, {"epoch": epoch, ...})   # state: global jax.Arrays (or NumPy)
    restored = ckpt.restore_latest(state)            # None or (state, meta), laid out as `state`
    meta = ckpt.restore_meta(epoch)                  # one checkpoint, step by step
    state = ckpt.restore_state(epoch, template)      # or restore_as_saved(epoch): NumPy
    ckpt.close()

A checkpoint (one directory per epoch, `checkpoints/<epoch>/`) holds two items: `state`,
the `TrainState` fields (step, params, batch_stats, constants, opt_state) as arrays, and
`meta`, a JSON dict (epoch, data-order state, the run's config, the data's fingerprint; any
JSON a caller adds is passed through unchanged).

Sharded: the state is saved as the global `jax.Array`s it is (Orbax `StandardSave`); each
process writes the shards its devices hold (`state/ocdbt.process_<i>/`), so no process
gathers the whole state. A restore takes a template (the freshly initialised state placed
on the current mesh) and asks Orbax for `jax.ShapeDtypeStruct(shape, dtype,
sharding=template's)`: each process reads the pieces its devices need, so a checkpoint
written on 8 devices comes back laid out on 2 or 1 (or on 8 again). A template that cannot
hold a saved array (a sharded axis the new device count does not divide) is refused before
reading (`CheckpointLayoutError`). Checkpoints written by the earlier code (NumPy states
saved by process 0 alone) are the same files without sharding metadata and restore alike.

Atomic: Orbax writes into a temporary directory and renames it into place only once every
process has written its part, so a kill during a write leaves the previous checkpoints
intact and the half-written one is ignored and cleaned up (DESIGN.md, Decisions:
checkpoints with Orbax).

A checkpoint can still be unreadable later (a damaged disk, a partly copied workdir): the
restore methods then raise `UnreadableCheckpoint`, and `set_aside` moves it out of the way
so that an older one can be resumed (`training.resume`). One whose arrays do not fit the
model (other shapes, other parameters: read from Orbax's saved metadata, not the data)
raises `CheckpointMismatch` instead.

Multi-process runs: every process constructs the `Checkpointer` on the same directory,
which must be on a file system they all reach (the constructor checks that it is), and
calls `save` and `set_aside` together. The restore methods read on the calling process
only, with no collectives, so that `training.resume.restore` can agree on the outcome
across processes (`gather_json`) without a failing read on one process leaving another
waiting. `all_processes=False` keeps the earlier behaviour: this process alone (process 0)
owns the directory and states go through the host as NumPy.
"""

from __future__ import annotations

import contextlib
import json
import logging as logging_std
import math
import os
import sys
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from localjax.errors import ConfigError

__all__ = [
    "Checkpointer",
    "UnreadableCheckpoint",
    "CheckpointMismatch",
    "CheckpointLayoutError",
    "SET_ASIDE_DIR",
    "abstract_target",
    "gather_json",
]

# where `set_aside` moves unreadable checkpoints: beside `checkpoints/`, not inside it
SET_ASIDE_DIR = "unreadable_checkpoints"
# the file process 0 writes (and then removes) to check that every process sees the directory
_SHARED_PROBE = ".shared_by_processes"


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


class CheckpointLayoutError(ConfigError):
    """A checkpoint that fits the model but cannot be laid out on the current devices:
    an array the template shards along an axis that the new device count does not divide.

    Attributes:
      epoch: the checkpoint's epoch.
      detail: one line naming the array, its shape and how it would be split.
    """

    def __init__(self, epoch: int, detail: str):
        super().__init__(
            f"checkpoint {epoch} cannot be laid out on this run's devices: {detail}. Resume "
            "on a device count that divides it (config field num_devices, or the processes "
            "and devices started), or use a new workdir."
        )
        self.epoch, self.detail = epoch, detail


def _one_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, shortened: the reason in a one-line message.

    Orbax wraps a failed read in an Exception whose first line ends in a repr of the
    TensorStore; the TensorStore error it was raised from (its `__cause__`, e.g.
    `ValueError: OUT_OF_RANGE: Error reading "params.../0.0" ...`) names the damaged file.
    """
    while error.__cause__ is not None and "See full TensorStore details" in str(error):
        error = error.__cause__
    text = str(error).strip().splitlines()
    text = text[0].strip() if text else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_orbax_sibling_read(unraisable) -> bool:
    """True for the unraisable reports of a failed restore's other in-flight reads.

    When one read of a restore fails, Orbax closes its asyncio loop while TensorStore
    still completes the other reads. Their callbacks then raise RuntimeError('Event loop
    is closed') on a TensorStore thread, and the read coroutines that never finished
    raise Orbax's 'Encountered error while reading array index' when they are
    collected. Python prints each as an 'Exception ignored' traceback after the restore
    has already raised and been reported in one line.
    """
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(unraisable.object, "cr_code", None)
    # Orbax's read wraps every BaseException, so the GeneratorExit of closing an
    # unfinished read comes back as its Exception with the GeneratorExit as cause
    return (
        code is not None
        and "orbax" in code.co_filename
        and isinstance(exc.__cause__, GeneratorExit)
        and str(exc).startswith("Encountered error while reading array index")
    )


def _ignore_orbax_sibling_reads() -> None:
    """Drops the unraisable reports of a failed restore's sibling reads
    (`_is_orbax_sibling_read`); every other unraisable exception goes to the previous
    hook, so a genuine bug keeps its traceback."""
    previous = sys.unraisablehook
    if getattr(previous, "_localjax_sibling_read_filter", False):
        return

    def hook(unraisable):
        if _is_orbax_sibling_read(unraisable):
            return
        previous(unraisable)

    hook._localjax_sibling_read_filter = True
    sys.unraisablehook = hook
    # the sibling reads of a failed restore also end as asyncio tasks whose exception
    # nobody retrieves; asyncio logs each with a traceback when it is collected, after
    # the restore has already raised and been reported in one line
    logging_std.getLogger("asyncio").addFilter(_drop_orbax_unretrieved_reads)


def _drop_orbax_unretrieved_reads(record) -> bool:
    """False (drop) for asyncio's 'exception was never retrieved' records of orbax reads."""
    if "exception was never retrieved" not in str(record.msg):
        return True
    text = record.getMessage()
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        text += tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return "orbax" not in text and "tensorstore" not in text.lower()


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a warning per missing or bad metadata file it meets while listing or
    restoring checkpoints; an unreadable checkpoint is reported in one line of our own
    instead (`training.resume`), and one that restores needs no report."""
    _ignore_orbax_sibling_reads()
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def gather_json(value: Any) -> list[Any]:
    """Every process's `value`, in process order: a collective every process must call.

    Args:
      value: any JSON-serialisable value (this process's).

    Returns:
      A list of P values (P = `jax.process_count()`), element i being process i's; with
      one process, `[value]` with no communication.

    Raises:
      TypeError: `value` is not JSON-serialisable.
    """
    if jax.process_count() == 1:
        return [value]
    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(raw.size))).reshape(-1)
    width = 1 << max(8, int(sizes.max() - 1).bit_length())  # few widths: few compiles
    buffer = np.zeros(width, np.uint8)
    buffer[: raw.size] = raw
    gathered = np.asarray(multihost_utils.process_allgather(buffer)).reshape(len(sizes), width)
    return [json.loads(gathered[i, : sizes[i]].tobytes().decode()) for i in range(len(sizes))]


def _path_name(path) -> str:
    """`params/block_0/dense/kernel` from a JAX key path, whatever the containers (the
    names `ocp.tree.to_flat_dict` gives the saved arrays)."""
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


def abstract_target(template: Any) -> Any:
    """The restore target of a template: arrays -> `jax.ShapeDtypeStruct` with their sharding.

    Args:
      template: a pytree whose leaves are `jax.Array`s (restored laid out with the same
        sharding), `jax.ShapeDtypeStruct`s (kept; with a `sharding`, restored as a
        `jax.Array` so laid out, without one as NumPy), or NumPy arrays and scalars
        (restored as NumPy of their dtype).

    Returns:
      The same structure; no data is copied.

    Raises:
      Nothing of its own.
    """

    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.ShapeDtypeStruct):
            # without a sharding Orbax would rebuild the saved one (the devices that
            # wrote it); NumPy of that shape and dtype instead (np.empty: no data touched)
            return x if x.sharding is not None else np.empty(x.shape, x.dtype)
        return np.asarray(x)

    return jax.tree_util.tree_map(leaf, template)


def _split_factors(sharding, ndim: int) -> tuple[int, ...] | None:
    """How many ways a `NamedSharding` splits each of `ndim` axes; None for other kinds."""
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return None
    spec = tuple(sharding.spec) + (None,) * (ndim - len(tuple(sharding.spec)))
    sizes = dict(sharding.mesh.shape)
    factors = []
    for entry in spec[:ndim]:
        names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        factors.append(math.prod(sizes[n] for n in names))
    return tuple(factors)


def _layout_problem(target: Any, metadata: dict[str, Any]) -> str | None:
    """One line naming the first target array whose sharding cannot hold its saved shape."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            continue
        name = _path_name(path)
        shape = tuple(getattr(metadata.get(name), "shape", np.shape(leaf)))
        try:
            sharding.shard_shape(shape)
        except ValueError:
            pass
        else:
            continue
        saved = getattr(metadata.get(name), "sharding", None)
        written = (
            f" (written split as P{tuple(saved.partition_spec)!r} over "
            f"{math.prod(int(n) for n in saved.shape)} devices)"
            if saved is not None and hasattr(saved, "partition_spec")
            else ""
        )
        factors = _split_factors(sharding, len(shape))
        if factors is None:
            return f"{name} {list(shape)}{written} does not divide over {sharding}"
        axis = next(i for i, (d, f) in enumerate(zip(shape, factors, strict=True)) if d % f)
        return (
            f"{name} {list(shape)}{written} would be split {factors[axis]} ways along axis "
            f"{axis} on the {sharding.mesh.size} device(s) here, which does not divide "
            f"{shape[axis]}"
        )
    return None


def _is_layout_error(error: BaseException | None) -> bool:
    """Whether Orbax/JAX failed to lay an array out on the target devices."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ == "IndivisibleError" or "Topology mismatch" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _check_shared(directory: str) -> None:
    """Refuses a checkpoint directory that not every process sees (a collective).

    Process 0 writes a token file; every other process must read the same token.
    """
    primary = jax.process_index() == 0
    probe = os.path.join(directory, _SHARED_PROBE)
    token, error = (uuid.uuid4().hex if primary else None), None
    if primary:
        try:
            with open(probe, "w") as f:
                f.write(token)
        except OSError as e:
            error = _one_line(e)
    token, error = gather_json([token, error])[0]
    if error is not None:
        raise ConfigError(f"cannot write checkpoints to {directory}: {error}.")
    try:
        with open(probe) as f:
            sees = f.read() == token
    except OSError:
        sees = False
    seen = gather_json(sees)
    if primary:
        with contextlib.suppress(OSError):
            os.remove(probe)
    blind = [i for i, ok in enumerate(seen) if not ok]
    if blind:
        raise ConfigError(
            f"{directory} is not shared by the processes of this run: process(es) "
            f"{', '.join(map(str, blind))} cannot see the file process 0 wrote there. Every "
            "process writes its shards of each checkpoint into that one directory, so give "
            "every process the same --workdir on a file system they all reach (NFS, a "
            "cluster file system, gcsfuse...; docs/scaling.md)."
        )


class Checkpointer:
    """Saves and restores `(state, meta)` pairs under one directory, keyed by epoch.

    Args:
      directory: where the per-epoch checkpoint directories go; created if needed. In a
        multi-process run, the same directory (on a shared file system) for every process.
      keep: how many of the newest checkpoints to retain (>= 1).
      all_processes: True (default): every process of the run constructs one and calls
        `save` and `set_aside` together, each writing its own shards. False: the earlier
        mode: only this process (process 0) uses the directory, states are fetched to
        the host as NumPy before saving, and other processes get nothing from it.

    Raises:
      ValueError: keep < 1.
      OSError: `directory` cannot be created.
      ConfigError: (all_processes, several processes) some process cannot see the files
        process 0 writes in `directory`: it is not on a shared file system.

    Implements the checkpoints (DESIGN.md, Decisions: checkpoints with Orbax).
    """

    def __init__(self, directory: str, keep: int, *, all_processes: bool = True):
        if keep < 1:
            raise ValueError(f"keep={keep}: at least the newest checkpoint must be kept (>= 1).")
        self.directory = os.path.abspath(directory)
        self.all_processes = all_processes
        self._primary = jax.process_index() == 0 or not all_processes
        if all_processes:  # every process writes its shards; Orbax syncs them
            processes = ocp.options.MultiprocessingOptions(
                primary_host=0, barrier_sync_key_prefix=os.path.basename(self.directory)
            )
        else:  # this process alone reads and writes: no barriers with other processes
            processes = ocp.options.MultiprocessingOptions(
                primary_host=jax.process_index(), active_processes={jax.process_index()}
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            create=False,  # made below: orbax refuses create with active_processes
            cleanup_tmp_directories=True,  # half-written checkpoints of a killed run
            enable_async_checkpointing=False,  # save() returns once the rename is done
            multiprocessing_options=processes,
        )
        os.makedirs(self.directory, exist_ok=True)
        if all_processes and jax.process_count() > 1:
            _check_shared(self.directory)
        # reads go straight to the handlers: no barriers, so a read failing on one process
        # cannot leave the others waiting (`training.resume` agrees on the outcome)
        self._state_handler = ocp.StandardCheckpointHandler(multiprocessing_options=processes)
        self._meta_handler = ocp.JsonCheckpointHandler(multiprocessing_options=processes)
        with _quiet_orbax():  # it reads every checkpoint's metadata; a bad one is ours to report
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "meta")
            )
        # (epoch, reason) of the checkpoints `restore_latest` passed over as unreadable
        self.skipped: list[tuple[int, str]] = []

    def _item(self, epoch: int, item: str) -> epath.Path:
        return epath.Path(self.directory) / str(epoch) / item

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes the checkpoint of `epoch` (atomically) and prunes older ones beyond `keep`.

        With `all_processes`, every process calls it with the same global state; each
        writes the shards its devices hold (a replicated array is written once).

        Args:
          epoch: the epoch just completed (1-based); the checkpoint's directory name.
          state: a pytree of arrays: global `jax.Array`s of any sharding (the train
            state on the mesh), or NumPy arrays and scalars; any shapes and dtypes.
          meta: a JSON-serialisable dict, stored as given (process 0's is written).

        Raises:
          orbax's StepAlreadyExistsError: a checkpoint of `epoch` already exists.
          OSError (or an error caused by one): the disk is full or not writable; the
            checkpoints written before are intact.
        """
        if not self.all_processes:
            state = jax.device_get(state)
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self._manager.wait_until_finished()

    def epochs(self) -> list[int]:
        """The epochs with a complete checkpoint, ascending (a list of ints)."""
        return sorted(self._manager.all_steps())

    def restore_meta(self, epoch: int) -> dict[str, Any]:
        """Reads the meta dict of one checkpoint (on this process only).

        Returns:
          The dict saved with the checkpoint, unchanged.

        Raises:
          UnreadableCheckpoint: its meta is missing or not a JSON dict.
        """
        try:
            with _quiet_orbax():
                meta = self._meta_handler.restore(self._item(epoch, "meta"))
        except Exception as e:  # orbax/JSON/OS errors alike: the files are bad
            raise UnreadableCheckpoint(epoch, _one_line(e)) from e
        if not isinstance(meta, dict):
            raise UnreadableCheckpoint(epoch, f"its meta is a {type(meta).__name__}, not a dict")
        return meta

    def saved_metadata(self, epoch: int) -> dict[str, Any]:
        """Orbax's metadata of each saved array, read without reading the arrays.

        Returns:
          `{name: ArrayMetadata}`, names like `params/block_0/dense/kernel`; each value
          has `.shape` (tuple), `.dtype` and `.sharding` (how it was written: None for a
          NumPy state, else a `NamedShardingMetadata` with the mesh shape and spec).

        Raises:
          UnreadableCheckpoint: its metadata files are missing or damaged.
        """
        try:
            with _quiet_orbax():
                tree = self._state_handler.metadata(self._item(epoch, "state")).tree
            return {"/".join(k): v for k, v in ocp.tree.to_flat_dict(tree).items()}
        except Exception as e:
            raise UnreadableCheckpoint(epoch, _one_line(e)) from e

    def saved_shapes(self, epoch: int) -> dict[str, tuple[int, ...]]:
        """`{name: shape}` of each saved array, from Orbax's metadata (no data read).

        Raises:
          UnreadableCheckpoint: its metadata files are missing or damaged.
        """
        return {k: tuple(getattr(v, "shape", ())) for k, v in self.saved_metadata(epoch).items()}

    def restore_state(self, epoch: int, template: Any) -> Any:
        """Reads the state of one checkpoint into the structure and layout of `template`.

        Reads on this process only: with several processes each reads what its devices
        hold of the result (no collectives; `training.resume.restore` agrees across them).

        Args:
          epoch: a value of `epochs()`.
          template: a pytree with the structure, shapes and dtypes of the saved state:
            the freshly initialised state placed on the current mesh (its `jax.Array`s
            give the layout of the result), `jax.ShapeDtypeStruct`s with a sharding, or
            NumPy arrays (restored as NumPy). See `abstract_target`.

        Returns:
          The state, like `template`: `jax.Array`s laid out with the template's
          shardings (whatever the device count it was written on), NumPy where the
          template has NumPy.

        Raises:
          UnreadableCheckpoint: its files cannot be read (damaged, truncated).
          CheckpointMismatch: it reads, but its arrays do not fit `template` (names the
            first array that differs; shapes from the saved metadata).
          CheckpointLayoutError: it fits, but an array cannot be laid out with the
            template's sharding (an axis split a number of ways that does not divide it).
        """
        metadata = self.saved_metadata(epoch)
        saved = {k: tuple(getattr(v, "shape", ())) for k, v in metadata.items()}
        difference = _first_difference(saved, _shapes(template))
        if difference is not None:
            raise CheckpointMismatch(epoch, difference)
        target = abstract_target(template)
        problem = _layout_problem(target, metadata)
        if problem is not None:
            raise CheckpointLayoutError(epoch, problem)
        try:
            with _quiet_orbax():
                return self._state_handler.restore(
                    self._item(epoch, "state"), args=ocp.args.StandardRestore(target)
                )
        except Exception as e:
            if _is_layout_error(e):
                raise CheckpointLayoutError(epoch, _one_line(e)) from e
            raise UnreadableCheckpoint(epoch, _one_line(e)) from e

    def restore_as_saved(self, epoch: int) -> Any:
        """Reads the state of one checkpoint as NumPy, without a template, on any devices.

        Returns:
          The saved structure as nested dicts (and lists) of NumPy arrays, each with its
          saved shape and dtype, whatever devices it was written from.

        Raises:
          UnreadableCheckpoint: its files cannot be read.
        """

        def host(meta):
            shape, dtype = tuple(getattr(meta, "shape", ())), getattr(meta, "dtype", None)
            return np.empty(shape, dtype or np.float32)  # carries shape and dtype only

        try:
            with _quiet_orbax():
                path = self._item(epoch, "state")
                target = jax.tree_util.tree_map(host, self._state_handler.metadata(path).tree)
                return self._state_handler.restore(path, args=ocp.args.StandardRestore(target))
        except Exception as e:
            raise UnreadableCheckpoint(epoch, _one_line(e)) from e

    def restore_latest(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
        """Reads the newest checkpoint that can be read, passing over unreadable ones.

        Reads on this process only; a multi-process run resumes through
        `training.resume.restore`, which agrees across the processes.

        Args:
          template: as in `restore_state` (e.g. the freshly initialised, placed state).

        Returns:
          None if there is no readable checkpoint, else `(state, meta)`: the state like
          `template` (see `restore_state`) and the meta dict. The newer checkpoints
          passed over are listed in `self.skipped` as `(epoch, reason)`.

        Raises:
          CheckpointMismatch (a ConfigError, a ValueError): the newest readable checkpoint
            does not fit `template` (another model's, or its files were edited).
          CheckpointLayoutError (a ConfigError): it cannot be laid out like `template`.
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
        With `all_processes` every process calls it: process 0 moves the directory, the
        others wait for it (a barrier), then all see the same checkpoints.

        Returns:
          The new path (str).

        Raises:
          OSError: the move failed (on every process alike).
        """
        target, error = None, None
        if self._primary:
            parent = os.path.join(os.path.dirname(self.directory), SET_ASIDE_DIR)
            try:
                os.makedirs(parent, exist_ok=True)
                target, n = os.path.join(parent, str(epoch)), 1
                while os.path.exists(target):
                    n += 1
                    target = os.path.join(parent, f"{epoch}.{n}")
                os.rename(os.path.join(self.directory, str(epoch)), target)
            except OSError as e:
                if not self.all_processes or jax.process_count() == 1:
                    raise
                error = _one_line(e)
        if self.all_processes:
            target, error = gather_json([target, error])[0]
        if error is not None:
            raise OSError(f"cannot move checkpoint {epoch} aside: {error}")
        with _quiet_orbax():
            self._manager.reload()
        return target

    def close(self) -> None:
        """Waits for pending work and releases the manager."""
        self._manager.close()
