"""Runs published rows of one dataset and tabulates measured vs published test error.

    # the four Fashion-MNIST MLP rows at their full recipes (~75 min each on 2 CPU cores)
    python -m experiments.reproduce --dataset=fashion_mnist --rows='mlp_*' --root=runs/repro

    # a 1-epoch smoke run on 2000 training examples
    python -m experiments.reproduce --dataset=fashion_mnist --rows='mlp_*' \
        --root=/tmp/smoke --epochs=1 --train_limit=2000

    # re-tabulate finished (or partly finished) workdirs without training
    python -m experiments.reproduce --dataset=fashion_mnist --rows='mlp_*' \
        --root=runs/repro --tabulate_only

Each row trains into ROOT/DATASET/ROW (metrics.jsonl, TensorBoard events, summary.json,
reproduce.json with the wall time). A row whose workdir already holds a summary.json of
the same config is not trained again (use --rerun). Then ROOT/DATASET/results.json and
ROOT/DATASET/results.md hold one entry per row: measured final test error, published
error (results.tsv), their difference, parameters and wall time (the sum of the epochs'
(train + eval) times, across resumed invocations).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
import math
import os
import sys
import time
from typing import Any

from absl import app, flags, logging

from localjax.errors import ConfigError, DatasetError, TrainingError

__all__ = [
    "DATASETS",
    "select_rows",
    "row_config",
    "read_result",
    "tabulate",
    "markdown_table",
    "run_rows",
]

DATASETS = (
    "mnist",
    "fashion_mnist",
    "kuzushiji_mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "stl10",
)

_DATASET = flags.DEFINE_enum("dataset", None, DATASETS, "Dataset config file to take rows from.")
_ROWS = flags.DEFINE_list(
    "rows", ["*"], "Row names or globs, comma-separated (e.g. 'mlp_*' or 'mlp_sim,vgg8b_pred')."
)
_ROOT = flags.DEFINE_string("root", "runs/repro", "Workdirs go to ROOT/DATASET/ROW.")
_EPOCHS = flags.DEFINE_integer(
    "epochs", 0, "Override the recipe's epochs (0 = recipe); milestones are kept."
)
_TRAIN_LIMIT = flags.DEFINE_integer(
    "train_limit", 0, "Use only the first N training examples (0 = all)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Dataset directory ('' = default location).")
_SET = flags.DEFINE_multi_string(
    "set", [], "Any other config override KEY=VALUE (Python literal), e.g. --set=seed=1."
)
_TABULATE_ONLY = flags.DEFINE_bool(
    "tabulate_only", False, "Only re-tabulate existing workdirs; train nothing."
)
_RERUN = flags.DEFINE_bool("rerun", False, "Train rows again even if already finished.")
_PROGRESS = flags.DEFINE_bool("progress_bar", False, "Show a per-epoch progress bar.")


# ---------------------------------------------------------------- rows and configs
def _config_module(dataset: str):
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}.")
    return importlib.import_module(f"experiments.configs.{dataset}")


def select_rows(dataset: str, patterns: list[str]) -> list[str]:
    """The dataset's row names matching any of the globs, in the config file's order.

    Args:
      dataset: a name in `DATASETS`.
      patterns: row names or `fnmatch` globs (`mlp_*`).

    Returns:
      list of row names (non-empty).

    Raises:
      ConfigError (a ValueError): for an unknown dataset, or a pattern that matches no row
        (the message lists the rows).
    """
    rows = list(_config_module(dataset).ROWS)
    chosen = []
    for pattern in patterns:
        hits = fnmatch.filter(rows, pattern)
        if not hits:
            raise ConfigError(f"--rows={pattern!r} matches no {dataset} row; rows are {rows}.")
        chosen += [r for r in hits if r not in chosen]
    return [r for r in rows if r in chosen]


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as relu


def row_config(
    dataset: str,
    row: str,
    *,
    epochs: int = 0,
    train_limit: int = 0,
    data_dir: str = "",
    overrides: dict[str, Any] | None = None,
):
    """The config of one row with the command line's overrides.

    Args:
      dataset: a name in `DATASETS`.
      row: a row of that dataset's config file.
      epochs: > 0 replaces the recipe's epochs.
      train_limit: > 0 trains on the first N examples only.
      data_dir: non-empty replaces the dataset directory.
      overrides: further `{field: value}`; fields must exist in the config.

    Returns:
      An `ml_collections.ConfigDict`.

    Raises:
      ConfigError (a ValueError): unknown dataset or config field; ValueError: unknown
        row (from the config file).
    """
    config = _config_module(dataset).get_config(row)
    if epochs:
        config.epochs = epochs
    if train_limit:
        config.train_limit = train_limit
    if data_dir:
        config.data_dir = data_dir
    for key, value in (overrides or {}).items():
        if key not in config:
            raise ConfigError(f"unknown config field {key!r} in --set; fields are {list(config)}.")
        if isinstance(config[key], tuple) and isinstance(value, list):
            value = tuple(value)
        config[key] = value
    return config


# ---------------------------------------------------------------- reading workdirs
def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by an interrupted run
    return records


def read_result(workdir: str, row: str, published: float | None = None) -> dict[str, Any]:
    """What a (finished or partial) workdir says about one row.

    Reads `summary.json` (finished run) or else the last line of `metrics.jsonl`
    (running or interrupted), and `reproduce.json` (wall time) when present.

    Args:
      workdir: the row's workdir.
      row: row name.
      published: the published error (%), or None.

    Returns:
      dict with `row`, `status` (`done`, `partial`, `missing`), `epochs_done`,
      `epochs`, `test_error` (final measured, % or None), `best_test_error`,
      `published_error`, `diff` (measured − published), `params_inference`,
      `wall_seconds` (sum of the epochs' train + eval times over all invocations),
      `run_seconds` (wall time of the last `reproduce` invocation, data loading and
      compilation included; None if not run by reproduce), `workdir`.
    """
    records = _read_metrics(workdir)
    summary_path = os.path.join(workdir, "summary.json")
    summary = _read_json(summary_path) if os.path.exists(summary_path) else None
    out: dict[str, Any] = {
        "row": row,
        "workdir": workdir,
        "status": "missing",
        "epochs_done": len(records),
        "epochs": None,
        "test_error": None,
        "best_test_error": None,
        "published_error": published,
        "diff": None,
        "params_inference": None,
        "wall_seconds": None,
        "run_seconds": None,
    }
    if summary is not None:
        out["status"] = "done"
        out["epochs"] = summary.get("epochs")
        out["test_error"] = summary.get("final_test_error")
        out["params_inference"] = summary.get("params_inference")
        if published is None:
            out["published_error"] = summary.get("published_error")
    elif records:
        out["status"] = "partial"
        out["test_error"] = records[-1].get("test_error")
    errors = [r["test_error"] for r in records if r.get("test_error") is not None]
    if errors:
        out["best_test_error"] = min(errors)
        if out["test_error"] is None:
            out["test_error"] = errors[-1]
    if records and all("epoch_seconds" in r for r in records):
        # every epoch's train + eval time, across resumed invocations
        out["wall_seconds"] = sum(r["epoch_seconds"] for r in records)
    rep_path = os.path.join(workdir, "reproduce.json")
    if os.path.exists(rep_path):
        rep = _read_json(rep_path)
        out["run_seconds"] = rep.get("wall_seconds")
        out["epochs"] = out["epochs"] or rep.get("epochs")
        if out["wall_seconds"] is None:
            out["wall_seconds"] = out["run_seconds"]
    if out["test_error"] is not None and out["published_error"] is not None:
        out["diff"] = out["test_error"] - out["published_error"]
    return out


def tabulate(dataset: str, rows: list[str], root: str) -> list[dict[str, Any]]:
    """Results of the chosen rows from their workdirs under ROOT/DATASET.

    Args:
      dataset: a name in `DATASETS`.
      rows: row names.
      root: the runs root.

    Returns:
      list of `read_result` dicts, one per row.
    """
    module = _config_module(dataset)
    return [
        read_result(os.path.join(root, dataset, row), row, module.get_config(row).published_error)
        for row in rows
    ]


def _fmt(value, spec: str, none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "-"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def markdown_table(dataset: str, results: list[dict[str, Any]]) -> str:
    """A markdown table of measured vs published test error.

    Args:
      dataset: dataset name (for the caption).
      results: `read_result` dicts.

    Returns:
      str: caption line, then the table (columns: row, epochs, measured, published,
      diff, best, params, wall time, status).
    """
    lines = [
        f"Test error (%) on {dataset}: measured (final epoch) vs published (results.tsv).",
        "",
        "| row | epochs | measured | published | diff | best epoch | params | wall time | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        epochs = f"{r['epochs_done']}/{r['epochs']}" if r["epochs"] else str(r["epochs_done"])
        params = r["params_inference"]
        lines.append(
            f"| {r['row']} | {epochs} | {_fmt(r['test_error'], '.2f')} "
            f"| {_fmt(r['published_error'], '.2f')} | {_fmt(r['diff'], '+.2f')} "
            f"| {_fmt(r['best_test_error'], '.2f')} "
            f"| {'-' if params is None else f'{params / 1e6:.1f}M'} "
            f"| {_fmt_time(r['wall_seconds'])} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


def _write_results(dataset: str, root: str, results: list[dict[str, Any]]) -> str:
    out_dir = os.path.join(root, dataset)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"dataset": dataset, "results": results}, f, indent=2)
    table = markdown_table(dataset, results)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table)
    return table


# ---------------------------------------------------------------- running
def _same_config(workdir: str, config) -> bool:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return False
    old = _read_json(path).get("config")
    new = json.loads(json.dumps(config.to_dict()))  # tuples -> lists, as stored
    return old == new


def run_rows(
    dataset: str,
    rows: list[str],
    root: str,
    *,
    epochs: int = 0,
    train_limit: int = 0,
    data_dir: str = "",
    overrides: dict[str, Any] | None = None,
    rerun: bool = False,
    progress_bar: bool = False,
) -> list[str]:
    """Trains the rows one after another, each into ROOT/DATASET/ROW.

    A row whose workdir holds a `summary.json` of the same config is skipped unless
    `rerun`. A row that fails (missing data, non-finite loss, ...) is reported and the
    next one runs.

    Args:
      dataset, rows, root: as in `tabulate`.
      epochs, train_limit, data_dir, overrides: as in `row_config`.
      rerun: train finished rows again.
      progress_bar: per-epoch progress bars.

    Returns:
      list of "row: message" strings for the rows that failed (empty when all ran).

    Raises:
      ConfigError (a ValueError): unknown dataset or override field, or a root that
        cannot be written (before anything runs). A row's own ConfigError, DatasetError
        or TrainingError is reported and the next row runs; any other exception is a bug
        and propagates.
    """
    from localjax.training import loop as train_lib  # jax is only needed when training

    configs = {
        row: row_config(
            dataset,
            row,
            epochs=epochs,
            train_limit=train_limit,
            data_dir=data_dir,
            overrides=overrides,
        )
        for row in rows
    }
    failures = []
    for row, config in configs.items():
        config.progress_bar = progress_bar
        workdir = os.path.join(root, dataset, row)
        if not rerun and _same_config(workdir, config):
            print(f"[{row}] already finished in {workdir}; skipped (--rerun to train again)")
            continue
        print(f"[{row}] training into {workdir}", flush=True)
        start = time.time()
        try:
            train_lib.train_and_evaluate(config, workdir)
        except (ConfigError, DatasetError, TrainingError) as e:
            failures.append(f"{row}: {e}")
            print(f"[{row}] failed: {e}", file=sys.stderr, flush=True)
            continue
        with open(os.path.join(workdir, "reproduce.json"), "w") as f:
            json.dump(
                {"wall_seconds": time.time() - start, "epochs": config.epochs, "row": row},
                f,
                indent=2,
            )
    return failures


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    dataset = _DATASET.value
    try:
        rows = select_rows(dataset, _ROWS.value)
        overrides = {}
        for item in _SET.value:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set expects KEY=VALUE; got {item!r}.")
            overrides[key.strip()] = _parse_value(value.strip())
        _check_root(os.path.join(_ROOT.value, dataset))
        failures = []
        if not _TABULATE_ONLY.value:
            failures = run_rows(
                dataset,
                rows,
                _ROOT.value,
                epochs=_EPOCHS.value,
                train_limit=_TRAIN_LIMIT.value,
                data_dir=_DATA_DIR.value,
                overrides=overrides,
                rerun=_RERUN.value,
                progress_bar=_PROGRESS.value,
            )
    except ConfigError as e:  # any other exception is a bug and keeps its traceback
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(1)
    table = _write_results(dataset, _ROOT.value, tabulate(dataset, rows, _ROOT.value))
    print(table)
    print(f"written: {os.path.join(_ROOT.value, dataset, 'results.{json,md}')}")
    if failures:
        print("failed rows:\n  " + "\n  ".join(failures), file=sys.stderr)
        sys.exit(1)


def _check_root(directory: str) -> None:
    """ConfigError if ROOT/DATASET cannot be created or written (before any row runs)."""
    from localjax.training.config import check_workdir  # imports jax

    check_workdir(directory, what="results directory", flag="--root")


if __name__ == "__main__":
    flags.mark_flag_as_required("dataset")
    app.run(main)
