"""Data parallelism on a 1-D `('data',)` mesh: one code path for 1 device, N devices, N hosts.

Usage::

    initialize_distributed(coordinator_address, num_processes, process_id)  # multi-host only
    mesh = make_mesh()                          # every device, grouped by process
    check_divisible(batch_size, mesh, "batch_size")
    images = put_replicated(images_u8, mesh)    # [N, H, W, C] on every device
    step = data_parallel(lambda s, im, idx: ..., mesh)
    state, metrics = step(state, images, put_batch(idx, mesh))   # idx: [B] sharded

Parameters, optimizer state and (small) datasets are replicated; the batch (its example
indices) is split over the devices along `data`. Under `jax.jit` the step is written for the
*global* batch, so BatchNorm statistics and the B x B similarity matrices of the local losses
(METHOD.md, "Local losses") cover all B examples, as on one device: XLA inserts the
collectives. The math is the same; float summation order is not, so 1 and 4 devices agree
to about 1e-5 over 32 steps and drift apart to about 1e-3 in loss over hundreds of steps
(docs/scaling.md). There are no per-device branches (DESIGN.md, Decisions: data parallel).

Letters: B global batch, n devices in the mesh, P processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from localjax.errors import ConfigError

__all__ = [
    "initialize_distributed",
    "make_mesh",
    "replicated",
    "batch_sharding",
    "check_divisible",
    "put_replicated",
    "put_batch",
    "data_parallel",
    "is_primary",
]

AXIS = "data"


def initialize_distributed(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
) -> bool:
    """Joins a multi-process run with `jax.distributed.initialize()` when one is asked for.

    A run is multi-process when a coordinator is given, as an argument or in the standard
    `JAX_COORDINATOR_ADDRESS` environment variable. The process count and this process's id
    come from the arguments, else from `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`, else from JAX's
    cluster auto-detection (SLURM, Open MPI, ...). Call it before any other JAX computation.

    Args:
      coordinator_address: `host:port` of process 0's coordinator; "" = none given.
      num_processes: P; 0 = from the environment.
      process_id: this process's id in [0, P); -1 = from the environment.

    Returns:
      True if this call initialised (or found initialised) a multi-process run, False for an
      ordinary single-process run.

    Raises:
      ConfigError (a ValueError): a coordinator is given but P or the process id cannot
        be determined, or
        JAX already ran computations in this process (the message says how to fix it).

    Multi-host runs (DESIGN.md, Decisions: data parallel: `jax.distributed.initialize()`).
    """
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if not address:
        return False
    if num_processes <= 0 and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id < 0 and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(
            address,
            num_processes=num_processes if num_processes > 0 else None,
            process_id=process_id if process_id >= 0 else None,
        )
    except (RuntimeError, ValueError) as e:
        raise ConfigError(
            f"cannot join the multi-process run at {address}: {e}. Give every process the "
            "same coordinator address, num_processes = P and a distinct process_id in [0, P) "
            "(config fields or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), "
            "and initialise before any other JAX call."
        ) from e
    return True


def is_primary() -> bool:
    """True on process 0, the only one that writes logs, metrics and checkpoints.

    Returns:
      Python bool.

    Raises:
      Nothing of its own.

    Multi-host runs (DESIGN.md, Decisions: data parallel).
    """
    return jax.process_index() == 0


def make_mesh(num_devices: int = 0) -> Mesh:
    """The 1-D `('data',)` mesh over the devices, ordered by (process, device id).

    Ordering by process makes each process's devices hold a contiguous slice of every
    global batch.

    Args:
      num_devices: use the first n devices; 0 = all of them (the only choice that makes
        sense with several processes).

    Returns:
      A `jax.sharding.Mesh` of shape `(n,)` with axis name `data`.

    Raises:
      ConfigError (a ValueError): n exceeds the device count, or n leaves some process
        without devices.

    The 1-D mesh (DESIGN.md, Decisions: data parallel; modules: sharding.py).
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    if num_devices:
        if num_devices > len(devices):
            raise ConfigError(
                f"num_devices={num_devices} but only {len(devices)} devices are visible; "
                "lower num_devices (0 = all) or expose more devices."
            )
        if jax.process_count() > 1 and num_devices != len(devices):
            raise ConfigError(
                f"num_devices={num_devices} with {jax.process_count()} processes would leave "
                f"devices idle; use num_devices=0 (all {len(devices)} devices)."
            )
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters, optimizer state, datasets and metrics: a full copy per device.

    Args:
      mesh: the data mesh.

    Returns:
      A `NamedSharding` with an empty `PartitionSpec` (any shape, any dtype).

    Raises:
      Nothing of its own.

    Params replicated (DESIGN.md, Decisions: data parallel).
    """
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch: its leading axis split over `data`, B / n rows per device.

    Args:
      mesh: the data mesh (n devices).

    Returns:
      A `NamedSharding` with `PartitionSpec('data')`, for arrays `[B, ...]` of any dtype.

    Raises:
      Nothing of its own (placing an array whose B is not a multiple of n fails later).

    Batch sharded (DESIGN.md, Decisions: data parallel).
    """
    return NamedSharding(mesh, PartitionSpec(AXIS))


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Refuses, up front, a batch that cannot be split evenly over the mesh.

    Args:
      batch_size: the global batch size B.
      mesh: the data mesh (n devices).
      what: the option's name, for the message.

    Raises:
      ConfigError (a ValueError): B <= 0 or B % n != 0; the message names both numbers and
        the nearest valid sizes.

    The divisibility check (DESIGN.md, Decisions: data parallel; modules: sharding.py).
    """
    n = mesh.size
    if batch_size <= 0 or batch_size % n:
        lower, upper = max(n, batch_size // n * n), (batch_size // n + 1) * n
        raise ConfigError(
            f"{what}={batch_size} does not divide over {n} devices: every device must get the "
            f"same number of examples. Use a multiple of {n} (e.g. {lower} or {upper}), or "
            f"run on a device count that divides {batch_size} (config field num_devices)."
        )


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Host arrays -> global arrays with a full copy on every device of the mesh.

    Every process must pass the same values; each transfers only to its own devices.

    Args:
      tree: a pytree of NumPy (or JAX) arrays, any shapes and dtypes.
      mesh: the data mesh.

    Returns:
      The same pytree of `jax.Array`s, replicated over `mesh`, dtypes unchanged.

    Raises:
      Nothing of its own.

    Datasets and params replicated (DESIGN.md, Decisions: data parallel; data on device).
    """
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def put_batch(batch: Any, mesh: Mesh) -> Any:
    """The global batch -> arrays split over `data` (each process feeds only its share).

    A batch whose size does not divide over the mesh (an epoch's last partial batch, or an
    evaluation batch at the end of the test set) is replicated instead: every device then
    computes the same full-batch step, which keeps the global-batch semantics exact at the
    cost of one extra compilation. Callers check the regular batch size with
    `check_divisible` first.

    Args:
      batch: a pytree of host arrays with a common leading axis B (e.g. `[B]` int32
        indices); every process passes the same global values.
      mesh: the data mesh.

    Returns:
      The same pytree of global `jax.Array`s, shapes and dtypes unchanged.

    Raises:
      IndexError: `batch` has no leaves, or its first leaf has no leading axis.

    Batch sharded (DESIGN.md, Decisions: data parallel).
    """
    leaves = jax.tree_util.tree_leaves(batch)
    size = np.shape(leaves[0])[0]
    sharding = batch_sharding(mesh) if size % mesh.size == 0 else replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, batch)


def data_parallel(fn: Callable, mesh: Mesh, donate_first: bool = True) -> Callable:
    """Jits `fn(state, *inputs) -> (state, outputs)` for the mesh, outputs replicated.

    Inputs keep the shardings they were placed with (`put_replicated`, `put_batch`); the
    program is compiled for the global shapes, so every reduction over the batch (BatchNorm
    statistics, similarity matrices, metric sums) is global.

    Args:
      fn: a pure function; its first argument is the state pytree.
      mesh: the data mesh.
      donate_first: donate the state's buffers to the update (in-place on device).

    Returns:
      The jitted function (same argument and output shapes and dtypes as `fn`); all of
      its outputs are replicated over `mesh`.

    Raises:
      Nothing of its own; errors of `fn` surface when the returned function is traced.

    State donated, outputs replicated (DESIGN.md, Decisions: data parallel).
    """
    return jax.jit(fn, out_shardings=replicated(mesh), donate_argnums=(0,) if donate_first else ())
