"""PNG plots of finished or running workdirs: test error, and each block's local error.

    python -m experiments.plot --out=plots \
        --workdirs=runs/repro/fashion_mnist/mlp_pred,runs/repro/fashion_mnist/mlp_predsim

Writes OUT/test_error.png (one line per workdir, test error vs epoch) and, per
workdir, OUT/<name>_local.png: each block's training-time local error vs epoch (the
local classifiers of `pred`/`predsim`), or its local loss where a block has no local
classifier (`sim`, `bio`). `backprop` runs have no local curves. Reads metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import app, flags

__all__ = ["load_metrics", "run_label", "plot_test_error", "plot_local", "plot_workdirs"]

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Workdirs holding metrics.jsonl.")
_OUT = flags.DEFINE_string("out", "plots", "Output directory for the PNG files.")
_LOG_Y = flags.DEFINE_bool("log_y", False, "Logarithmic error axis.")

_BLOCK = re.compile(r"block_(\d+)$")


def load_metrics(workdir: str) -> list[dict]:
    """The per-epoch records of a workdir.

    Args:
      workdir: directory with `metrics.jsonl`.

    Returns:
      list of dicts, one per finished epoch (a cut last line is ignored).

    Raises:
      FileNotFoundError: if `metrics.jsonl` is missing.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no metrics.jsonl in {workdir}; is it a training workdir?")
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def run_label(workdir: str) -> str:
    """A short label for a workdir: its last two path parts (`fashion_mnist/mlp_sim`)."""
    parts = os.path.normpath(workdir).split(os.sep)
    return "/".join(parts[-2:])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_test_error(runs: dict[str, list[dict]], path: str, log_y: bool = False) -> str:
    """Test error (%) vs epoch, one line per run.

    Args:
      runs: label -> records (`load_metrics`).
      path: output PNG path.
      log_y: logarithmic y axis.

    Returns:
      `path`.

    Raises:
      ValueError: if no run has a `test_error`.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for label, records in runs.items():
        pts = [(r["epoch"], r["test_error"]) for r in records if "test_error" in r]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                marker=_marker(pts),
                label=f"{label} ({pts[-1][1]:.2f}%)",
            )
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError("no test_error in any of the runs; nothing to plot.")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _marker(points: list) -> str | None:
    """Dots on short curves (a few epochs), plain lines on long ones."""
    return "o" if len(points) <= 25 else None


def _block_keys(records: list[dict], prefix: str) -> list[str]:
    keys = {k for r in records for k in r if k.startswith(prefix)}
    return sorted(keys, key=lambda k: int(_BLOCK.search(k).group(1)) if _BLOCK.search(k) else 0)


def plot_local(records: list[dict], path: str, title: str = "") -> str | None:
    """Each block's local error (%) vs epoch, or its local loss where it has no error.

    Args:
      records: `load_metrics` records of one run.
      path: output PNG path.
      title: figure title.

    Returns:
      `path`, or None (nothing written) when the run has no local metrics (backprop).
    """
    err_keys = _block_keys(records, "local_error/")
    loss_keys = [
        k
        for k in _block_keys(records, "local_loss/")
        if "local_error/" + k.split("/", 1)[1] not in err_keys
    ]
    if not err_keys and not loss_keys:
        return None
    plt = _pyplot()
    panels = [(k, "local error (%)") for k in [err_keys] if k]
    panels += [(k, "local loss") for k in [loss_keys] if k]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (keys, ylabel) in zip(axes[0], panels, strict=True):
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in records if key in r]
            ax.plot(*zip(*pts, strict=True), marker=_marker(pts), label=key.split("/", 1)[1])
        if ylabel.startswith("local error"):
            pts = [(r["epoch"], r["test_error"]) for r in records if "test_error" in r]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    "k--",
                    marker=_marker(pts),
                    label="test error (output layer)",
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel + " (train)" if ylabel == "local loss" else ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_workdirs(workdirs: list[str], out_dir: str, log_y: bool = False) -> list[str]:
    """All plots of some workdirs.

    Args:
      workdirs: training workdirs (each with metrics.jsonl).
      out_dir: directory for the PNGs (created).
      log_y: logarithmic error axis for the test-error plot.

    Returns:
      list of written PNG paths.

    Raises:
      FileNotFoundError: a workdir without metrics.jsonl.
      ValueError: no test error in any workdir.
    """
    os.makedirs(out_dir, exist_ok=True)
    runs = {run_label(w): load_metrics(w) for w in workdirs}
    written = [plot_test_error(runs, os.path.join(out_dir, "test_error.png"), log_y)]
    for label, records in runs.items():
        name = label.replace("/", "_")
        path = plot_local(records, os.path.join(out_dir, f"{name}_local.png"), title=label)
        if path:
            written.append(path)
    return written


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        written = plot_workdirs(_WORKDIRS.value, _OUT.value, _LOG_Y.value)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(written))


if __name__ == "__main__":
    flags.mark_flag_as_required("workdirs")
    app.run(main)
