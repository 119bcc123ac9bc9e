"""Pipelined local learning: the blocks on different devices, the fused step's numbers
(issue 16; docs/pipeline.md).

Usage::

    mesh = make_pipeline_mesh(jax.devices(), num_stages=2)       # ('stage', 'data')
    pipe = make_pipeline(model, tx, state, mesh, sample=(images[:2], labels[:2]),
                         batch_size=128, preprocess=augment, seed=0)
    state, totals, n = run_epoch(pipe, state, images, labels, batches, sync_every=16)

Local losses remove backward locking: a block's update needs its own input and its own
heads, never a gradient from a later block. So stage s can train its blocks on batch
t − s while stage s + 1 trains on batch t − s − 1. Each block still takes exactly one
update per batch, in batch order, and block k's input for batch b is block k − 1's output
computed with the parameters the sequential step would have used, so the pipeline computes
the numbers of `make_train_step` (the fused step), skewed in time.

Layout. The devices form a 2-D mesh `('stage', 'data')`. Each stage's slice of the
`TrainState` (its blocks' parameters, BatchNorm statistics, fixed matrices, optimizer
state and step count; the output layer's on the last stage) is laid out in slots
(`stage_layout.StageLayout`: the k-th largest leaf of every stage shares slot k, padded
to the largest); the `[S, L]` slot buffers are sharded over `stage` and replicated over
`data`, so a stage's state lives on its own devices only. The batch
is sharded over `data` within a stage; BatchNorm statistics and similarity matrices stay
global over the batch, as in the data-parallel step.

One tick (`Pipeline.tick`, inside `shard_map` over `stage`, `data` left to the
partitioner): every stage unpacks its state, runs its blocks on the activation it
received (stage 0: the augmented batch it was fed) with `lax.switch` on its stage index,
takes each block's local gradient, updates its state, and sends the cut output with the
labels, as one message of bytes, to the next stage with `ppermute`. Which stages hold a
batch at a tick is known on the host (`Pipeline.schedule`) and fed in with the indices.
A stage that holds no batch (pipeline fill and drain) computes on zeros and keeps its
state (`jnp.where`, in a program compiled for those ticks only: `steady=False`); its step
count, and with it the optimizer's count and learning-rate schedule, counts valid updates
only. Dropout and augmentation draw from `fold_in(seed, step)` and the block's name, as
the fused step does, so both draw the same masks.

An epoch (`run_epoch`): pack the state, feed the batches one tick each, drain (S − 1
ticks), then unpack into the ordinary replicated `TrainState`: evaluation, checkpoints and
resume see the same pytree as without a pipeline, and a resume with another stage count
simply packs it differently. A last, smaller batch goes through the pipeline on its own
(its own compiled shape) after the full ones have drained.

Letters: S stages, D data devices per stage, B batch, T ticks per call, L slot length,
A padded activation width (elements per example), W message width (bytes per example).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from localjax import losses
from localjax.errors import ConfigError

# `_run_layers` is LocalNetwork.sweep's block loop, run here on one stage's slice of layers
from localjax.network import LocalNetwork, _run_layers, cut, output_loss_weight
from localjax.objective import step_metrics, total_loss
from localjax.ops.conv_wgrad import conv_wgrad_context
from localjax.training.stage_layout import (
    StageLayout,
    flat_width,
    from_flat,
    from_message,
    message_width,
    to_flat,
    to_message,
)
from localjax.training.stages import (
    StagePlan,
    balance_cuts,
    block_flops,
    check_cuts,
    num_blocks,
    plan_stages,
)
from localjax.training.state import TrainState
from localjax.training.steps import _step_keys, block_value_and_grad

__all__ = [
    "STAGE",
    "DATA",
    "make_pipeline_mesh",
    "check_batch_divisible",
    "check_pipelinable",
    "describe",
    "Pipeline",
    "make_pipeline",
    "SkewedMetrics",
    "run_epoch",
    "to_host",
]

STAGE, DATA = "stage", "data"


def make_pipeline_mesh(devices: Any, num_stages: int) -> Mesh:
    """The 2-D `('stage', 'data')` mesh: S rows of D = n / S devices.

    Consecutive devices (in `devices`' order, e.g. a data mesh's, grouped by process)
    form a stage, so a stage's data-parallel collectives stay within a process where
    they can.

    Args:
      devices: a sequence of devices, an array of them, or a `Mesh` (its devices in
        order).
      num_stages: S >= 1.

    Returns:
      A `Mesh` of shape `(S, n / S)` with axis names `('stage', 'data')`.

    Raises:
      ConfigError: S < 1, or n not divisible by S.

    Implements issue 16 item 1 (a stage × data mesh) and item 4 (refusal).
    """
    flat = np.asarray(getattr(devices, "devices", devices), dtype=object).reshape(-1)
    n = flat.size
    if num_stages < 1 or n % num_stages:
        raise ConfigError(
            f"pipeline_stages={num_stages} does not divide the {n} devices: every stage "
            f"gets the same number of data-parallel devices; use a pipeline_stages that "
            f"divides {n} (or set num_devices to a multiple of {num_stages}, with a "
            "batch_size and an eval_batch_size that divide over them)."
        )
    return Mesh(flat.reshape(num_stages, n // num_stages), (STAGE, DATA))


def check_pipelinable(model: Any, num_stages: int, loss: str | None = None) -> None:
    """Refuses, in one line, a network whose blocks cannot train as a pipeline.

    Args:
      model: the network (a `LocalNetwork` with `detach=True` can be pipelined).
      num_stages: S.
      loss: the config's loss name, for the message (None: unknown).

    Raises:
      ConfigError: the backprop baseline or deep supervision (`detach=False`: the
        gradient crosses blocks), a model that is not a `LocalNetwork`, or more stages
        than blocks, or S < 1 (for any S >= 1: `make_pipeline` builds S = 1 too; the loop
        uses the fused step there).

    Implements issue 16 item 4.
    """
    if loss == "backprop" or (isinstance(model, LocalNetwork) and not model.detach):
        what = (
            "the backprop baseline (loss=backprop)"
            if loss == "backprop"
            else "deep supervision (detach=False)"
        )
        raise ConfigError(
            f"pipeline_stages={num_stages} with {what}: its gradient crosses the blocks, so "
            "they cannot train on separate devices; use pipeline_stages=1, or local "
            "learning (loss pred/sim/predsim with detach=True)."
        )
    if not isinstance(model, LocalNetwork):
        raise ConfigError(
            f"pipeline_stages={num_stages} needs a LocalNetwork (blocks cut from each "
            f"other); got {type(model).__name__}."
        )
    check_cuts(range(1, num_stages), num_blocks(model), num_stages)


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """Refuses a batch that does not split evenly over one stage's data devices.

    Args:
      batch_size: the global batch size B.
      mesh: the `('stage', 'data')` mesh (D devices per stage).

    Raises:
      ConfigError: B < 1 or B % D != 0; the message names both numbers.

    Implements issue 16 item 4 (a batch that does not divide over the data axis).
    """
    stages, data = mesh.shape[STAGE], mesh.shape[DATA]
    if batch_size < 1 or batch_size % data:
        raise ConfigError(
            f"batch_size={batch_size} does not divide over the {data} data-parallel devices "
            f"of each of the {stages} pipeline stages; use a multiple of {data} (e.g. "
            f"{max(data, batch_size // data * data)} or {(batch_size // data + 1) * data})."
        )


def describe(pipe: Pipeline) -> str:
    """One line for the run's banner: stages, their blocks and their share of the FLOPs.

    Args:
      pipe: a `Pipeline`.

    Returns:
      str to append to the banner, with its leading comma, e.g. `, pipelined over 2 stages
      x 2 data devices: blocks 0-1 | 2 (FLOPs 52% | 48%), state padding 3%`.
    """
    total = sum(pipe.stage_flops) or 1.0
    blocks = " | ".join(
        f"{p.block_indices[0]}" + (f"-{p.block_indices[-1]}" if len(p.block_indices) > 1 else "")
        for p in pipe.plans
    )
    shares = " | ".join(f"{100 * f / total:.0f}%" for f in pipe.stage_flops)
    return (
        f", pipelined over {pipe.num_stages} stages x {pipe.data_size} data "
        f"device{'s' if pipe.data_size > 1 else ''}: blocks "
        f"{blocks} (FLOPs {shares}), state padding {100 * pipe.padding_waste():.0f}%"
    )


def _mirrors_params(names: frozenset) -> Callable[[Any], bool]:
    """Whether a subtree of the optimizer state is shaped like the params (mu, nu, ...)."""
    return lambda x: isinstance(x, Mapping) and frozenset(x) == names


def _stage_state(state: TrainState, names: Sequence[str]) -> dict[str, Any]:
    """A stage's slice of the state: its variables, optimizer state and step."""
    mirrors = _mirrors_params(frozenset(state.params))
    keep = [n for n in names if n in state.params]
    opt_state = jax.tree.map(
        lambda sub: {n: sub[n] for n in keep} if mirrors(sub) else sub,
        state.opt_state,
        is_leaf=mirrors,
    )

    def take(tree):
        return {n: tree[n] for n in names if tree and n in tree}

    return {
        "params": take(state.params),
        "batch_stats": take(state.batch_stats),
        "constants": take(state.constants),
        "opt_state": opt_state,
        "step": state.step,
    }


# -- the pipeline -----------------------------------------------------------------------


@dataclasses.dataclass
class Pipeline:
    """A compiled-on-demand pipeline of one network over a `('stage', 'data')` mesh.

    Built by `make_pipeline`; holds the stages and the jitted programs.

    Attributes:
      mesh: the `('stage', 'data')` mesh.
      plans: one `StagePlan` per stage.
      cuts: the first block index of stages 1..S−1.
      stage_flops: counted FLOPs of each stage's update for one batch (`block_flops`).
      layout: the `StageLayout` of the stages' state in the buffers.
      lengths: `{slot: L}`, each state buffer's length per stage (`layout.lengths`).
      act_width: A, elements per example of the padded activation sent between stages.
      cut_widths: elements per example of each cut's own activation (S − 1 widths, A
        the largest), for the bytes the padding adds.
      act_dtype: dtype of that activation.
      label_dtype: dtype of the labels sent with it.
      metric_keys: the metric names, as the fused step's `step_metrics` names them.
      pack: jitted `TrainState` (replicated) -> `{slot: [S, L]}` sharded over `stage`.
      unpack: jitted inverse, -> `TrainState` replicated over `state_mesh`.
      stage_fns: per stage, the un-jitted work of one tick `(buffers {slot: [L]},
        activation [B, A], labels [B], valid, images, all labels, idx [B]) ->
        (buffers, output [B, A], labels, metrics)` (for timing a stage alone).
      tick: jitted `(buffers, carry, images, all_labels, idx [T, B], valid [T, S] bool,
        steady=False) -> (buffers, carry, metrics)`, the arrays of `put_feed`, with
        `metrics` `[T, S, K + 2]` uint32 words (`metrics_dict` reads them: float32 sums of
        the batch each stage held, int32 `step`, bool `valid`); the carry is donated,
        the state buffers are not (each stage writes fresh ones). `steady=True`
        (static) compiles the program for ticks in which every stage holds a batch (no
        keep-the-state select): only for those.

    Raises:
      Nothing of its own.

    Implements issue 16 items 1 and 2.
    """

    mesh: Mesh
    plans: list[StagePlan]
    cuts: tuple[int, ...]
    stage_flops: list[float]
    layout: StageLayout
    lengths: dict[str, int]
    act_width: int
    act_dtype: Any
    label_dtype: Any
    metric_keys: tuple[str, ...]
    stage_fns: list[Callable]
    pack: Callable
    unpack: Callable
    tick: Callable
    cut_widths: tuple[int, ...] = ()

    @property
    def num_stages(self) -> int:
        """S."""
        return self.mesh.shape[STAGE]

    @property
    def data_size(self) -> int:
        """D, the devices of one stage."""
        return self.mesh.shape[DATA]

    def batch_axis(self, batch_size: int) -> str | None:
        """`'data'` when a batch of `batch_size` divides over D, else None (replicated,
        as `sharding.put_batch` replicates an indivisible last batch)."""
        return DATA if batch_size % self.data_size == 0 else None

    @property
    def message_width(self) -> int:
        """W, bytes per example of what a stage sends the next (activation and label)."""
        return message_width(self.act_width, self.act_dtype, self.label_dtype)

    def carry_shape(self, batch_size: int) -> jax.ShapeDtypeStruct:
        """The in-flight messages' global shape, dtype and sharding: `[S, B, W]` uint8,
        sharded over `stage` (and `data`)."""
        sharding = NamedSharding(self.mesh, PartitionSpec(STAGE, self.batch_axis(batch_size)))
        return jax.ShapeDtypeStruct(
            (self.num_stages, batch_size, self.message_width), jnp.uint8, sharding=sharding
        )

    def init_carry(self, batch_size: int) -> jax.Array:
        """Empty in-flight state for batches of `batch_size`: each stage's last received
        message (`stage_layout.to_message`), `[S, B, W]` uint8 zeros (`carry_shape`)."""
        spec = self.carry_shape(batch_size)
        zeros = jax.jit(  # made on the devices (every process its own shards)
            lambda: jnp.zeros(spec.shape, spec.dtype), out_shardings=spec.sharding
        )
        return zeros()

    def schedule(self, ticks: Sequence[int], batches: int) -> np.ndarray:
        """Which stages hold a batch at each tick: `[T, S]` bool.

        Stage s holds batch t − s at tick t (ticks and batches counted from the start of
        a run of `batches` equal-size batches), so it holds one iff 0 <= t − s < batches:
        the pipeline fills for S − 1 ticks and drains for S − 1.
        """
        t = np.asarray(ticks)[:, None] - np.arange(self.num_stages)[None, :]
        return (t >= 0) & (t < batches)

    def put_feed(self, idx: np.ndarray, valid: np.ndarray) -> tuple[jax.Array, jax.Array]:
        """Host `[T, B]` int32 example indices (stage 0 gathers them) and `[T, S]` bool
        valid flags (`schedule`) -> device arrays (indices sharded over `data` and
        replicated over `stage`; each stage gets its column of the flags).

        Raises:
          ValueError: valid is not `[T, S]` for the T of `idx`.
        """
        idx = np.asarray(idx, np.int32)
        valid = np.asarray(valid, bool)
        if valid.shape != (idx.shape[0], self.num_stages):
            raise ValueError(
                f"valid must be [T, S] = {(idx.shape[0], self.num_stages)} (which stages "
                f"hold a batch at each tick: Pipeline.schedule); got {valid.shape}."
            )
        axis = self.batch_axis(idx.shape[1])
        idx_sharding = NamedSharding(self.mesh, PartitionSpec(None, axis))
        valid_sharding = NamedSharding(self.mesh, PartitionSpec(None, STAGE))
        return (
            jax.make_array_from_callback(idx.shape, idx_sharding, lambda i: idx[i]),
            jax.make_array_from_callback(valid.shape, valid_sharding, lambda i: valid[i]),
        )

    def feed_shapes(self, ticks: int, batch_size: int) -> tuple[jax.ShapeDtypeStruct, ...]:
        """The global shapes, dtypes and shardings of `put_feed`'s arrays, e.g. to lower
        `tick` without data."""
        axis = self.batch_axis(batch_size)
        return (
            jax.ShapeDtypeStruct(
                (ticks, batch_size),
                jnp.int32,
                sharding=NamedSharding(self.mesh, PartitionSpec(None, axis)),
            ),
            jax.ShapeDtypeStruct(
                (ticks, self.num_stages),
                jnp.bool_,
                sharding=NamedSharding(self.mesh, PartitionSpec(None, STAGE)),
            ),
        )

    def metrics_dict(self, words: np.ndarray) -> dict[str, np.ndarray]:
        """A tick's metrics output on the host, `[T, S, K + 2]` uint32 words, as
        `{key: [T, S]}`: `metric_keys` as float32 sums, `step` (int32: the update the
        stage made, counted from 0) and `valid` (bool: whether the stage held a batch)."""
        words = np.asarray(words, np.uint32)
        out = {key: words[..., i].view(np.float32) for i, key in enumerate(self.metric_keys)}
        out["step"] = words[..., len(self.metric_keys)].view(np.int32)
        out["valid"] = words[..., len(self.metric_keys) + 1].astype(bool)
        return out

    def padding_waste(self) -> float:
        """The fraction of the state buffers (bytes, all stages) that is padding."""
        return self.layout.padding_waste()

    def state_bytes_per_device(self) -> int:
        """Bytes of one device's share of the state buffers (one stage's, padded)."""
        return self.layout.bytes_per_stage()

    def buffer_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The state buffers' global shapes, dtypes and shardings (`{slot: [S, L]}`),
        e.g. to lower `tick` without the state."""
        sharding = NamedSharding(self.mesh, PartitionSpec(STAGE, None))
        return {
            name: jax.ShapeDtypeStruct(
                (self.num_stages, n), self.layout.dtypes[name], sharding=sharding
            )
            for name, n in self.lengths.items()
        }


def make_pipeline(
    model: LocalNetwork,
    tx: optax.GradientTransformation,
    state: TrainState,
    mesh: Mesh,
    *,
    sample: tuple[Any, Any],
    batch_size: int,
    cuts: Sequence[int] | None = None,
    preprocess: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    output_weight: float | None = None,
    seed: int = 0,
    conv_wgrad: str | None = None,
    state_mesh: Mesh | None = None,
) -> Pipeline:
    """Cuts `model` into `mesh.shape['stage']` stages and builds the pipelined programs.

    The update of every block equals that of `make_train_step(model, tx,
    preprocess=preprocess, output_weight=output_weight, seed=seed)` for the same batch
    sequence (same dropout and augmentation keys, same learning rate per update); see the
    module docstring for the schedule.

    Args:
      model: a `LocalNetwork` with `detach=True`.
      tx: the optimizer; every stage runs it on its own parameters (element-wise, so
        this equals one optimizer over all of them).
      state: a `TrainState` of `model` and `tx` (arrays or `ShapeDtypeStruct`s): the
        layout of the state the pipeline packs and unpacks.
      mesh: a `('stage', 'data')` mesh (`make_pipeline_mesh`).
      sample: `(images, labels)`, arrays (or `ShapeDtypeStruct`s) of the datasets'
        per-example shapes and dtypes with any leading size (e.g. the first 2 examples).
      batch_size: B, for the FLOP count that balances the stages (sim heads grow as B²)
        and the data-axis check.
      cuts: the first block index of stages 1..S−1; None balances them by counted FLOPs
        (`stages.block_flops`, `stages.balance_cuts`).
      preprocess, output_weight, seed: as in `make_train_step`.
      conv_wgrad: trace the tick inside `conv_wgrad_context(conv_wgrad)` (as the loop
        traces the fused step); None: XLA's convolutions.
      state_mesh: the mesh `unpack` replicates the state over (default `mesh`); the
        loop passes its data mesh, of the same devices, so evaluation is unchanged.

    Returns:
      A `Pipeline`.

    Raises:
      ConfigError: a network that cannot be pipelined (`check_pipelinable`), invalid cuts
        (`stages.check_cuts`), or a batch_size that does not divide over the data axis.

    Implements issue 16 items 1, 2 and 4.
    """
    num_stages = mesh.shape[STAGE]
    check_pipelinable(model, num_stages)
    check_batch_divisible(batch_size, mesh)
    weight = output_loss_weight(model) if output_weight is None else output_weight
    base_key = jax.random.key(seed)
    out_name = model.output_name()
    n_blocks = num_blocks(model)
    state_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    images_spec = jax.ShapeDtypeStruct((batch_size, *sample[0].shape[1:]), sample[0].dtype)
    labels_spec = jax.ShapeDtypeStruct((batch_size,), sample[1].dtype)

    def network_input(images, key):
        x = preprocess(images, key) if preprocess is not None else images
        return x.astype(model.dtype)  # as LocalNetwork.sweep casts its input

    x_spec = jax.eval_shape(network_input, images_spec, jax.random.key(0))
    costs, out_cost = block_flops(model, state_shapes, x_spec, labels_spec)
    cuts = (
        balance_cuts(costs, num_stages, out_cost)
        if cuts is None
        else check_cuts(cuts, n_blocks, num_stages)
    )
    plans = plan_stages(model, cuts)
    stage_flops = [
        sum(costs[i] for i in p.block_indices) + (out_cost if p.has_output else 0.0) for p in plans
    ]
    names = [p.block_names + ((out_name,) if p.has_output else ()) for p in plans]
    templates = [jax.eval_shape(lambda s, n=n: _stage_state(s, n), state_shapes) for n in names]
    layout = StageLayout(templates)

    # -- one stage's work on one batch ------------------------------------------------

    def stage_compute(plan: StagePlan, st: dict, x: jax.Array, y: jax.Array, valid: Any = True):
        """The fused step's per-block work (steps.make_train_step) for this stage's
        blocks: returns (new stage state, stage output, metrics). Where `valid` (a bool
        scalar, or Python True: a steady tick) is False the state is kept (pipeline
        fill and drain)."""
        _, dropout_key = _step_keys(base_key, st["step"])
        grads: dict[str, Any] = {}
        new_stats: dict[str, Any] = {}

        def run_block(name, block, h_in):
            out, terms, g, stats = block_value_and_grad(
                block, name, st["params"], st["batch_stats"], st["constants"], h_in, y, dropout_key
            )
            out, grads[name] = jax.lax.optimization_barrier((out, g))
            if stats is not None:
                new_stats[name] = stats
            return out, terms

        h, local = _run_layers(plan.layers, x, run_block, True)
        full_local: list[Any] = [None] * n_blocks
        for i, terms in zip(plan.block_indices, local, strict=True):
            full_local[i] = terms
        n = y.shape[0]
        if plan.has_output:
            h_in = cut(h)

            def output_loss(p):
                logits = model.output.apply({"params": p}, h_in)
                out_loss = losses.pred_loss(logits, y)
                return weight * out_loss, (logits, out_loss)

            (_, (logits, out_loss)), grads[out_name] = jax.value_and_grad(
                output_loss, has_aux=True
            )(st["params"][out_name])
            total = total_loss(out_loss, local, weight)
            metrics = step_metrics(logits, full_local, y, out_loss, total)
        else:
            # this stage's share of the objective and its blocks' metrics, named as the
            # fused step names them (the dummy logits' entries are dropped)
            total = total_loss(jnp.zeros((), jnp.float32), local, weight)
            metrics = step_metrics(jnp.zeros((n, 1)), full_local, y, jnp.zeros(()), total)
            metrics = {k: v for k, v in metrics.items() if k not in ("count", "loss", "correct")}

        updates, opt_state = tx.update(grads, st["opt_state"], st["params"])
        stats = {k: new_stats.get(k, v) for k, v in st["batch_stats"].items()}
        new_st = {
            **st,
            "params": optax.apply_updates(st["params"], updates),
            "batch_stats": stats,
            "opt_state": opt_state,
            "step": st["step"] + 1,
        }
        if valid is not True:
            # an invalid tick keeps the old state, selected leaf by leaf. Only the
            # fill and drain ticks pay for this: the select made XLA recompute Adam's
            # moments inside each output's fusion (15 passes over a parameter's memory
            # where the fused step makes 10), so steady ticks are compiled without it
            new_st = jax.tree.map(lambda new, old: jnp.where(valid, new, old), new_st, st)
        return new_st, h, metrics

    def stage_input(plan, st, act, carried, images, all_labels, idx, in_spec):
        if plan.index == 0:
            aug_key, _ = _step_keys(base_key, st["step"])
            return network_input(images[idx], aug_key), all_labels[idx]
        return from_flat(act, in_spec), carried

    # -- shapes of what crosses each cut, and the metric names -------------------------

    probe_in = x_spec
    cut_specs, probe_keys = [], set()
    for plan, template in zip(plans, templates, strict=True):
        cut_specs.append(probe_in)

        def probe(st, x, y, plan=plan):
            _, h, metrics = stage_compute(plan, st, x, y)
            return h, metrics

        h_spec, m_spec = jax.eval_shape(probe, template, probe_in, labels_spec)
        probe_keys |= set(m_spec)
        probe_in = h_spec
    metric_keys = tuple(sorted(probe_keys))
    sent = [leaf for spec in cut_specs[1:] for leaf in jax.tree.leaves(spec)]
    act_width = max((flat_width(spec) for spec in cut_specs[1:]), default=1)
    act_dtype = jnp.result_type(*(s.dtype for s in sent)) if sent else jnp.float32

    def make_branch(plan: StagePlan, in_spec, steady: bool):
        def branch(buffers, act, carried, valid, images, all_labels, idx):
            st = layout.unpack(plan.index, buffers)
            x, y = stage_input(plan, st, act, carried, images, all_labels, idx, in_spec)
            new_st, h, metrics = stage_compute(plan, st, x, y, True if steady else valid)
            new_buffers = layout.pack(plan.index, new_st)
            out = jnp.zeros_like(act) if plan.has_output else to_flat(h, act_width, act_dtype)
            zero = jnp.zeros((), jnp.float32)
            metrics = {
                k: jnp.where(valid, metrics.get(k, zero), zero).astype(jnp.float32)
                for k in metric_keys
            }
            metrics["step"] = st["step"]
            return new_buffers, out, y.astype(carried.dtype), metrics

        return branch

    branches = {
        steady: [make_branch(p, spec, steady) for p, spec in zip(plans, cut_specs, strict=True)]
        for steady in (False, True)
    }
    perm = [(i, i + 1) for i in range(num_stages - 1)]

    def body(steady, buffers, msg, images, all_labels, idx, valid):
        k = jax.lax.axis_index(STAGE)

        def one_tick(carry, inputs):
            buffers, msg = carry
            idx_t, valid_t = inputs
            v = valid_t[0]  # this stage's flag: its column of the [T, S] schedule
            act, carried = from_message(msg[0], act_width, act_dtype, labels_spec.dtype)
            new_buffers, out, y, metrics = jax.lax.switch(
                k,
                branches[steady],
                {dt: b[0] for dt, b in buffers.items()},
                act,
                carried,
                v,
                images,
                all_labels,
                idx_t,
            )
            # one uint32 array of every metric's bits: one output per tick, where a dict
            # of scalars cost the host a dozen arrays to create per dispatch
            words = jnp.stack(
                [jax.lax.bitcast_convert_type(metrics[key], jnp.uint32) for key in metric_keys]
                + [jax.lax.bitcast_convert_type(metrics["step"], jnp.uint32), v.astype(jnp.uint32)]
            )
            msg = to_message(out, y)
            if perm:
                msg = jax.lax.ppermute(msg, STAGE, perm)
            carry = ({dt: b[None] for dt, b in new_buffers.items()}, msg[None])
            return carry, words[None]

        with conv_wgrad_context(conv_wgrad) if conv_wgrad else contextlib.nullcontext():
            if idx.shape[0] == 1:  # one tick: no loop (compiles faster)
                (buffers, msg), metrics = one_tick((buffers, msg), (idx[0], valid[0]))
                metrics = metrics[None]
            else:
                (buffers, msg), metrics = jax.lax.scan(one_tick, (buffers, msg), (idx, valid))
        return buffers, msg, metrics

    stage = PartitionSpec(STAGE)
    # manual over `stage`; `data` is left to the partitioner (global-batch BatchNorm and
    # similarity matrices, as in the data-parallel step)
    mapped = {
        steady: jax.shard_map(
            functools.partial(body, steady),
            mesh=mesh,
            in_specs=(
                stage,
                stage,
                PartitionSpec(),
                PartitionSpec(),
                PartitionSpec(),
                PartitionSpec(None, STAGE),
            ),
            out_specs=(stage, stage, PartitionSpec(None, STAGE)),
            axis_names={STAGE},
            check_vma=False,
        )
        for steady in (False, True)
    }

    def tick(buffers, carry, images, all_labels, idx, valid, steady=False):
        return mapped[steady](buffers, carry, images, all_labels, idx, valid)

    buffer_sharding = {
        name: NamedSharding(mesh, PartitionSpec(STAGE, None)) for name in layout.lengths
    }

    def pack(state):
        per_stage = [layout.pack(s, _stage_state(state, n)) for s, n in enumerate(names)]
        return {name: jnp.stack([p[name] for p in per_stage]) for name in layout.lengths}

    def unpack(buffers):
        trees = [
            layout.unpack(s, {name: b[s] for name, b in buffers.items()}) for s in range(num_stages)
        ]
        mirrors = _mirrors_params(frozenset(state_shapes.params))

        def merged(col):
            return {k: v for t in trees for k, v in t[col].items()}

        opt_state = jax.tree.map(
            lambda t, *subs: {k: v for s in subs for k, v in s.items()} if mirrors(t) else subs[0],
            state_shapes.opt_state,
            *[t["opt_state"] for t in trees],
            is_leaf=mirrors,
        )
        return TrainState(
            step=trees[0]["step"],
            params=merged("params"),
            batch_stats=merged("batch_stats")
            if state_shapes.batch_stats
            else state_shapes.batch_stats,
            constants=merged("constants") if state_shapes.constants else state_shapes.constants,
            opt_state=opt_state,
        )

    replicated = NamedSharding(state_mesh or mesh, PartitionSpec())
    return Pipeline(
        mesh=mesh,
        plans=plans,
        cuts=tuple(cuts),
        stage_flops=stage_flops,
        layout=layout,
        lengths=dict(layout.lengths),
        act_width=act_width,
        act_dtype=act_dtype,
        label_dtype=labels_spec.dtype,
        metric_keys=metric_keys,
        stage_fns=branches[True],
        pack=jax.jit(pack, out_shardings=buffer_sharding),
        unpack=jax.jit(unpack, out_shardings=replicated),
        # the state buffers are not donated: each stage's update writes a fresh buffer
        # per slot, where donated ones cost a copy of the whole state after the
        # `switch` (its outputs cannot alias its operands)
        tick=jax.jit(tick, donate_argnums=(1,), static_argnames="steady"),
        cut_widths=tuple(flat_width(spec) for spec in cut_specs[1:]),
    )


# -- metrics and the epoch ------------------------------------------------------------


def _words(x: jax.Array) -> jax.Array:
    """An array as uint32 words of the same shape (4-byte types bitcast, bool 0/1)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


@functools.lru_cache(maxsize=64)
def _replicator(signature: tuple, mesh: Mesh) -> Callable:
    """A jitted `[leaves] -> [stacked words per shape, other leaves]`, replicated over
    `mesh`: leaves of one shape travel as one stacked array, so one collective each."""
    groups: dict[tuple, list[int]] = {}
    others = []
    for i, (shape, dtype) in enumerate(signature):
        if np.dtype(dtype).itemsize == 4 or np.dtype(dtype) == np.bool_:
            groups.setdefault(shape, []).append(i)
        else:
            others.append(i)

    def gather(leaves):
        stacked = [jnp.stack([_words(leaves[i]) for i in idx]) for idx in groups.values()]
        return stacked, [leaves[i] for i in others]

    fn = jax.jit(gather, out_shardings=NamedSharding(mesh, PartitionSpec()))
    return lambda leaves: (fn(leaves), list(groups.values()), others)


def to_host(tree: Any, mesh: Mesh) -> Any:
    """A pytree of arrays on `mesh` (e.g. stage-sharded tick metrics) as host NumPy
    arrays, the whole of each array on every process.

    One process: `jax.device_get`. Several (each holds only its stages' shards): one
    program replicates the tree over the mesh, the leaves of one shape stacked as 32-bit
    words so that each shape costs one collective (a window of tick metrics: one), and
    each process reads its own copy. (`multihost_utils.process_allgather` refuses
    non-fully-addressable arrays unless `tiled=True`, and then runs one program and one
    collective per leaf: 56 for 4 ticks' 14 metrics.)

    Args:
      tree: a pytree of `jax.Array`s on `mesh`'s devices.
      mesh: their mesh.

    Returns:
      The same pytree of NumPy arrays (global shapes, dtypes kept).

    Raises:
      Nothing of its own.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    leaves, treedef = jax.tree.flatten(tree)
    signature = tuple((tuple(x.shape), np.dtype(x.dtype).name) for x in leaves)
    (stacked, others), groups, other_idx = _replicator(signature, mesh)(leaves)
    out: list[Any] = [None] * len(leaves)
    for words, idx in zip(stacked, groups, strict=True):
        host = np.asarray(words.addressable_data(0))
        for j, i in enumerate(idx):
            dtype = np.dtype(signature[i][1])
            out[i] = host[j].astype(bool) if dtype == np.bool_ else host[j].view(dtype)
    for x, i in zip(others, other_idx, strict=True):
        out[i] = np.asarray(x.addressable_data(0))
    return jax.tree.unflatten(treedef, out)


class SkewedMetrics:
    """Re-assembles per-batch metrics from per-tick, per-stage ones.

    At tick t stage s reports its share of the metrics of the batch it held (its `step`
    number); a batch is complete once all S stages reported it (the last stage does so
    last). Its metrics are then the sum of the S shares: the fused step's `step_metrics`
    dict for that batch (the `objective` summed from per-stage parts).

    Usage: `for step, m in skewed.add(pipe.metrics_dict(jax.device_get(words))): ...`
    """

    def __init__(self, num_stages: int):
        self.num_stages = num_stages
        self.pending: dict[int, tuple[dict[str, float], int]] = {}

    def add(self, metrics: Mapping[str, np.ndarray]) -> list[tuple[int, dict[str, float]]]:
        """Adds one call's host metrics (`{key: [T, S]}`, with `step` and `valid`).

        Returns:
          `(update number, metrics)` of the batches completed, in order; the update
          number counts from 1 like the loop's step count, metrics are Python floats.
        """
        valid = np.asarray(metrics["valid"])
        steps = np.asarray(metrics["step"])
        keys = [k for k in metrics if k not in ("valid", "step")]
        done = []
        for t, s in zip(*np.nonzero(valid), strict=True):
            step = int(steps[t, s])
            sums, seen = self.pending.get(step, ({}, 0))
            for k in keys:
                sums[k] = sums.get(k, 0.0) + float(metrics[k][t, s])
            seen += 1
            if seen == self.num_stages:
                self.pending.pop(step, None)
                done.append((step + 1, sums))
            else:
                self.pending[step] = (sums, seen)
        return sorted(done, key=lambda item: item[0])


def run_epoch(
    pipe: Pipeline,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    batches: Sequence[np.ndarray],
    *,
    sync_every: int = 16,
    ticks_per_call: int = 1,
    check: Callable[[int, dict[str, float]], None] | None = None,
    progress: Callable[[int], None] | None = None,
    free_state: bool = False,
) -> tuple[TrainState, dict[str, float], int]:
    """One epoch, pipelined: pack, fill, train, drain, unpack.

    The batches go in order, one per tick; after the last full batch the pipeline
    drains (S − 1 ticks without input), then a last smaller batch, if any, passes
    through alone. Every `sync_every` calls the queued metrics are fetched,
    re-assembled per batch (`SkewedMetrics`) and checked, which also bounds the queue of
    dispatched programs.

    Args:
      pipe: from `make_pipeline`.
      state: the replicated `TrainState` at the epoch's start (not modified).
      images, labels: the on-device training set (`[N, H, W, C]`, `[N]`), replicated.
      batches: the epoch's example indices, `[B]` int arrays (the last may be smaller).
      sync_every: calls between fetches of the metrics.
      ticks_per_call: T, ticks per dispatched program (1 as the loop dispatches steps).
      check: `check(update number, metrics)` per batch, in order (e.g. the non-finite
        check); its exceptions propagate.
      progress: called with the number of batches completed so far.
      free_state: delete `state`'s arrays once packed, so that during the epoch each
        device holds only its stage's state (the loop does; `state` is then unusable).

    Returns:
      `(state, totals, updates)`: the replicated `TrainState` after every batch (the
      state `pipe.unpack` builds), the epoch's metric sums (Python floats, as the fused
      loop sums them) and the number of updates (batches).

    Raises:
      Whatever `check` raises (e.g. TrainingError).

    Implements issue 16 item 2 (fill at the start, drain at the end of each epoch, the
    in-flight activations carried across calls).
    """
    buffers = pipe.pack(state)
    if free_state:
        jax.block_until_ready(buffers)
        for leaf in jax.tree.leaves(state):
            leaf.delete()
    skewed, totals, window, completed = SkewedMetrics(pipe.num_stages), {}, [], 0

    def fetch():
        nonlocal completed
        # one process holds every stage's metrics; several gather them (a host copy)
        fetched = to_host(window, pipe.mesh)
        for words in fetched:
            for step, batch_metrics in skewed.add(pipe.metrics_dict(words)):
                if check is not None:
                    check(step, batch_metrics)
                for k, v in batch_metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
                completed += 1
        window.clear()
        if progress is not None:
            progress(completed)

    groups: list[list[np.ndarray]] = []
    for idx in batches:
        if groups and len(groups[-1][0]) == len(idx):
            groups[-1].append(np.asarray(idx))
        else:
            groups.append([np.asarray(idx)])
    for group in groups:
        size = len(group[0])
        carry = pipe.init_carry(size)
        n_ticks = len(group) + pipe.num_stages - 1
        for start in range(0, n_ticks, ticks_per_call):
            ticks = range(start, start + ticks_per_call)
            idx = np.stack([group[t] if t < len(group) else group[0] for t in ticks])
            valid = pipe.schedule(ticks, len(group))
            # every stage holds a batch: the program without the keep-the-state select
            steady = bool(valid.all())
            buffers, carry, metrics = pipe.tick(
                buffers, carry, images, labels, *pipe.put_feed(idx, valid), steady=steady
            )
            window.append(metrics)
            if len(window) >= sync_every:
                fetch()
    fetch()
    return pipe.unpack(buffers), totals, len(batches)
