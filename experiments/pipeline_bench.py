r"""The pipeline measured (issue 16 item 6; docs/pipeline.md, Measurements).

Usage::

    # the full measurement (a quiet machine with >= 2 free cores): about 12 minutes
    python -m experiments.pipeline_bench --out=runs/pipeline_bench.json \
        --workdir=runs/pipeline_bench
    # every path at small sizes (MLP width 128, VGG/ResNet at 1/16 width): about 5 minutes
    python -m experiments.pipeline_bench --small --out=/tmp/pipeline_bench_small.json
    # one part
    python -m experiments.pipeline_bench --parts=bytes

Three parts (`--parts`), each run in fresh subprocesses of this module (`--role=worker`),
one after another, so that nothing else of this benchmark runs beside the one timed:

- `concurrency`: for each of `--nets` (default `mlp4`, Fashion-MNIST predsim with 4
  blocks of 1024 units, and `mlp3`, the recipe's 3 x 1024 `mlp_predsim`), on real
  Fashion-MNIST:
    * `pipeline`: two processes, each pinned to one core (`taskset -c`, XLA's Eigen
      thread pool off) with one CPU device, joined by `jax.distributed` (gloo CPU
      collectives, jax's default), running the pipelined step over 2 stages;
    * `fused`: one process pinned to one core running the fused step;
    * `dp`: two pinned processes, the fused step data parallel (the batch split over the
      two processes);
    * `fused_pair`: two independent `fused` runs at once, one per core: the machine's own
      ceiling for two processes (shared memory bandwidth and caches, or vCPUs that are
      one physical core's hyperthreads, keep it below 2x).
  Each first trains `--check_batches` batches from the same initial state and keeps
  every batch's metrics (the pipeline through `pipeline.run_epoch`, its metrics gathered
  from the stages with `process_allgather`); then it runs `--warmup_windows` untimed and
  `--windows` timed windows of `--window_steps` steps (ticks) each, the metrics of a
  window fetched at its end as the training loop fetches them every `sync_every` steps.
  `--scan_steps=T` dispatches T steps (ticks) per program in the timed windows, for
  every job alike. Throughput: the median over the timed windows of examples per
  second. The pipeline's processes also time their stage alone on their core, and the
  link between them (`ppermute` and `psum` of 4 KiB .. 32 MiB: latency and bandwidth,
  least squares).
- `bytes`: for `--bytes_nets` (MLP 3 x 1024 on Fashion-MNIST, VGG8b and ResNet-18 on
  CIFAR-10, batch `--batch_size`, the recipes' sizes), on n = `--bytes_devices` devices:
  what one device sends per step in a pipeline of n stages (the activation at each cut,
  padded to the widest cut, plus labels and a flag) against a ring all-reduce of the
  gradients, 2(n − 1)/n · parameter bytes. Cross-checked with the collectives of the
  compiled programs (`--hlo_devices`, fake CPU devices): the pipeline tick's
  collective-permutes and the data-parallel step's all-reduces and all-gathers.
- `model`: for `--model_nets`, one process on one core times each stage of an S-stage
  pipeline alone (S in `--model_stages`, up to the number of blocks) and the fused step;
  the cost model (`perf.pipeline_cost.predict_pipeline`: T = max_s t_s + m·α + bytes/β,
  the link from `concurrency`, else `--link_alpha_us`/`--link_gbps`) predicts each S's
  throughput and speedup, beside the ideal speedup FLOP balance allows. The 2-stage
  prediction for the `concurrency` nets is checked against the 2-process measurement.

Writes one JSON object (`--out`), prints a summary; each worker's log and result are kept
in `--workdir`. Timing on a loaded machine is distorted: every result records the load
average before and after (`load`), and the summary prints it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

from experiments.bench_record import finish_record, load_average, start_record

FLAGS = flags.FLAGS
flags.DEFINE_enum("role", "launcher", ["launcher", "worker"], "launcher runs the parts.")
flags.DEFINE_list("parts", ["concurrency", "bytes", "model"], "Parts to run, in this order.")
flags.DEFINE_list("nets", ["mlp4", "mlp3"], "Networks of the concurrency part.")
flags.DEFINE_list("bytes_nets", ["mlp3", "vgg8b", "resnet18"], "Networks of the bytes part.")
flags.DEFINE_list("bytes_devices", ["2", "4", "8"], "Device counts n of the bytes part.")
flags.DEFINE_list("hlo_devices", ["2"], "n whose compiled programs' collectives are read.")
flags.DEFINE_bool("hlo", True, "Compile the bytes part's programs and read their collectives.")
flags.DEFINE_list(
    "model_nets",
    ["mlp4", "mlp3", "mlp8"],
    "Cost model nets (vgg8b and resnet18 also work: at full size tens of seconds per step "
    "on one CPU core, so ~30 min each; their FLOP-balance speedups are in `bytes`).",
)
flags.DEFINE_list("model_stages", ["2", "4", "8"], "Stage counts of the cost model.")
flags.DEFINE_integer("model_steps", 10, "Timed runs per stage (and fused step) in `model`.")
flags.DEFINE_integer("batch_size", 128, "Global batch size B.")
flags.DEFINE_integer("num_hidden", 0, "Override the MLPs' width (0: the recipe's 1024).")
flags.DEFINE_float("feat_mult", 0.0, "Override VGG/ResNet channel multiplier (0: recipe).")
flags.DEFINE_integer("check_batches", 8, "Batches whose metrics are compared.")
flags.DEFINE_integer("windows", 10, "Timed windows.")
flags.DEFINE_integer("window_steps", 16, "Steps (ticks) per window (the loop's sync_every).")
flags.DEFINE_integer("warmup_windows", 2, "Untimed windows after the check batches.")
flags.DEFINE_integer(
    "scan_steps",
    1,
    "Steps (ticks) per dispatched program in the timed windows, for every job alike: the "
    "fused step scanned over T batches (`make_multi_step`'s `lax.scan`), the pipeline's "
    "tick over T ticks (`ticks_per_call`). Divides --window_steps.",
)
flags.DEFINE_list("cores", ["0", "1"], "The two cores the processes are pinned to.")
flags.DEFINE_bool(
    "malloc_env",
    True,
    "Run the workers with glibc's malloc keeping freed memory (MALLOC_ARENA_MAX=1, "
    "MALLOC_MMAP_MAX_=0, a huge MALLOC_TRIM_THRESHOLD_): XLA:CPU allocates each "
    "execution's temporaries afresh, and without this every tick re-faults the pipeline's "
    "packed-state temporaries from the kernel (MLP 4 x 1024: ~28,000 minor page faults, "
    "110 MB, per run of a stage alone; ~100 with it; the fused step barely changes).",
)
flags.DEFINE_bool("pin", True, "Pin the processes with taskset (False: for a quick check).")
flags.DEFINE_float("link_alpha_us", 100.0, "Link latency for `model` if none was measured.")
flags.DEFINE_float("link_gbps", 1.0, "Link bandwidth (GB/s) for `model` if none measured.")
flags.DEFINE_string("data_dir", "", "Fashion-MNIST directory ('' = the loader's default).")
flags.DEFINE_string("workdir", "", "Logs and per-worker results ('' = a new temp dir).")
flags.DEFINE_string("out", "", "Write the summary JSON here.")
flags.DEFINE_integer("timeout", 3600, "Seconds a worker job may take before it is killed.")
flags.DEFINE_bool(
    "small",
    False,
    "A quick check of every path: MLP width 128, VGG/ResNet at 1/16 width, 3 windows of 4 "
    "steps, 4 check batches, 2 timed runs per stage; bytes without ResNet-18's HLO.",
)
# worker-only
flags.DEFINE_string("job", "", "worker: pipeline, fused, dp, bytes or model.")
flags.DEFINE_string("net", "", "worker: the network (concurrency jobs).")
flags.DEFINE_integer("process_id", 0, "worker: this process's id.")
flags.DEFINE_integer("num_processes", 1, "worker: P.")
flags.DEFINE_string("coordinator", "", "worker: host:port of process 0.")
flags.DEFINE_string("result", "", "worker: where to write this process's JSON result.")

# name -> (dataset, recipe row, overrides): the recipes' settings (Adam, lr, dropout, ...)
NETS = {
    "mlp3": ("fashion_mnist", "mlp_predsim", {}),
    "mlp4": ("fashion_mnist", "mlp_predsim", {"num_layers": 4}),
    "mlp8": ("fashion_mnist", "mlp_predsim", {"num_layers": 8}),
    "vgg8b": ("cifar10", "vgg8b_predsim", {}),
    "resnet18": ("cifar10", "resnet18_predsim", {}),
}
GOALS = {"mlp4": ("goal", 1.7)}  # issue 16: pipeline >= 1.7x one core on 4 x 1024
# flags a worker gets from the launcher
FORWARD = (
    "batch_size",
    "num_hidden",
    "feat_mult",
    "check_batches",
    "windows",
    "window_steps",
    "warmup_windows",
    "scan_steps",
    "data_dir",
    "bytes_nets",
    "bytes_devices",
    "hlo_devices",
    "hlo",
    "model_nets",
    "model_stages",
    "model_steps",
)
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 36),
}
LINK_SIZES = (4 << 10, 64 << 10, 512 << 10, 4 << 20, 32 << 20)


def net_config(name: str, full_size: bool = False):
    """The recipe's config of network `name`, with the size overrides (unless
    `full_size`) and `--batch_size`."""
    if name not in NETS:
        raise app.UsageError(f"unknown net {name!r}; choose from {sorted(NETS)}.")
    dataset, row, overrides = NETS[name]
    c = importlib.import_module(f"experiments.configs.{dataset}").get_config(row)
    for k, v in overrides.items():
        c[k] = v
    if not full_size:
        if FLAGS.num_hidden and c.model == "mlp":
            c.num_hidden = FLAGS.num_hidden
        if FLAGS.feat_mult and c.model != "mlp":
            c.feat_mult = FLAGS.feat_mult
    c.batch_size = FLAGS.batch_size
    return c


# ------------------------------------------------------------------------------ workers


def _worker() -> dict[str, Any]:
    """Runs `--job` in this process; returns its JSON-able result."""
    import jax

    if FLAGS.num_processes > 1:
        from localjax.training import sharding

        sharding.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    result: dict[str, Any] = {
        "job": FLAGS.job,
        "net": FLAGS.net,
        "process_id": FLAGS.process_id,
        "num_processes": jax.process_count(),
        "devices": [str(d) for d in jax.devices()],
        "affinity": sorted(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "collectives": jax.config.jax_cpu_collectives_implementation,
        "load_before": load_average(),
    }
    if FLAGS.job in ("pipeline", "fused", "dp"):
        result.update(_concurrency_job(FLAGS.job, FLAGS.net))
    elif FLAGS.job == "bytes":
        result.update(_bytes_job())
    elif FLAGS.job == "model":
        result.update(_model_job())
    else:
        raise app.UsageError(f"unknown job {FLAGS.job!r}.")
    result["load_after"] = load_average()
    return result


def _param_sums(params) -> dict[str, float]:
    """Per top-level module, the sum of |parameters| (float64): a compact fingerprint."""
    import jax
    import numpy as np

    host = jax.device_get(params)
    return {
        name: float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(sub)))
        for name, sub in host.items()
    }


def _concurrency_job(job: str, net: str) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from localjax import data as data_lib
    from localjax.ops.conv_wgrad import conv_wgrad_context
    from localjax.training import pipeline as pipeline_lib
    from localjax.training import sharding
    from localjax.training.config import model_from_config
    from localjax.training.optimizer import make_optimizer
    from localjax.training.state import create_train_state
    from localjax.training.steps import make_multi_step, make_train_step

    c = net_config(net)
    spec = data_lib.get_spec(c.dataset)
    train = data_lib.load(c.dataset, "train", FLAGS.data_dir or None)
    model = model_from_config(c, spec.num_classes)
    b = c.batch_size
    tx = make_optimizer(c.lr, tuple(c.milestones), math.ceil(len(train) / b), c.lr_decay)

    def preprocess(im, k):
        return data_lib.augment(im, k, spec)

    host_state = jax.device_get(
        create_train_state(
            model,
            tx,
            jax.random.key(c.seed),
            data_lib.normalize(jnp.asarray(train.images[:2]), spec),
            jnp.asarray(train.labels[:2]),
        )
    )
    mesh = sharding.make_mesh()
    images, labels = sharding.put_replicated((train.images, train.labels), mesh)
    batches = [x for x in data_lib.epoch_order(train.labels, b, c.seed, 1) if len(x) == b]
    n_check, k, t = FLAGS.check_batches, FLAGS.window_steps, FLAGS.scan_steps
    box: dict[str, Any] = {"i": n_check}

    def next_batches():  # [T, B]: the next T batches of the epoch, cycling
        i = box["i"]
        box["i"] += t
        return np.stack([batches[j % len(batches)] for j in range(i, i + t)])

    out: dict[str, Any] = {
        "config": {
            key: c[key]
            for key in ("model", "dataset", "loss", "num_layers", "num_hidden", "nonlin")
        }
        | {"dropout": c.dropout, "batch_size": b, "lr": c.lr},
    }
    multi = jax.process_count() > 1

    def fetch(tree):  # as the loops fetch metrics (stage-sharded ones from every stage)
        return pipeline_lib.to_host(tree, mesh)

    def timed(run_window) -> list[float]:
        for _ in range(FLAGS.warmup_windows):
            run_window()
        return [run_window() for _ in range(FLAGS.windows)]

    t0 = time.perf_counter()
    if job == "pipeline":
        pmesh = pipeline_lib.make_pipeline_mesh(mesh, mesh.size)
        pipe = pipeline_lib.make_pipeline(
            model,
            tx,
            host_state,
            pmesh,
            sample=(train.images[:2], train.labels[:2]),
            batch_size=b,
            preprocess=preprocess,
            seed=c.seed,
            conv_wgrad=c.conv_wgrad,
            state_mesh=mesh,
        )
        history: list[tuple[int, dict]] = []
        state, _, _ = pipeline_lib.run_epoch(
            pipe,
            sharding.put_replicated(host_state, mesh),
            images,
            labels,
            batches[:n_check],
            sync_every=k,
            check=lambda step, m: history.append((step, m)),
            free_state=True,
        )
        out["check_seconds"] = time.perf_counter() - t0
        out["history"] = [m for _, m in history]
        out["history_steps"] = [s for s, _ in history]
        out["param_sums"] = _param_sums(state.params)
        out["final_step"] = int(jax.device_get(state.step))

        t0 = time.perf_counter()
        box |= {"buffers": pipe.pack(state), "carry": pipe.init_carry(b)}
        del state
        jax.block_until_ready(box["buffers"])
        out["pack_seconds"] = time.perf_counter() - t0
        one = np.ones((1, pipe.num_stages), bool)  # every stage holds a batch
        steady = np.ones((t, pipe.num_stages), bool)

        def window() -> float:
            pending = []
            start = time.perf_counter()
            for _ in range(k // t):
                idx, feed = pipe.put_feed(next_batches(), steady)
                box["buffers"], box["carry"], m = pipe.tick(
                    box["buffers"], box["carry"], images, labels, idx, feed, steady=True
                )
                pending.append(m)
            fetch(pending)
            return time.perf_counter() - start

        seconds = timed(window)
        # this process's stage alone on its core (the processes time theirs together)
        from localjax.perf.pipeline_timing import time_stage_alone

        device = jax.local_devices()[0]
        stage = int(np.argwhere(pmesh.devices == device)[0][0])
        row = {dt: buf.addressable_shards[0].data[0] for dt, buf in box["buffers"].items()}
        stage_s, stage_compile = time_stage_alone(
            pipe,
            stage,
            row,
            train.images,
            train.labels,
            batches[0],
            device=device,
            steps=max(k, 10),
            warmup=3,
            conv_wgrad=c.conv_wgrad,
        )
        t0 = time.perf_counter()
        state = pipe.unpack(box["buffers"])
        jax.block_until_ready(state)
        out["unpack_seconds"] = time.perf_counter() - t0
        from localjax.perf.pipeline_cost import pipeline_send_bytes

        lowered = pipe.tick.lower(
            pipe.pack(state),
            pipe.init_carry(b),
            images,
            labels,
            *pipe.put_feed(batches[0][None], one),
        )
        out |= {
            "stage": stage,
            "stage_seconds": stage_s,
            "stage_compile_seconds": stage_compile,
            "num_stages": pipe.num_stages,
            "cuts": list(pipe.cuts),
            "stage_flops": pipe.stage_flops,
            "act_width": pipe.act_width,
            "cut_widths": list(pipe.cut_widths),
            "send": pipeline_send_bytes(pipe, b),
            "messages": lowered.as_text().count("collective_permute"),
            "padding_waste": pipe.padding_waste(),
            "link": _link(mesh) if multi else None,
        }
    else:
        step_fn = make_train_step(model, tx, preprocess=preprocess, seed=c.seed)

        def step(s, im, lb, idx):
            with conv_wgrad_context(c.conv_wgrad):
                return step_fn(s, im[idx], lb[idx])

        multi_fn = make_multi_step(model, tx, preprocess=preprocess, seed=c.seed)

        def scanned_step(s, im, lb, idx_bt):  # idx [B, T]: split over `data` along B
            # the T batches gathered first: make_multi_step scans over [T, B, ...] images
            with conv_wgrad_context(c.conv_wgrad):
                return multi_fn(s, jnp.swapaxes(im[idx_bt], 0, 1), lb[idx_bt].T)

        state = sharding.put_replicated(host_state, mesh)
        compiled = (
            sharding.data_parallel(step, mesh)
            .lower(state, images, labels, sharding.put_batch(batches[0], mesh))
            .compile()
        )
        metrics = []
        for i in range(n_check):
            state, m = compiled(state, images, labels, sharding.put_batch(batches[i], mesh))
            metrics.append(m)
        out["history"] = [{key: float(v) for key, v in m.items()} for m in fetch(metrics)]
        out["check_seconds"] = time.perf_counter() - t0
        out["param_sums"] = _param_sums(state.params)
        out["final_step"] = int(jax.device_get(state.step))
        box["state"] = state
        del state
        if t > 1:
            compiled = (
                sharding.data_parallel(scanned_step, mesh)
                .lower(box["state"], images, labels, sharding.put_batch(next_batches().T, mesh))
                .compile()
            )

        def window() -> float:
            pending = []
            start = time.perf_counter()
            for _ in range(k // t):
                idx = next_batches()
                idx = sharding.put_batch(idx[0] if t == 1 else idx.T, mesh)
                box["state"], m = compiled(box["state"], images, labels, idx)
                pending.append(m)
            fetch(pending)
            return time.perf_counter() - start

        seconds = timed(window)
        if multi:
            out["link"] = _link(mesh)
    eps = [k * b / s for s in seconds]
    out |= {
        "window_seconds": seconds,
        "window_examples_per_s": eps,
        "examples_per_s": statistics.median(eps),
        "step_seconds": statistics.median(seconds) / k,
        "scan_steps": t,
    }
    return out


def _link(mesh) -> dict[str, Any]:
    """Median seconds of a `ppermute` (0 -> 1 -> ...) and of a `psum` over the mesh's
    devices (one per process here), for each size in LINK_SIZES; the fitted α, β."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from localjax.perf.pipeline_cost import fit_link

    n, axis = mesh.size, mesh.axis_names[0]
    perm = [(i, i + 1) for i in range(n - 1)]
    sharded = NamedSharding(mesh, PartitionSpec(axis))
    progs = {
        "ppermute": lambda x: jax.lax.ppermute(x, axis, perm),
        "psum": lambda x: jax.lax.psum(x, axis),
    }
    out: dict[str, Any] = {"sizes": list(LINK_SIZES)}
    for name, body in progs.items():
        fn = jax.jit(
            jax.shard_map(body, mesh=mesh, in_specs=PartitionSpec(axis), out_specs=sharded.spec)
        )
        times = []
        for size in LINK_SIZES:
            x = jax.jit(
                lambda size=size: jnp.ones((n, size // 4), jnp.float32), out_shardings=sharded
            )()
            for _ in range(3):
                jax.block_until_ready(fn(x))
            reps = []
            for _ in range(10 if size < (8 << 20) else 5):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(x))
                reps.append(time.perf_counter() - t0)
            times.append(statistics.median(reps))
        alpha, beta = fit_link(LINK_SIZES, times)
        out[name] = {"seconds": times, "alpha_s": alpha, "beta_bytes_per_s": beta}
    return out


def _abstract_state(model, tx, shape, spec):
    import jax
    import jax.numpy as jnp

    from localjax import data as data_lib
    from localjax.training.state import create_train_state

    return jax.eval_shape(
        lambda: create_train_state(
            model,
            tx,
            jax.random.key(0),
            data_lib.normalize(jnp.zeros((2, *shape), jnp.uint8), spec),
            jnp.zeros((2,), jnp.int32),
        )
    )


def _bytes_job() -> dict[str, Any]:
    import jax
    import numpy as np

    from localjax import data as data_lib
    from localjax.network import count_params
    from localjax.perf.pipeline_cost import (
        ideal_speedup,
        pipeline_send_bytes,
        ring_allreduce_bytes,
    )
    from localjax.training import pipeline as pipeline_lib
    from localjax.training.config import model_from_config
    from localjax.training.optimizer import make_optimizer
    from localjax.training.stages import block_flops, num_blocks

    rows = []
    hlo_devices = {int(n) for n in FLAGS.hlo_devices} if FLAGS.hlo else set()
    for net in FLAGS.bytes_nets:
        c = net_config(net, full_size=True)
        spec = data_lib.get_spec(c.dataset)
        shape = (spec.image_size, spec.image_size, spec.channels)
        model = model_from_config(c, spec.num_classes)
        b = c.batch_size
        tx = make_optimizer(c.lr, tuple(c.milestones), 400, c.lr_decay)
        state = _abstract_state(model, tx, shape, spec)
        leaves = jax.tree.leaves(state.params)
        param_bytes = sum(x.size * np.dtype(x.dtype).itemsize for x in leaves)
        inference, total = count_params(state.params)
        costs, out_cost = block_flops(
            model,
            state,
            jax.ShapeDtypeStruct((b, *shape), np.float32),
            jax.ShapeDtypeStruct((b,), np.int32),
        )

        def preprocess(im, key, spec=spec):
            return data_lib.augment(im, key, spec)

        for n in (int(x) for x in FLAGS.bytes_devices):
            row: dict[str, Any] = {
                "net": net,
                "model": c.model,
                "dataset": c.dataset,
                "batch_size": b,
                "devices": n,
                "params": total,
                "params_inference": inference,
                "param_bytes": param_bytes,
                "dp_ring_bytes_per_device": ring_allreduce_bytes(param_bytes, n),
                "block_flops": costs,
                "output_flops": out_cost,
            }
            devices = jax.devices()[:n]
            if n > num_blocks(model) or len(devices) < n:
                row["pipeline"] = None
                rows.append(row)
                continue
            pmesh = pipeline_lib.make_pipeline_mesh(devices, n)
            sample = (
                jax.ShapeDtypeStruct((2, *shape), np.uint8),
                jax.ShapeDtypeStruct((2,), np.int32),
            )
            pipe = pipeline_lib.make_pipeline(
                model,
                tx,
                state,
                pmesh,
                sample=sample,
                batch_size=b,
                preprocess=preprocess,
                seed=0,
                conv_wgrad=c.conv_wgrad,
            )
            sent = pipeline_send_bytes(pipe, b)
            ideal, _ = ideal_speedup(costs, n, out_cost)
            row["pipeline"] = {
                "cuts": list(pipe.cuts),
                "stage_flops": pipe.stage_flops,
                "ideal_speedup": ideal,
                "cut_widths": list(pipe.cut_widths),
                "act_width": pipe.act_width,
                **sent,
            }
            row["dp_over_pipeline"] = row["dp_ring_bytes_per_device"] / sent["per_sender"]
            if n in hlo_devices:
                t0 = time.perf_counter()
                row["hlo"] = _hlo_collectives(
                    pipe, model, tx, state, c, shape, preprocess, devices, b
                )
                row["hlo"]["compile_seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"rows": rows}


def _hlo_collectives(pipe, model, tx, state, c, shape, preprocess, devices, b):
    """The collectives (op -> count, bytes) of the compiled pipeline tick and of the
    compiled data-parallel fused step on the same devices."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from localjax.ops.conv_wgrad import conv_wgrad_context
    from localjax.perf.pipeline_cost import collective_bytes_by_op
    from localjax.training import sharding
    from localjax.training.steps import make_train_step

    n_images = 4 * b
    pm = pipe.mesh

    def sds(shape_, dtype, mesh, *axes):
        return jax.ShapeDtypeStruct(
            shape_, dtype, sharding=NamedSharding(mesh, PartitionSpec(*axes))
        )

    buffers = pipe.buffer_shapes()
    carry = pipe.carry_shape(b)
    images = sds((n_images, *shape), np.uint8, pm)
    labels = sds((n_images,), np.int32, pm)
    idx, valid = pipe.feed_shapes(1, b)
    tick = pipe.tick.lower(buffers, carry, images, labels, idx, valid).compile()
    pipeline_ops = collective_bytes_by_op(tick.as_text())

    mesh = Mesh(np.asarray(devices), (sharding.AXIS,))
    step_fn = make_train_step(model, tx, preprocess=preprocess, seed=0)

    def step(st, im, lb, ix):
        with conv_wgrad_context(c.conv_wgrad):
            return step_fn(st, im[ix], lb[ix])

    rep = NamedSharding(mesh, PartitionSpec())
    st = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    dp = (
        sharding.data_parallel(step, mesh)
        .lower(
            st,
            sds((n_images, *shape), np.uint8, mesh),
            sds((n_images,), np.int32, mesh),
            sds((b,), np.int32, mesh, sharding.AXIS),
        )
        .compile()
    )
    return {"pipeline": pipeline_ops, "dp": collective_bytes_by_op(dp.as_text())}


def _model_job() -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from localjax import data as data_lib
    from localjax.ops.conv_wgrad import conv_wgrad_context
    from localjax.perf.pipeline_cost import ideal_speedup, pipeline_send_bytes
    from localjax.perf.pipeline_timing import _median_seconds, time_stage_alone
    from localjax.training import pipeline as pipeline_lib
    from localjax.training import sharding
    from localjax.training.config import model_from_config
    from localjax.training.optimizer import make_optimizer
    from localjax.training.stages import block_flops, num_blocks
    from localjax.training.state import create_train_state
    from localjax.training.steps import make_train_step

    nets = []
    steps = FLAGS.model_steps
    for net in FLAGS.model_nets:
        c = net_config(net)
        spec = data_lib.get_spec(c.dataset)
        shape = (spec.image_size, spec.image_size, spec.channels)
        model = model_from_config(c, spec.num_classes)
        b = c.batch_size
        tx = make_optimizer(c.lr, tuple(c.milestones), 400, c.lr_decay)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (2 * b, *shape), dtype=np.uint8)
        labels = rng.integers(0, spec.num_classes, (2 * b,)).astype(np.int32)
        idx = rng.permutation(2 * b)[:b].astype(np.int32)

        def preprocess(im, key, spec=spec):
            return data_lib.augment(im, key, spec)

        host_state = jax.device_get(
            create_train_state(
                model,
                tx,
                jax.random.key(0),
                data_lib.normalize(jnp.asarray(images[:2]), spec),
                jnp.asarray(labels[:2]),
            )
        )
        device = jax.devices()[0]
        # the fused step on this one core
        step_fn = make_train_step(model, tx, preprocess=preprocess, seed=0)

        def step(st, im, lb, ix, step_fn=step_fn, c=c):
            with conv_wgrad_context(c.conv_wgrad):
                return step_fn(st, im[ix], lb[ix])

        args = jax.device_put((host_state, images, labels, idx), device)
        t0 = time.perf_counter()
        fused = jax.jit(step).lower(*args).compile()
        fused_compile = time.perf_counter() - t0
        box = {"state": args[0]}

        def run(fused=fused, args=args, box=box):
            box["state"], m = fused(box["state"], *args[1:])
            return m

        fused_s = _median_seconds(run, steps, 2)
        del box
        sample = (images[:2], labels[:2])
        x_spec = jax.ShapeDtypeStruct((b, *shape), jnp.float32)
        costs, out_cost = block_flops(
            model, host_state, x_spec, jax.ShapeDtypeStruct((b,), jnp.int32)
        )
        entry: dict[str, Any] = {
            "net": net,
            "config": {"model": c.model, "num_layers": c.num_layers, "num_hidden": c.num_hidden}
            | {"feat_mult": c.feat_mult, "dataset": c.dataset, "batch_size": b},
            "fused_seconds": fused_s,
            "fused_compile_seconds": fused_compile,
            "block_flops": costs,
            "output_flops": out_cost,
            "stages": [],
        }
        print(f"{net}: fused {1e3 * fused_s:.1f} ms (load {load_average()})", flush=True)
        for s in (int(x) for x in FLAGS.model_stages):
            if s > num_blocks(model) or s > len(jax.devices()):
                continue
            ideal, cuts = ideal_speedup(costs, s, out_cost)
            pmesh = pipeline_lib.make_pipeline_mesh(jax.devices()[:s], s)
            pipe = pipeline_lib.make_pipeline(
                model,
                tx,
                host_state,
                pmesh,
                sample=sample,
                batch_size=b,
                preprocess=preprocess,
                seed=0,
                conv_wgrad=c.conv_wgrad,
            )
            flat = jax.sharding.Mesh(np.asarray(jax.devices()[:s]), ("data",))
            rows = jax.device_get(pipe.pack(sharding.put_replicated(host_state, flat)))
            times, compiles = [], []
            for st in range(s):
                t, comp = time_stage_alone(
                    pipe,
                    st,
                    {dt: r[st] for dt, r in rows.items()},
                    images,
                    labels,
                    idx,
                    device=device,
                    steps=steps,
                    warmup=2,
                    conv_wgrad=c.conv_wgrad,
                )
                times.append(t)
                compiles.append(comp)
            lowered_text = ""
            try:  # messages per tick (the tick's collective-permutes), from the lowering
                rep = jax.sharding.NamedSharding(pmesh, jax.sharding.PartitionSpec())
                lowered_text = pipe.tick.lower(
                    pipe.buffer_shapes(),
                    pipe.carry_shape(b),
                    jax.ShapeDtypeStruct(images.shape, np.uint8, sharding=rep),
                    jax.ShapeDtypeStruct(labels.shape, np.int32, sharding=rep),
                    *pipe.feed_shapes(1, b),
                ).as_text()
            except Exception as e:  # the count is a detail; keep the timings
                print(f"  (could not lower the tick for its message count: {e})", flush=True)
            entry["stages"].append(
                {
                    "num_stages": s,
                    "cuts": list(pipe.cuts),
                    "flop_cuts": list(cuts),
                    "stage_flops": pipe.stage_flops,
                    "ideal_speedup": ideal,
                    "stage_seconds": times,
                    "stage_compile_seconds": compiles,
                    "send": pipeline_send_bytes(pipe, b),
                    "messages": lowered_text.count("collective_permute") or 1,
                    "padding_waste": pipe.padding_waste(),
                }
            )
            print(
                f"  {s} stages (cuts {list(pipe.cuts)}): "
                + " | ".join(f"{1e3 * t:.1f}" for t in times)
                + f" ms, ideal {ideal:.2f}x (load {load_average()})",
                flush=True,
            )
        nets.append(entry)
    return {"nets": nets}


# ----------------------------------------------------------------------------- launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forwarded() -> list[str]:
    out = []
    for name in FORWARD:
        value = FLAGS[name].value
        if isinstance(value, list):
            value = ",".join(value)
        elif isinstance(value, bool):
            out.append(f"--{name}" if value else f"--no{name}")
            continue
        out.append(f"--{name}={value}")
    return out


def _launch(
    workdir: str,
    job: str,
    net: str,
    nprocs: int,
    pinned: bool,
    fake_devices: int = 1,
    independent: bool = False,
    tag: str = "",
) -> list[dict]:
    """Runs `--job` in `nprocs` worker processes (each pinned to its core when `pinned`),
    joined by `jax.distributed` unless `independent` (then each runs alone, all at
    once); returns their results (process order). Raises RuntimeError on a failure (the
    workers' logs are in `workdir`)."""
    address = f"127.0.0.1:{_free_port()}"
    flags_text = (
        f"--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count={fake_devices}"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": flags_text,
        "JAX_PLATFORMS": "cpu",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    if FLAGS.malloc_env:
        env |= MALLOC_ENV
    procs, logs, paths = [], [], []
    tag = tag or (f"{job}_{net}" if net else job)
    for pid in range(nprocs):
        path = os.path.join(workdir, f"{tag}_{pid}.json")
        log_path = os.path.join(workdir, f"{tag}_{pid}.log")
        cmd = ["taskset", "-c", FLAGS.cores[pid % len(FLAGS.cores)]] if pinned else []
        cmd += [
            sys.executable,
            "-m",
            "experiments.pipeline_bench",
            "--role=worker",
            f"--job={job}",
            f"--net={net}",
            f"--process_id={pid}",
            f"--num_processes={1 if independent else nprocs}",
            f"--coordinator={address}",
            f"--result={path}",
            *_forwarded(),
        ]
        log = open(log_path, "w")  # noqa: SIM115 (closed below)
        logs.append(log)
        paths.append(path)
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    failed = None
    try:
        deadline = time.monotonic() + FLAGS.timeout
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode != 0 and failed is None:
                failed = p
                break
    except subprocess.TimeoutExpired:
        failed = "timeout"
    finally:
        for p in procs:  # the processes this call started, each by its own group
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
    if failed is not None:
        tails = []
        for pid in range(nprocs):
            with open(os.path.join(workdir, f"{tag}_{pid}.log")) as f:
                tails.append(f"--- process {pid}:\n" + f.read()[-4000:])
        why = "timed out" if failed == "timeout" else f"exited with {failed.returncode}"
        raise RuntimeError(f"{tag} {why}; logs in {workdir}\n" + "\n".join(tails))
    results = []
    for path in paths:
        with open(path) as f:
            results.append(json.load(f))
    return results


def _max_rel_diff(got: list[dict], want: list[dict]) -> dict[str, Any]:
    """Worst relative difference of per-batch metrics (keys both have)."""
    worst, where = 0.0, None
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        for key in sorted(set(g) & set(w)):
            a, b = float(g[key]), float(w[key])
            d = abs(a - b) / max(abs(b), 1e-12)
            if d > worst:
                worst, where = d, f"batch {i + 1} {key}"
    missing = sorted(set(want[0]) ^ set(got[0])) if got and want else []
    return {"max_rel_diff": worst, "where": where, "batches": min(len(got), len(want))} | (
        {"keys_not_shared": missing} if missing else {}
    )


def _concurrency(workdir: str) -> dict[str, Any]:
    from localjax.perf.pipeline_cost import predict_pipeline

    out = {}
    for net in FLAGS.nets:
        print(f"[concurrency] {net}: fused (1 process), pipeline and dp (2 processes)", flush=True)
        fused = _launch(workdir, "fused", net, 1, FLAGS.pin)[0]
        # the machine's own ceiling: two independent fused runs at once, one per core
        pair = _launch(
            workdir, "fused", net, 2, FLAGS.pin, independent=True, tag=f"fused_pair_{net}"
        )
        pipe = _launch(workdir, "pipeline", net, 2, FLAGS.pin)
        dp = _launch(workdir, "dp", net, 2, FLAGS.pin)
        base = fused["examples_per_s"]
        p0 = pipe[0]
        flops = p0["stage_flops"]
        bound = sum(flops) / max(flops)
        link = p0["link"]["ppermute"]
        stage_s = [r["stage_seconds"] for r in sorted(pipe, key=lambda r: r["stage"])]
        pred = predict_pipeline(
            stage_s,
            p0["send"]["per_sender"],
            link["alpha_s"],
            link["beta_bytes_per_s"],
            FLAGS.batch_size,
            messages=p0["messages"],
            batches_per_epoch=math.ceil(60000 / FLAGS.batch_size),
            fused_seconds=fused["step_seconds"],
        )
        entry = {
            "fused": fused,
            "pipeline": pipe,
            "dp": dp,
            "examples_per_s": {
                "fused_1_core": base,
                "pipeline_2_processes": p0["examples_per_s"],
                "dp_2_processes": dp[0]["examples_per_s"],
            },
            "ratio_to_fused": {
                "pipeline": p0["examples_per_s"] / base,
                "dp": dp[0]["examples_per_s"] / base,
                # two independent fused runs at once: what 2 cores give here at most
                "two_independent": sum(r["examples_per_s"] for r in pair) / base,
            },
            "fused_pair": pair,
            "flop_bound": bound,
            "target": GOALS.get(net, ("flop bound", bound)),
            "metrics_pipeline_vs_fused": _max_rel_diff(p0["history"], fused["history"]),
            "metrics_dp_vs_fused": _max_rel_diff(dp[0]["history"], fused["history"]),
            "param_sums_pipeline_vs_fused": _max_rel_diff(
                [p0["param_sums"]], [fused["param_sums"]]
            ),
            "model_check": {
                "measured_tick_s": FLAGS.batch_size / p0["examples_per_s"],
                "predicted": pred,
                "stage_seconds": stage_s,
            },
            "load": {
                "fused": [fused["load_before"], fused["load_after"]],
                "pipeline": [p0["load_before"], p0["load_after"]],
                "dp": [dp[0]["load_before"], dp[0]["load_after"]],
                "fused_pair": [pair[0]["load_before"], pair[0]["load_after"]],
            },
        }
        out[net] = entry
        _print_concurrency(net, entry)
    return out


def _print_concurrency(net: str, e: dict) -> None:
    eps, ratio = e["examples_per_s"], e["ratio_to_fused"]
    kind, target = e["target"]
    mc = e["model_check"]
    print(
        f"  {net}: fused 1 core {eps['fused_1_core']:.0f} ex/s | pipeline 2 proc "
        f"{eps['pipeline_2_processes']:.0f} ex/s ({ratio['pipeline']:.2f}x; {kind} "
        f"{target:.2f}x) | dp 2 proc {eps['dp_2_processes']:.0f} ex/s ({ratio['dp']:.2f}x)\n"
        f"  machine ceiling: two independent fused runs at once give "
        f"{ratio['two_independent']:.2f}x one run alone\n"
        f"  metrics over {e['metrics_pipeline_vs_fused']['batches']} batches: pipeline vs "
        f"fused max rel {e['metrics_pipeline_vs_fused']['max_rel_diff']:.1e}, dp vs fused "
        f"{e['metrics_dp_vs_fused']['max_rel_diff']:.1e}; parameters (sum |p| per module) "
        f"{e['param_sums_pipeline_vs_fused']['max_rel_diff']:.1e}\n"
        f"  stages alone {' | '.join(f'{1e3 * t:.1f}' for t in mc['stage_seconds'])} ms; "
        f"tick measured {1e3 * mc['measured_tick_s']:.1f} ms, predicted "
        f"{1e3 * mc['predicted']['tick_s']:.1f} ms "
        f"(sends {1e3 * mc['predicted']['comm_s']:.2f} ms)\n"
        f"  load (1/5/15 min) fused {e['load']['fused']}, pipeline {e['load']['pipeline']}, "
        f"dp {e['load']['dp']}",
        flush=True,
    )


def _bytes(workdir: str) -> dict[str, Any]:
    print("[bytes] pipeline activations vs data-parallel all-reduce", flush=True)
    n = max(int(x) for x in FLAGS.bytes_devices)
    r = _launch(workdir, "bytes", "", 1, False, fake_devices=n)[0]
    print(
        f"  {'net':>9} {'n':>2} {'cuts':>16} {'FLOP-ideal':>10} {'pipeline/sender':>15} "
        f"{'cuts unpadded':>15} {'padding':>7} {'dp ring/device':>14} {'dp/pipe':>7}"
    )
    mib = 2**20
    for row in r["rows"]:
        p = row["pipeline"]
        if p is None:
            print(f"  {row['net']:>9} {row['devices']:>2} {'-':>16} (more stages than blocks)")
            continue
        lo, hi = min(p["cut_bytes"]) / mib, max(p["cut_bytes"]) / mib
        print(
            f"  {row['net']:>9} {row['devices']:>2} {str(p['cuts']):>16} "
            f"{p['ideal_speedup']:>9.2f}x {p['per_sender'] / mib:>11.2f} MiB "
            f"{lo:>6.2f}-{hi:.2f} MiB {100 * p['padding_fraction']:>6.0f}% "
            f"{row['dp_ring_bytes_per_device'] / mib:>10.2f} MiB {row['dp_over_pipeline']:>6.1f}x"
        )
        if "hlo" in row:
            h = row["hlo"]
            text = "; ".join(
                f"{prog} "
                + ", ".join(
                    f"{op} {v['count']}x {v['bytes'] / 2**20:.2f} MiB" for op, v in h[prog].items()
                )
                for prog in ("pipeline", "dp")
            )
            print(f"      compiled: {text}")
    return r


def _model(workdir: str, concurrency: dict | None) -> dict[str, Any]:
    from localjax.perf.pipeline_cost import predict_pipeline

    print("[model] stage times on one core -> predicted throughput", flush=True)
    n = max(int(x) for x in FLAGS.model_stages)
    r = _launch(workdir, "model", "", 1, FLAGS.pin, fake_devices=n)[0]
    if concurrency:
        first = next(iter(concurrency.values()))["pipeline"][0]["link"]["ppermute"]
        alpha, beta, source = first["alpha_s"], first["beta_bytes_per_s"], "measured (ppermute)"
    else:
        alpha, beta = FLAGS.link_alpha_us * 1e-6, FLAGS.link_gbps * 1e9
        source = "flags"
    r["link"] = {"alpha_s": alpha, "beta_bytes_per_s": beta, "source": source}
    per_epoch = math.ceil(60000 / FLAGS.batch_size)
    for net in r["nets"]:
        print(f"  {net['net']}: fused {1e3 * net['fused_seconds']:.1f} ms/step on one core")
        for st in net["stages"]:
            st["predicted"] = predict_pipeline(
                st["stage_seconds"],
                st["send"]["per_sender"],
                alpha,
                beta,
                FLAGS.batch_size,
                messages=st["messages"],
                batches_per_epoch=per_epoch,
                fused_seconds=net["fused_seconds"],
            )
            p = st["predicted"]
            print(
                f"    S={st['num_stages']} cuts {st['cuts']}: tick {1e3 * p['tick_s']:.1f} ms, "
                f"{p['examples_per_s']:.0f} ex/s, speedup {p['speedup']:.2f}x "
                f"(epoch {p['epoch_speedup']:.2f}x; measured-time bound {p['bound']:.2f}x, "
                f"FLOP balance {st['ideal_speedup']:.2f}x)"
            )
        if concurrency and net["net"] in concurrency:
            two = [s for s in net["stages"] if s["num_stages"] == 2]
            if two:
                measured = concurrency[net["net"]]["examples_per_s"]["pipeline_2_processes"]
                net["check_2_stages"] = {
                    "predicted_examples_per_s": two[0]["predicted"]["examples_per_s"],
                    "measured_examples_per_s": measured,
                }
                print(
                    f"    check: 2 stages predicted {two[0]['predicted']['examples_per_s']:.0f} "
                    f"ex/s, measured with 2 processes {measured:.0f} ex/s"
                )
    print(f"  load before/after: {r['load_before']} / {r['load_after']}", flush=True)
    return r


def _apply_small() -> None:
    small = {
        "num_hidden": 128,
        "feat_mult": 0.0625,
        "windows": 3,
        "window_steps": 4,
        "warmup_windows": 1,
        "check_batches": 4,
        "model_steps": 2,
    }
    for name, value in small.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value
    if not FLAGS["hlo_devices"].present:
        FLAGS.hlo_devices = ["2"]
    if not FLAGS["bytes_nets"].present:
        FLAGS.bytes_nets = ["mlp3", "vgg8b"]


def _launcher() -> None:
    if FLAGS.small:
        _apply_small()
    if FLAGS.scan_steps < 1 or FLAGS.window_steps % FLAGS.scan_steps:
        raise app.UsageError(
            f"--scan_steps={FLAGS.scan_steps} must be >= 1 and divide "
            f"--window_steps={FLAGS.window_steps}."
        )
    cores = {int(c) for c in FLAGS.cores}
    if FLAGS.pin and not cores <= os.sched_getaffinity(0):
        raise app.UsageError(f"--cores {sorted(cores)} are not all available to this process.")
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="pipeline_bench_")
    os.makedirs(workdir, exist_ok=True)
    summary = start_record("pipeline_bench", workdir)
    concurrency = None
    for part in FLAGS.parts:
        if part == "concurrency":
            concurrency = summary["concurrency"] = _concurrency(workdir)
        elif part == "bytes":
            summary["bytes"] = _bytes(workdir)
        elif part == "model":
            summary["model"] = _model(workdir, concurrency)
        else:
            raise app.UsageError(f"unknown part {part!r}; choose concurrency, bytes, model.")
    finish_record(summary, FLAGS.out)


def main(argv):
    del argv
    if FLAGS.role == "worker":
        result = _worker()
        with open(FLAGS.result, "w") as f:
            json.dump(result, f)
    else:
        _launcher()


if __name__ == "__main__":
    app.run(main)
