"""compare_runs / plot_runs on three short runs that differ in one setting."""

import json

import matplotlib
import pytest

matplotlib.use("agg")

from crystalline import compare_runs, plot_runs  # noqa: E402
from crystalline.cli import main  # noqa: E402
from crystalline.errors import DataError  # noqa: E402

LRS = [1e-3, 3e-3, 1e-2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for lr in LRS:
        assert main(["train", "--lr", str(lr), "--steps", "6", "--eval-interval", "3", "--workers", "1",
                     "--run-dir", str(root / f"lr-{lr:g}"), "--no-progress", "--sample", "0"]) == 0
    (root / "notes.txt").write_text("not a run")
    return root


def metrics(folder):
    return [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]


def test_the_table_holds_what_differs_and_how_each_run_ended(runs):
    rows = compare_runs(str(runs / "*"), as_dataframe=False)     # the glob also matches notes.txt
    assert [r["run"] for r in rows] == ["lr-0.001", "lr-0.003", "lr-0.01"]
    assert [r["train.learning_rate"] for r in rows] == LRS
    assert "model.n_layer" not in rows[0] and "workers" not in rows[0]     # equal in every run
    for row, lr in zip(rows, LRS):
        records = metrics(runs / f"lr-{lr:g}")
        losses = [r["loss"] for r in records]
        vals = [r["val_loss"] for r in records if "val_loss" in r]
        assert row["steps"] == 6 and row["final_loss"] == losses[-1] and row["best_loss"] == min(losses)
        assert row["final_val_loss"] == vals[-1] and row["best_val_loss"] == min(vals) and len(vals) == 2
        speeds = sorted(r["tokens_per_s"] for r in records)
        assert row["tokens_per_s"] == speeds[3]


def test_a_dataframe_when_pandas_is_installed(runs):
    pd = pytest.importorskip("pandas")
    table = compare_runs([runs / "lr-0.001", runs / "lr-0.01"])
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["lr-0.001", "lr-0.01"]
    assert list(table["train.learning_rate"]) == [1e-3, 1e-2]


def test_curves_share_axes_one_line_per_run(runs):
    fig = plot_runs(str(runs / "lr-*"))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["training loss", "validation loss", "tokens / s"]
    for ax in axes:
        assert [line.get_label() for line in ax.get_lines()] == ["lr-0.001", "lr-0.003", "lr-0.01"]
    loss_line = axes[0].get_lines()[2]
    assert list(loss_line.get_ydata()) == [r["loss"] for r in metrics(runs / "lr-0.01")]


def test_folders_that_are_not_runs_are_named(runs, tmp_path):
    with pytest.raises(DataError, match="not a run folder"):
        compare_runs([runs / "lr-0.001", tmp_path])
    with pytest.raises(DataError, match="no run folders"):
        compare_runs(str(tmp_path / "nothing-*"))
