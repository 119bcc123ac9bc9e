"""Cutting a network's blocks into pipeline stages, balanced by counted FLOPs (issue 16).

Usage::

    costs, out_cost = block_flops(model, state, x_sample, labels_sample)  # per-block FLOPs
    cuts = balance_cuts(costs, num_stages=2, tail=out_cost)   # e.g. (2,): blocks [0, 1] | [2]
    plans = plan_stages(model, cuts)        # each stage's layers, block names and indices

A stage is a contiguous run of blocks. `cuts` holds the index of the first block of every
stage but the first (block indices count blocks only, as `local_loss/block_<i>` does).
The plain layers (pooling, reshapes) between two stages run on the earlier stage, so the
smaller, pooled activation is what crosses the cut; the output layer runs on the last.

Why FLOPs are counted here and not with `localjax.perf.flops`: the method and the loop do
not import `perf/` (DESIGN.md), and `perf.flops` knows only the paper's block types. This
module counts the multiply-adds of the very computation a block's update runs (its
forward pass, local heads and gradient: `jax.value_and_grad` of its local loss) from the
traced jaxpr, for any block: dot_general and conv_general_dilated, 2 FLOPs per
multiply-add, nothing compiled. Elementwise work is not counted; in these networks the
matmuls and convolutions dominate, the sim heads of conv blocks most of all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from localjax.errors import ConfigError
from localjax.network import LocalNetwork

__all__ = [
    "StagePlan",
    "jaxpr_flops",
    "block_flops",
    "balance_cuts",
    "check_cuts",
    "plan_stages",
    "num_blocks",
]


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """What one pipeline stage runs.

    Attributes:
      index: the stage number s in [0, S).
      layers: `(name, layer)` pairs, a slice of `LocalNetwork.named_layers()` (name None
        for plain callables): the stage's blocks and the plain layers between them.
      block_names: the names of its blocks (their variables' keys), in order.
      block_indices: their indices among all blocks (the `block_<i>` of the metrics).
      has_output: True on the last stage, which also runs the output layer.
    """

    index: int
    layers: tuple[tuple[str | None, Any], ...]
    block_names: tuple[str, ...]
    block_indices: tuple[int, ...]
    has_output: bool


def num_blocks(model: LocalNetwork) -> int:
    """The number of blocks (layers with variables) of a `LocalNetwork`.

    Args:
      model: an unbound `LocalNetwork`.

    Returns:
      Python int >= 0.

    Raises:
      Nothing of its own.
    """
    return sum(name is not None for name, _ in model.named_layers())


def check_cuts(cuts: Sequence[int], n_blocks: int, num_stages: int) -> tuple[int, ...]:
    """Checks user-given cuts: S − 1 strictly increasing block indices in (0, n_blocks).

    Args:
      cuts: the first block index of stages 1..S−1 (Python ints).
      n_blocks: the network's block count.
      num_stages: S >= 1.

    Returns:
      The cuts as a tuple of ints.

    Raises:
      ConfigError: S below 1, more stages than blocks, the wrong number of cuts, or cuts
        that are not strictly increasing within (0, n_blocks).

    Implements issue 16 item 1 (user-given cuts) and item 4 (more stages than blocks).
    """
    if num_stages < 1:
        raise ConfigError(f"pipeline_stages={num_stages} must be >= 1 (1 = no pipeline).")
    if num_stages > n_blocks:
        raise ConfigError(
            f"pipeline_stages={num_stages} exceeds the network's {n_blocks} blocks: every "
            f"stage needs at least one block; use pipeline_stages <= {n_blocks}."
        )
    cuts = tuple(int(c) for c in cuts)
    ok = len(cuts) == num_stages - 1 and all(
        a < b for a, b in zip((0, *cuts), (*cuts, n_blocks), strict=True)
    )
    if not ok:
        what = (
            "1 block index"
            if num_stages == 2
            else f"{num_stages - 1} strictly increasing block indices"
        )
        raise ConfigError(
            f"pipeline_cuts={cuts} must be {what} in 1..{n_blocks - 1} (the first block "
            "of each stage after the first), or () to balance the stages by FLOPs."
        )
    return cuts


def balance_cuts(costs: Sequence[float], num_stages: int, tail: float = 0.0) -> tuple[int, ...]:
    """Cuts that minimise the most expensive stage (contiguous stages, >= 1 block each).

    Exact dynamic programme over prefix sums, O(S·N²); ties go to the earliest cut.

    Args:
      costs: per-block cost (e.g. `block_flops`), N >= S floats >= 0.
      num_stages: S >= 1.
      tail: extra cost of the last stage (the output layer).

    Returns:
      S − 1 strictly increasing block indices (the first block of stages 1..S−1).

    Raises:
      ConfigError: S < 1 or S > N (`check_cuts`).

    Implements issue 16 item 1 (stages balanced by counted FLOPs).
    """
    n = len(costs)
    check_cuts([], n, 1) if num_stages == 1 else check_cuts(range(1, num_stages), n, num_stages)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))

    def part(i: int, j: int) -> float:  # blocks i..j-1
        return prefix[j] - prefix[i] + (tail if j == n else 0.0)

    # best[s][j]: the least max-stage cost of blocks 0..j-1 in s stages; arg: last cut
    best = [[math.inf] * (n + 1) for _ in range(num_stages + 1)]
    arg = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0.0
    for s in range(1, num_stages + 1):
        for j in range(s, n + 1):
            for i in range(s - 1, j):
                value = max(best[s - 1][i], part(i, j))
                if value < best[s][j]:
                    best[s][j], arg[s][j] = value, i
    cuts, j = [], n
    for s in range(num_stages, 1, -1):
        j = arg[s][j]
        cuts.append(j)
    return tuple(reversed(cuts))


def plan_stages(model: LocalNetwork, cuts: Sequence[int]) -> list[StagePlan]:
    """Splits `model.named_layers()` into one `StagePlan` per stage at `cuts`.

    Plain layers before the first block go to stage 0; those between the last block of
    stage s and the first of stage s + 1 run on stage s (the cut is sent after them);
    those after the last block, and the output layer, on the last stage.

    Args:
      model: an unbound `LocalNetwork`.
      cuts: as `check_cuts` accepts.

    Returns:
      `len(cuts) + 1` `StagePlan`s, in order.

    Raises:
      ConfigError: invalid cuts (`check_cuts`).

    Implements issue 16 item 1 (contiguous stages, the output layer on the last).
    """
    named = model.named_layers()
    positions = [i for i, (name, _) in enumerate(named) if name is not None]
    cuts = check_cuts(cuts, len(positions), len(cuts) + 1)
    firsts = (0, *cuts)
    ends = (*cuts, len(positions))
    plans = []
    for s, (b0, b1) in enumerate(zip(firsts, ends, strict=True)):
        start = 0 if s == 0 else positions[b0]
        stop = len(named) if b1 == len(positions) else positions[b1]
        layers = tuple(named[start:stop])
        plans.append(
            StagePlan(
                index=s,
                layers=layers,
                block_names=tuple(name for name, _ in layers if name is not None),
                block_indices=tuple(range(b0, b1)),
                has_output=b1 == len(positions),
            )
        )
    return plans


def _sub_jaxprs(value):
    """The jaxprs held by one equation parameter (a jaxpr, a closed jaxpr, or tuples)."""
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value, "consts"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def jaxpr_flops(jaxpr) -> float:
    """Matmul and convolution FLOPs of a jaxpr (2 per multiply-add), sub-jaxprs included.

    Counts `dot_general` (2·|out|·contracted size) and `conv_general_dilated`
    (2·|out|·kernel input features·kernel window); a `scan` body counts `length` times,
    a `cond`/`switch` its most expensive branch; elementwise work is not counted.

    Args:
      jaxpr: a `Jaxpr` or `ClosedJaxpr` (e.g. from `jax.make_jaxpr`).

    Returns:
      Python float.

    Raises:
      Nothing of its own.

    Implements the FLOP count that balances pipeline stages (issue 16 item 1).
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
            total += 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *window)
            total += 2.0 * math.prod(out.shape) * math.prod(rhs.shape[d] for d in rhs_spec[1:])
        subs = [sub for v in eqn.params.values() for sub in _sub_jaxprs(v)]
        if not subs:
            continue
        if name == "cond":
            total += max(jaxpr_flops(sub) for sub in subs)
        elif name == "scan":
            total += eqn.params["length"] * sum(jaxpr_flops(sub) for sub in subs)
        else:
            total += sum(jaxpr_flops(sub) for sub in subs)
    return total


def _block_variables(state: dict[str, Any], name: str) -> dict[str, Any]:
    """Block `name`'s variables from `{"params", "batch_stats", "constants"}` trees."""
    variables = {"params": state["params"][name]}
    for col in ("batch_stats", "constants"):
        if state[col] and name in state[col]:
            variables[col] = state[col][name]
    return variables


def block_flops(
    model: LocalNetwork, state: Any, x: jax.Array, labels: jax.Array
) -> tuple[list[float], float]:
    """Counted FLOPs of each block's update and of the output layer's, for one batch.

    Each block's count is that of `jax.value_and_grad` of its local loss (forward pass,
    local heads, gradient), traced on the block's real input shape; nothing is compiled
    and only shapes are used.

    Args:
      model: an unbound `LocalNetwork`.
      state: a `TrainState` (or anything with `params`, `batch_stats`, `constants`) of
        `model`; arrays or `jax.ShapeDtypeStruct`s.
      x: `[B, ...]` float network input (normalised), or its `ShapeDtypeStruct`.
      labels: `[B]` int labels, or their `ShapeDtypeStruct`.

    Returns:
      `(per-block FLOPs, output layer FLOPs)`: a list of Python floats, one per block in
      order, and a float.

    Raises:
      Nothing of its own; the blocks' shape errors surface while tracing.

    Implements the per-block FLOP count of issue 16 item 1.
    """
    shapes: dict[str, Any] = {}
    spec = _shape_tree
    state = {
        "params": spec(state.params),
        "batch_stats": spec(state.batch_stats),
        "constants": spec(state.constants),
    }

    def sweep(x, labels, state):
        def record(name, block, h):  # h: an array, or a pytree (a residual unit's pair)
            shapes[name] = _shape_tree(h)
            variables = _block_variables(state, name)
            return block.apply(variables, h, labels, train=False, mutable=False)

        def output(h):
            shapes["__output__"] = _shape_tree(h)
            return h

        return model.sweep(x, record, output)

    jax.eval_shape(sweep, spec(x), spec(labels), state)
    costs = []
    for name, block in model.named_layers():
        if name is None:
            continue

        def loss(params, h, labels, variables, block=block):
            (_, terms), _ = block.apply(
                {**variables, "params": params},
                h,
                labels,
                train=True,
                rngs={"dropout": jax.random.key(0)},
                mutable=["batch_stats"],
            )
            return jnp.zeros((), jnp.float32) if terms is None else terms["loss"]

        variables = _block_variables(state, name)
        jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(
            variables["params"], shapes[name], spec(labels), variables
        )
        costs.append(jaxpr_flops(jaxpr))
    out_name = model.output_name()

    def out_loss(params, h):
        logits = model.output.apply({"params": params}, h)
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    jaxpr = jax.make_jaxpr(jax.value_and_grad(out_loss))(
        state["params"][out_name], shapes["__output__"]
    )
    return costs, jaxpr_flops(jaxpr)


def _shape_tree(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
