"""The live dashboard: each panel built on a tiny trainer, updated, and checked on the data it
would draw; then the monitor thread, the buttons and resize while training runs."""

import logging
import threading
import time

import numpy as np
import pytest

from crystalline import Trainer, preset
from crystalline.viz.dashboard import Dashboard
from crystalline.viz.figure_panels import (TIME_FIELDS, CurvesPanel, HierarchyPanel,
                                           ThroughputPanel, TimeSplitPanel)
from crystalline.viz.panels import GroupLoadPanel, StatusPanel

PNG = b"\x89PNG"


@pytest.fixture
def trainer(shakespeare):
    model_cfg, train_cfg = preset("tiny")
    tr = Trainer(model_cfg, train_cfg.replace(eval_interval=0), shakespeare, workers=3)
    yield tr
    tr.stop()


@pytest.fixture
def dashboard(trainer):
    dash = Dashboard(trainer, refresh_hz=5, figure_interval=0.2)
    yield dash
    dash.close()


def pull(tr, cursor=0, generation=1):
    """What the Dashboard hands its panels: a snapshot plus generation and hierarchy."""
    snap = tr.stats.snapshot()
    snap.update(generation=generation, hierarchy=tr.hierarchy)
    records, cursor = tr.history.since(cursor)
    return snap, records, cursor


def wait_for(condition, timeout=30.0, what="condition"):
    """Poll `condition` every 50 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        pause.wait(0.05)


def is_png(image) -> bool:
    return bytes(image.value[:4]) == PNG


def dashboard_threads():
    return [t for t in threading.enumerate() if t.name.startswith("crystalline-")]


# ---------------------------------------------------------------------------- panels
def test_group_load_shares_sum_to_one_and_colour_by_fair_share(trainer):
    panel = GroupLoadPanel()
    snap, records, _ = pull(trainer)
    panel.update(snap, records)
    assert panel.data["level"][:3] == ["waiting"] * 3 and panel.data["level"][3:] == ["idle"] * 9
    assert panel.data["slowest"] == -1 and not panel.data["share"].any()

    trainer.run(3, progress=False)
    snap, records, _ = pull(trainer)
    panel.update(snap, records)
    d = panel.data
    assert d["share"].sum() == pytest.approx(1.0)
    assert d["active"].tolist() == [True] * 3 + [False] * 9
    assert d["fair_share"] == pytest.approx(1 / 3)
    workers = snap["role"] == "worker"
    expected = np.bincount(snap["group"][workers], snap["tokens_per_s"][workers], minlength=12)
    np.testing.assert_allclose(d["tokens_per_s"], expected)
    assert d["slowest"] == trainer.slowest_group()
    for g in range(3):                                  # the bars show what data says
        assert panel.bars[g].value == pytest.approx(min(d["share"][g], 2 / 3))   # full at 2x fair
        assert panel.bars[g].max == pytest.approx(2 / 3)
        assert "tok/s" in panel.values[g].value
    assert "no workers" in panel.values[5].value

    # Thresholds: one group at half its fair share is a red straggler, one at 0.8 orange.
    snap = dict(snap)
    tps = np.zeros_like(snap["tokens_per_s"])
    tps[np.flatnonzero(workers)] = [1000.0, 1000.0, 1000.0]
    tps[np.flatnonzero(workers)[2]] = 500.0             # share 0.2 of fair 1/3: ratio 0.6
    snap["tokens_per_s"] = tps
    panel.update(snap, [])
    assert panel.data["level"][:3] == ["ok", "ok", "straggler"]
    assert [b.bar_style for b in panel.bars[:3]] == ["success", "success", "danger"]
    tps[np.flatnonzero(workers)[2]] = 800.0             # share 0.2857, ratio 0.857
    panel.update(snap, [])
    assert panel.data["level"][2] == "low" and panel.bars[2].bar_style == "warning"


def test_curves_have_one_point_per_step_and_a_bounded_history(trainer):
    panel, small = CurvesPanel(), CurvesPanel(history=4)
    panel.min_interval = small.min_interval = 0
    trainer.run(5, progress=False)
    snap, records, cursor = pull(trainer)
    panel.update(snap, records)
    small.update(snap, records)
    assert panel.data["step"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(panel.data["loss"], trainer.history.column("loss"))
    np.testing.assert_allclose(panel.data["rss_mib"], trainer.history.column("rss") / 2**20)
    assert is_png(panel.widget)

    trainer.run(3, progress=False)
    trainer._evaluate_into_history()                    # a validation point on step 7
    snap, records, cursor = pull(trainer, cursor)
    assert len(records) == 3                            # the cursor reads only what is new
    panel.update(snap, records)
    small.update(snap, records)
    assert panel.data["step"].tolist() == list(range(8))
    assert panel.data["val_step"].tolist() == [7]
    assert small.data["step"].tolist() == [4, 5, 6, 7]
    assert panel.renders == 2


def test_time_split_is_the_stats_delta_between_pulls(trainer):
    panel = TimeSplitPanel()
    panel.min_interval = 0
    trainer.run(2, progress=False)
    first, records, cursor = pull(trainer)
    panel.update(first, records)
    columns = lambda s: np.stack([s[f] for f in TIME_FIELDS], axis=1)   # noqa: E731
    np.testing.assert_allclose(panel.data["seconds"], columns(first))  # from the tree's start
    assert panel.data["steps"] == 2

    trainer.run(3, progress=False)
    second, records, cursor = pull(trainer, cursor)
    panel.update(second, records)
    np.testing.assert_allclose(panel.data["seconds"], columns(second) - columns(first))
    assert panel.data["steps"] == 3
    np.testing.assert_allclose(panel.data["ms_per_step"], 1e3 * panel.data["seconds"] / 3)
    assert (panel.data["seconds"][1:, 0] > 0).all()     # every worker computed
    assert panel.data["seconds"][0, 3] > 0              # Node Zero reduced
    assert panel.data["labels"] == ["N0", "w0", "w1", "w2"]

    unchanged = panel.data
    panel.update(pull(trainer, cursor)[0], [])          # no step since: keep the last split
    assert panel.data is unchanged

    trainer.resize(workers=2)                           # a new stats object starts at zero
    trainer.run(1, progress=False)
    third, records, cursor = pull(trainer, cursor, generation=2)
    panel.update(third, records)
    assert panel.data["labels"] == ["N0", "w0", "w1"]
    np.testing.assert_allclose(panel.data["seconds"], columns(third))


def test_throughput_and_hierarchy_panels_follow_the_workers(trainer):
    throughput, tree = ThroughputPanel(), HierarchyPanel()
    throughput.min_interval = tree.min_interval = 0
    for _ in range(3):
        trainer.run(1, progress=False)
        snap, records, _ = pull(trainer)
        throughput.update(snap, records)
        tree.update(snap, records)
    series = throughput.data["workers"]
    assert sorted(series) == [0, 1, 2]
    steps, tps = series[1]
    assert steps.tolist() == [1, 2, 3]                  # one sample per pull that saw a step
    assert tps[-1] == snap["tokens_per_s"][2]           # worker 1 is sphere 2
    np.testing.assert_array_equal(throughput.data["bytes"], snap["bytes"])
    assert throughput.data["bytes"][1:].min() > 0
    assert tree.data["values"] == {i: snap["tokens_per_s"][i] for i in (1, 2, 3)}
    assert tree.data["hierarchy"] is trainer.hierarchy
    assert is_png(throughput.widget) and is_png(tree.widget)


def test_status_follows_the_trainer_state(trainer):
    panel = StatusPanel(trainer)
    panel.update(*pull(trainer)[:2])
    assert panel.data["state"] == "idle" and "idle" in panel.widget.value
    trainer.start()
    wait_for(lambda: trainer.steps_done >= 3, what="three background steps")
    trainer.pause()
    wait_for(lambda: trainer.state == "paused", what="pause")
    snap, records, _ = pull(trainer)
    panel.update(snap, records)
    d = panel.data
    assert d["state"] == "paused" and d["step"] == trainer.steps_done and d["workers"] == 3
    assert d["loss"] == records[-1]["loss"] and d["slowest"] == trainer.slowest_group()
    assert f"g{d['slowest']}" in panel.widget.value
    trainer.stop()
    panel.update(*pull(trainer)[:2])
    assert panel.data["state"] == "stopped"


# ---------------------------------------------------------------------------- dashboard
def test_monitor_updates_widgets_while_training_and_stop_ends_both(trainer, dashboard):
    assert not dashboard_threads()
    dashboard.start_monitor()
    trainer.start()
    first = dashboard.status.widget.value
    wait_for(lambda: len(dashboard.curves.data["step"]) >= 5, what="five steps in the curves")
    wait_for(lambda: dashboard.status.widget.value != first, what="a new status line")
    wait_for(lambda: dashboard.groups.bars[0].value > 0, what="a group load bar")
    wait_for(lambda: is_png(dashboard.time_split.widget), what="the time split")
    assert "running" in dashboard.status.widget.value
    assert dashboard.start_button.disabled and not dashboard.pause_button.disabled
    assert {t.name for t in dashboard_threads()} == {"crystalline-driver", "crystalline-dashboard"}

    dashboard.pause_button.click()
    wait_for(lambda: dashboard.pause_button.description == "resume", what="the resume label")
    dashboard.pause_button.click()
    wait_for(lambda: dashboard.status.data["state"] == "running", what="running again")

    dashboard.stop_button.click()
    assert not dashboard.monitoring and not trainer.running
    assert not dashboard_threads()                      # driver and monitor both ended
    assert "stopped" in dashboard.status.widget.value
    steps = trainer.steps_done
    assert dashboard.status.data["step"] == steps
    assert len(dashboard.curves.data["step"]) == steps  # one point per step, none lost

    dashboard.start_button.click()                      # start again: trainer and monitor
    wait_for(lambda: dashboard.status.data["step"] > steps, what="steps after a restart")
    assert dashboard.monitoring
    dashboard.stop()
    assert not dashboard_threads()


def test_a_failing_panel_is_logged_and_nothing_else_stops(trainer, dashboard, caplog):
    def broken(snapshot, records):
        raise ValueError("cannot draw this")
    dashboard.time_split.compute = broken
    dashboard.start_monitor()
    with caplog.at_level(logging.ERROR, logger="crystalline.viz.dashboard"):
        trainer.start()
        wait_for(lambda: len(dashboard.curves.data["step"]) >= 10, what="curves despite the failure")
        wait_for(lambda: "time split" in dashboard.error_line.value, what="the error line")
        steps = trainer.steps_done
        wait_for(lambda: trainer.steps_done > steps + 5, what="training to go on")
    assert trainer.running and trainer.driver_error is None and dashboard.monitoring
    assert dashboard.errors == {"time split": "ValueError: cannot draw this"}
    failures = [r for r in caplog.records if "time split" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None   # logged once, traceback
    assert dashboard.groups.data["share"].sum() == pytest.approx(1.0)
    dashboard.stop()


def test_resize_from_the_widget_while_training(trainer, dashboard):
    dashboard.start_monitor()
    trainer.start()
    wait_for(lambda: trainer.steps_done >= 3, what="steps on 3 workers")
    old_stats = trainer.stats
    dashboard.workers_input.value = 6
    dashboard.apply_button.click()                      # waits for the step in flight
    assert trainer.workers == 6 and trainer.stats is not old_stats
    assert "resized to 6 workers" in dashboard.message.value
    assert trainer.running and trainer.driver_error is None
    steps = trainer.steps_done
    wait_for(lambda: trainer.steps_done >= steps + 5, what="training on the new tree")
    assert trainer.history[-1]["workers"] == 6
    wait_for(lambda: dashboard.groups.data["active"].sum() == 6, what="six groups in the bars")
    wait_for(lambda: dashboard.time_split.data["labels"][-1] == "w5", what="the new time split")
    wait_for(lambda: dashboard.status.data["workers"] == 6, what="the status line")
    wait_for(lambda: dashboard.groups.data["share"].sum() == pytest.approx(1.0),
             what="shares of the new tree")
    dashboard.stop()
    assert trainer.driver_error is None and not dashboard_threads()


def test_failed_actions_are_shown_not_raised(trainer, dashboard):
    dashboard._guard(dashboard.resize, 0)
    assert "workers=0 is invalid" in dashboard.message.value
    assert trainer.workers == 3
    with pytest.raises(Exception, match="refresh_hz"):
        Dashboard(trainer, refresh_hz=0)
