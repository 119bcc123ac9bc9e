"""experiments/reproduce.py (row selection, tabulation of workdirs, a real 1-epoch
run), experiments/plot.py, and the TensorBoard side of MetricWriter."""

import glob
import json
import os

import pytest
from conftest import read_event_scalars

from experiments import plot, reproduce
from localjax.data import DEBIAN_FASHION_MNIST
from localjax.training import metric_writer
from localjax.training.metric_writer import MetricWriter


# ---------------------------------------------------------------- test fixtures
def _fake_workdir(root, row, errors, *, finished, local=True, epochs=None):
    """A fake training workdir (test fixture, not a real run): metrics.jsonl with the
    given per-epoch test errors, and summary.json when `finished`."""
    workdir = os.path.join(root, "fashion_mnist", row)
    os.makedirs(workdir)
    with MetricWriter(workdir) as writer:
        for epoch, err in enumerate(errors, 1):
            record = {"epoch": epoch, "test_error": err, "epoch_seconds": 30.0}
            if local:
                record.update({"local_error/block_0": err + 5, "local_loss/block_1": 0.1})
            writer.write(record)
    if finished:
        summary = {
            "final_test_error": errors[-1],
            "epochs": epochs or len(errors),
            "params_inference": 2919434,
            "published_error": 8.54,
        }
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
    return workdir


def test_select_rows_globs_and_errors():
    assert reproduce.select_rows("fashion_mnist", ["mlp_*"]) == [
        "mlp_backprop",
        "mlp_pred",
        "mlp_sim",
        "mlp_predsim",
    ]
    assert reproduce.select_rows("cifar10", ["*_bio"]) == [
        "vgg8b_pred_bio",
        "vgg8b_sim_bio",
        "vgg8b_predsim_bio",
        "vgg8b_x2_predsim_bio",
    ]
    assert reproduce.select_rows("mnist", ["vgg8b_predsim*", "mlp_sim"]) == [
        "mlp_sim",
        "vgg8b_predsim",
        "vgg8b_predsim_cutout",
    ]
    with pytest.raises(ValueError, match="matches no"):
        reproduce.select_rows("mnist", ["resnet*"])
    with pytest.raises(ValueError, match="unknown dataset"):
        reproduce.select_rows("imagenet", ["*"])


def test_row_config_overrides():
    c = reproduce.row_config(
        "fashion_mnist", "mlp_sim", epochs=2, train_limit=100, overrides={"seed": 3}
    )
    assert (c.epochs, c.train_limit, c.seed, c.milestones) == (2, 100, 3, (100, 150, 175, 188))
    with pytest.raises(ValueError, match="unknown config field"):
        reproduce.row_config("fashion_mnist", "mlp_sim", overrides={"no_such": 1})


def test_tabulate_reads_finished_partial_and_missing_workdirs(tmp_path):
    root = str(tmp_path)
    _fake_workdir(root, "mlp_predsim", [12.0, 9.0, 8.75], finished=True)
    _fake_workdir(root, "mlp_sim", [15.0, 11.0], finished=False, epochs=200)
    rows = reproduce.select_rows("fashion_mnist", ["mlp_*"])
    results = {r["row"]: r for r in reproduce.tabulate("fashion_mnist", rows, root)}
    done = results["mlp_predsim"]
    assert done["status"] == "done" and done["test_error"] == 8.75
    assert done["published_error"] == 8.54 and done["diff"] == pytest.approx(0.21)
    assert done["best_test_error"] == 8.75 and done["wall_seconds"] == 90.0
    part = results["mlp_sim"]
    assert part["status"] == "partial" and part["test_error"] == 11.0
    assert part["epochs_done"] == 2 and part["diff"] == pytest.approx(11.0 - 9.70)
    assert results["mlp_backprop"]["status"] == "missing"
    assert results["mlp_backprop"]["test_error"] is None
    table = reproduce.markdown_table("fashion_mnist", list(results.values()))
    assert "| mlp_predsim | 3/3 | 8.75 | 8.54 | +0.21 | 8.75 | 2.9M | 1.5 min | done |" in table
    assert "| mlp_backprop | 0 | - | 8.37 | - | - | - | - | missing |" in table


def test_tabulate_only_cli_writes_results_without_training(tmp_path, monkeypatch, capsys):
    root = str(tmp_path)
    _fake_workdir(root, "mlp_pred", [9.0, 8.5], finished=True)

    def no_training(*a, **k):
        raise AssertionError("--tabulate_only must not train")

    monkeypatch.setattr(reproduce, "run_rows", no_training)
    from absl import flags

    flags.FLAGS(["reproduce", "--dataset=fashion_mnist", "--rows=mlp_pred", f"--root={root}",
                 "--tabulate_only"])  # fmt: skip
    try:
        reproduce.main(["reproduce"])
    finally:
        flags.FLAGS.unparse_flags()
    saved = json.load(open(os.path.join(root, "fashion_mnist", "results.json")))
    assert [r["row"] for r in saved["results"]] == ["mlp_pred"]
    assert saved["results"][0]["test_error"] == 8.5
    md = open(os.path.join(root, "fashion_mnist", "results.md")).read()
    assert "| mlp_pred | 2/2 | 8.50 | 8.60 | -0.10 |" in md
    assert "mlp_pred" in capsys.readouterr().out


def test_run_rows_reports_a_rows_user_error_and_lets_a_bug_through(tmp_path, monkeypatch):
    from localjax import ConfigError, DatasetError, TrainingError
    from localjax.training import loop

    errors = {
        "mlp_pred": ConfigError("lr=-1 must be > 0"),
        "mlp_sim": DatasetError("files missing"),
        "mlp_predsim": TrainingError("non-finite loss"),
    }

    def fake_train(config, workdir):
        if config.row in errors:
            raise errors[config.row]
        raise ValueError("a bug")  # not a user's mistake: it must keep its traceback

    monkeypatch.setattr(loop, "train_and_evaluate", fake_train)
    rows = ["mlp_pred", "mlp_sim", "mlp_predsim"]
    failures = reproduce.run_rows("fashion_mnist", rows, str(tmp_path))
    assert failures == [f"{row}: {errors[row]}" for row in rows]
    with pytest.raises(ValueError, match="a bug"):
        reproduce.run_rows("fashion_mnist", ["mlp_backprop"], str(tmp_path))


def test_cli_refuses_a_root_it_cannot_write_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    from absl import flags

    flags.FLAGS(["reproduce", "--dataset=fashion_mnist", f"--root={tmp_path / 'file'}"])
    try:
        with pytest.raises(SystemExit) as e:
            reproduce.main(["reproduce"])
    finally:
        flags.FLAGS.unparse_flags()
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: results directory") and "\n" not in err
    assert "file is a file, not a directory. Pass another --root." in err


# ---------------------------------------------------------------- TensorBoard, plots
def test_metric_writer_writes_tensorboard_scalars(tmp_path):
    workdir = str(tmp_path)
    with MetricWriter(workdir) as writer:
        writer.write({"epoch": 1, "test_error": 20.0, "local_error/block_0": 30.0, "note": "x"})
        writer.write({"epoch": 2, "test_error": 15.0, "local_error/block_0": 25.0})
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    assert lines[1]["test_error"] == 15.0
    events = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert len(events) == 1
    scalars = read_event_scalars(events[0])
    assert set(scalars) == {"test_error", "local_error/block_0"}
    assert scalars["test_error"] == [(1, 20.0), (2, 15.0)]
    assert scalars["local_error/block_0"] == [(1, 30.0), (2, 25.0)]
    # appending (resumed run) keeps the earlier events; a new run removes them
    MetricWriter(workdir, append=True).close()
    kept = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert sum(len(v) for f in kept for v in read_event_scalars(f).values()) == 4
    MetricWriter(workdir).close()
    (new,) = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    assert read_event_scalars(new) == {}


def test_metric_writer_without_tensorboardx_warns_once(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("tensorboardX"):
            raise ImportError("no tensorboardX")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(metric_writer, "_WARNED_NO_TENSORBOARD", False)
    with pytest.warns(UserWarning, match="tensorboardX is not installed"):
        with MetricWriter(str(tmp_path)) as writer:
            writer.write({"epoch": 1, "test_error": 1.0})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetricWriter(str(tmp_path)).close()  # no second warning
    assert not glob.glob(os.path.join(str(tmp_path), "events.out.tfevents.*"))
    assert open(os.path.join(str(tmp_path), "metrics.jsonl")).read() == ""


def test_plot_workdirs_writes_pngs(tmp_path):
    root = str(tmp_path / "runs")
    a = _fake_workdir(root, "mlp_predsim", [12.0, 9.0, 8.75], finished=True)
    b = _fake_workdir(root, "mlp_backprop", [11.0, 9.5], finished=True, local=False)
    written = plot.plot_workdirs([a, b], str(tmp_path / "plots"))
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["fashion_mnist_mlp_predsim_local.png", "test_error.png"]
    for p in written:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(p) > 5000
    with pytest.raises(FileNotFoundError):
        plot.plot_workdirs([str(tmp_path)], str(tmp_path / "plots"))


# ---------------------------------------------------------------- a real run
@pytest.mark.skipif(
    not os.path.exists(DEBIAN_FASHION_MNIST), reason="real Fashion-MNIST not installed"
)
def test_one_epoch_smoke_run_on_real_fashion_mnist(tmp_path):
    root = str(tmp_path)
    overrides = {"num_hidden": 64, "eval_batch_size": 2000}
    failures = reproduce.run_rows(
        "fashion_mnist", ["mlp_predsim"], root, epochs=1, train_limit=512, overrides=overrides
    )
    assert failures == []
    (result,) = reproduce.tabulate("fashion_mnist", ["mlp_predsim"], root)
    assert result["status"] == "done" and result["epochs_done"] == 1
    assert 0 < result["test_error"] < 90  # learnt something in one epoch of 512 images
    assert result["published_error"] == 8.54 and result["wall_seconds"] > 0
    workdir = os.path.join(root, "fashion_mnist", "mlp_predsim")
    assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    records = plot.load_metrics(workdir)
    assert {"local_error/block_0", "local_loss/block_2"} <= set(records[0])
    # a finished row of the same config is not trained again
    mtime = os.path.getmtime(os.path.join(workdir, "summary.json"))
    reproduce.run_rows(
        "fashion_mnist", ["mlp_predsim"], root, epochs=1, train_limit=512, overrides=overrides
    )
    assert os.path.getmtime(os.path.join(workdir, "summary.json")) == mtime
    assert plot.plot_workdirs([workdir], os.path.join(root, "plots"))
