"""The browser dashboard, tested on the data it sends: each panel built on a tiny trainer or a
fake run folder, `refresh()`, then assertions on the traits the ES module draws (not pixels;
tests/test_browser.py checks the page)."""

import logging
import threading
import time

import numpy as np
import pytest

from crystalline import Trainer, preset
from crystalline.engine.hierarchy import Hierarchy
from crystalline.errors import ConfigError
from crystalline.viz.dashboard import Dashboard
from crystalline.viz.dashboard import data as D
from crystalline.viz.dashboard.panels import TREE_RECORD, TimeSplitPanel, TreePanel, unpack
from crystalline.viz.dashboard.sources import Pull, RunSource
from crystalline.viz.style import PHASES, THROUGHPUT_STOPS


@pytest.fixture
def trainer(shakespeare):
    model_cfg, train_cfg = preset("tiny")
    tr = Trainer(model_cfg, train_cfg.replace(eval_interval=0), shakespeare, workers=3)
    yield tr
    tr.stop()


@pytest.fixture
def dashboard(trainer):
    dash = Dashboard(trainer, refresh_hz=10)
    yield dash
    dash.close()


def wait_for(condition, timeout=30.0, what="condition"):
    """Poll `condition` every 20 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.02)


def curve_steps(dash) -> list[int]:
    """The steps the browser draws: the curves' base followed by the recent steps."""
    return dash.view("curves")["step"] + dash.view("curves_recent")["step"]


def fake_snapshot(workers: int, tokens_per_s, slowdown=None) -> dict:
    """A stats snapshot of Hierarchy.for_workers(workers) with given per-worker tokens/s."""
    h = Hierarchy.for_workers(workers)
    n = len(h)
    role = np.array(["node_zero" if s.is_node_zero else s.role for s in h])
    tps = np.zeros(n)
    tps[[w.id for w in h.workers]] = tokens_per_s
    snap = {"sphere_id": np.arange(n), "role": role, "group": np.array([s.group for s in h]),
            "level": np.array([s.level for s in h]),
            "worker_index": np.array([s.worker_index for s in h]), "tokens_per_s": tps,
            "bytes": np.full(n, 1000.0), "phase": np.zeros(n), "step": 1,
            **{c: np.zeros(n) for c in ("compute_s", "wait_a_s", "wait_b_s", "reduce_s")}}
    if slowdown is not None:
        snap["slowdown"] = np.ones(n)
        snap["slowdown"][[w.id for w in h.workers]] = slowdown
    return snap, h


def a_pull(snap, h, records=(), steps=1, timeline=None, state="running"):
    return Pull(snap, list(records), len(records), lambda: timeline, state, steps,
                int((snap["role"] == "worker").sum()), 1, [h])


def timeline_of(intervals):
    """Contract arrays from (sphere, step, phase, start, end) tuples, sorted by start."""
    intervals = sorted(intervals, key=lambda r: r[3])
    cols = list(zip(*intervals))
    return {"sphere": np.array(cols[0]), "rank": np.zeros(len(intervals), dtype=int),
            "step": np.array(cols[1]), "phase": np.array(cols[2]), "start": np.array(cols[3]),
            "end": np.array(cols[4])}


class FakeRun:
    """A run folder as crystalline.open_run gives it (the contract), backed by a finished tiny
    trainer; `request` records what the dashboard asked."""

    def __init__(self, trainer, alive=True, state="running", controllable=True, timeline=None):
        self.path = "runs/fake-run"
        self.trainer, self.alive, self.state, self.controllable = trainer, alive, state, controllable
        self._timeline = timeline
        self.requests = []
        self.started = 1.0e9              # when the writing process started


    @property
    def hierarchies(self):
        return [self.trainer.hierarchy]

    def snapshot(self):
        return {**self.trainer.stats.snapshot(), "rank": np.zeros(len(self.trainer.hierarchy))}

    def history(self, since=None):
        return [r for r in self.trainer.history if since is None or r["step"] > since]

    def timeline(self, last=50):
        return self._timeline

    def request(self, action, **kw):
        self.requests.append((action, kw))


# ---------------------------------------------------------------------------- the data
def test_the_phase_vocabulary_is_the_engines():
    from crystalline.engine.stats import PHASES as ENGINE_PHASES
    assert PHASES == ENGINE_PHASES


def test_group_load_shares_levels_and_the_fair_share():
    snap, _ = fake_snapshot(3, [1000.0, 1000.0, 500.0])     # share 0.2 of fair 1/3: straggler
    load = D.group_load(snap)
    assert load["share"].sum() == pytest.approx(1.0)
    assert load["fair_share"] == pytest.approx(1 / 3)
    assert load["active"].tolist() == [True] * 3 + [False] * 9
    assert load["level"][:3] == ["ok", "ok", "straggler"] and load["level"][3:] == ["idle"] * 9
    snap["tokens_per_s"][3] = 800.0                          # ratio 0.857: low
    assert D.group_load(snap)["level"][2] == "low"
    snap["tokens_per_s"][:] = 0
    assert D.group_load(snap)["level"][:3] == ["waiting"] * 3


def test_no_slowest_group_with_one_group_or_within_noise():
    one, _ = fake_snapshot(1, [1234.0])
    assert D.slowest_group(D.group_load(one)) == -1
    close, _ = fake_snapshot(12, 1000.0 * (1 + 0.02 * np.linspace(-1, 1, 12)))   # +-2%
    assert D.slowest_group(D.group_load(close)) == -1
    behind, _ = fake_snapshot(12, [1000.0] * 7 + [800.0] + [1000.0] * 4)
    assert D.slowest_group(D.group_load(behind)) == 7
    before_any_step, _ = fake_snapshot(12, [0.0] * 12)
    assert D.slowest_group(D.group_load(before_any_step)) == -1


def colour_position(ratio: float) -> float:
    """Where a ratio lands on the tree's colour scale, 0..1 (as dashboard.js maps it)."""
    lo, hi = THROUGHPUT_STOPS[0][0], THROUGHPUT_STOPS[-1][0]
    return (min(max(ratio, lo), hi) - lo) / (hi - lo)


def test_the_throughput_colour_scale_is_anchored_at_the_fair_share():
    snap, h = fake_snapshot(6, [1000.0, 1010.0, 1020.0, 1000.0, 1010.0, 1020.0])   # 2% spread
    ratio = D.throughput_ratio(snap)
    workers = [w.id for w in h.workers]
    assert np.isnan(ratio[0])                                  # Node Zero: no throughput
    np.testing.assert_allclose(ratio[workers], np.array([1000, 1010, 1020] * 2) / 1010.0)
    spread = colour_position(ratio[workers].max()) - colour_position(ratio[workers].min())
    assert spread < 0.03                                       # not the full colour range
    slow, _ = fake_snapshot(2, [500.0, 1500.0])                # 0.5x and 1.5x the mean
    positions = [colour_position(r) for r in D.throughput_ratio(slow)[1:]]
    assert positions == pytest.approx([0.0, 1.0])


def test_curves_drop_the_first_step_after_a_resize_pause_or_restart():
    rec = lambda step, t, workers=6, tps=100.0: {"step": step, "loss": 2.0, "tokens_per_s": tps,   # noqa: E731
                                                 "seconds": 0.1, "time": t, "workers": workers,
                                                 "rss": 2**20}
    records = [rec(0, 0.1, 3, tps=5.0), rec(1, 0.2, 3), rec(2, 0.3, 3),
               rec(3, 0.4, tps=3.0),                           # resized to 6: a cold tree
               rec(4, 0.5), rec(5, 30.0, tps=4.0),             # a pause of 30 s
               rec(6, 30.1), rec(3, 0.2, tps=2.0)]             # restart from a checkpoint
    points = D.curve_points(records)
    assert points["cut"] == [True, False, False, True, False, True, False, True]
    assert points["tokens_per_s"] == [None, 100.0, 100.0, None, 100.0, None, 100.0, None]
    assert points["loss"] == [2.0] * 8 and points["rss_mib"] == [1.0] * 8


def test_time_split_is_the_stats_delta_per_step(trainer):
    panel = TimeSplitPanel()
    trainer.run(2, progress=False)
    first = trainer.stats.snapshot()
    records, cursor = trainer.history.since(0)
    panel.update(a_pull(first, trainer.hierarchy, records, 2))
    ms = np.array(panel.data["ms"])
    expected = np.stack([first[c] for c in ("compute_s", "wait_a_s", "wait_b_s", "reduce_s")], 1)
    np.testing.assert_allclose(ms, 1e3 * expected / 2, rtol=5e-3)
    assert panel.data["labels"] == ["N0", "w0", "w1", "w2"] and panel.data["steps"] == 2
    trainer.run(3, progress=False)
    second = trainer.stats.snapshot()
    records, _ = trainer.history.since(cursor)
    panel.update(a_pull(second, trainer.hierarchy, records, 5))
    delta = np.stack([second[c] - first[c] for c in ("compute_s", "wait_a_s", "wait_b_s",
                                                      "reduce_s")], 1)
    np.testing.assert_allclose(np.array(panel.data["ms"]), 1e3 * delta / 3, rtol=5e-3, atol=1e-3)
    assert (np.array(panel.data["ms"])[1:, 0] > 0).all()      # every worker computed


def test_task_stream_names_who_point_b_waited_for():
    snap, h = fake_snapshot(2, [1.0, 1.0])                     # N0 = 0, w0 = 1, w1 = 2
    t = 1000.0
    intervals = []
    for step in range(7):
        s = t + step
        late = 0.030 if step % 2 else 0.005                    # w1 is slower on odd steps only
        intervals += [(1, step, "wait_a", s, s + 0.001), (2, step, "wait_a", s, s + 0.001),
                      (1, step, "compute", s + 0.001, s + 0.011),
                      (2, step, "compute", s + 0.001, s + 0.001 + late),
                      (1, step, "wait_b", s + 0.011, s + 0.001 + max(late, 0.010)),
                      (2, step, "wait_b", s + 0.001 + late, s + 0.001 + late),
                      (0, step, "wait_b", s + 0.0005, s + 0.001 + late),
                      (0, step, "reduce", s + 0.002 + late, s + 0.004 + late),
                      (0, step, "update", s + 0.004 + late, s + 0.005 + late)]
    stream = D.task_stream(timeline_of(intervals), snap, steps=3)
    assert stream["labels"] == ["N0", "w0", "w1"]
    assert sorted(set(stream["step"])) == [4, 5, 6]            # the last 3 steps only
    assert stream["t0"] == pytest.approx(t + 4)
    # Point B waited for the last to arrive: w1 on odd steps, w0 on even ones.
    assert [(w["step"], w["label"]) for w in stream["waited_for"]] == [(4, "w0"), (5, "w1"),
                                                                       (6, "w0")]
    by_step = {w["step"]: w["ms"] for w in stream["waited_for"]}
    assert by_step[5] == pytest.approx(1e3 * (0.031 - 0.0005), abs=0.01)   # N0 waited longest
    assert {PHASES[p] for p in stream["phase"]} == {"wait_a", "compute", "wait_b", "reduce", "update"}
    k = list(stream["phase"]).index(PHASES.index("update"))
    assert stream["row"][k] == 0 and stream["end_ms"][k] - stream["start_ms"][k] == pytest.approx(1.0, abs=0.01)


def test_slowed_spheres_are_marked():
    snap, h = fake_snapshot(3, [1.0, 1.0, 1.0], slowdown=[1.0, 3.0, 1.0])
    pull = a_pull(snap, h)
    split, tree = TimeSplitPanel(), TreePanel()
    split.update(pull)
    tree.update(pull)
    assert split.data["slowed"] == [False, False, True, False]    # N0, w0, w1, w2
    assert unpack(TREE_RECORD, tree.extra["tree_values"])["slowed"] == [0, 0, 1, 0]    # by sphere id


# ---------------------------------------------------------------------------- the dashboard
def test_what_the_browser_receives_after_steps(trainer, dashboard):
    trainer.run(3, progress=False)
    dashboard.refresh()
    s = dashboard.view("status")
    assert (s["state"], s["step"], s["workers_text"]) == ("stopped", 3, "3 workers")
    assert s["loss"] == pytest.approx(trainer.history[-1]["loss"])
    tps = dashboard.view("tree")["tokens_per_s"][1:]                   # the same pull: w0, w1, w2 are
    assert sum(tps) > 0                                        # groups 0, 1, 2
    assert dashboard.view("groups")["share"] == pytest.approx([t / sum(tps) for t in tps] + [0.0] * 9,
                                                      rel=1e-3, abs=1e-4)
    assert curve_steps(dashboard) == [0, 1, 2]
    assert dashboard.view("tree_layout")["label"] == ["N0", "w0", "w1", "w2"]
    assert dashboard.view("tree")["bytes"] == [int(b) for b in trainer.stats.snapshot()["bytes"]]
    assert dashboard.view("split")["labels"] == ["N0", "w0", "w1", "w2"]
    assert dashboard.errors == {}
    stream = dashboard.view("stream")                                  # the trainer's phase timeline
    assert sorted(set(stream["step"])) == [0, 1, 2] and stream["labels"] == ["N0", "w0", "w1", "w2"]
    assert {w["label"] for w in stream["waited_for"]} <= {"w0", "w1", "w2"}
    # Once the status line shows steps, no panel says it waits for the first one.
    for name in ("groups", "curves", "split", "stream"):
        assert "waiting" not in getattr(dashboard, name), name
    # A few KB per update.
    for name in ("status", "groups", "curves", "split", "tree", "tree_layout"):
        assert len(getattr(dashboard, name)) < 4000, name     # the JSON text sent


def test_one_worker_is_singular(shakespeare):
    model_cfg, train_cfg = preset("tiny")
    with Trainer(model_cfg, train_cfg.replace(eval_interval=0), shakespeare, workers=1) as tr:
        tr.run(1, progress=False)
        dash = Dashboard(tr)
        assert dash.view("status")["workers_text"] == "1 worker"
        assert dash.view("status")["slowest"] == -1 and dash.view("status")["slowest_text"] == ""


def test_an_invalid_worker_count_is_a_visible_message(trainer, dashboard):
    for typed, says in (("abc", "not a whole number"), ("0", "out of range"),
                        ("99999", "out of range"), ("", "not a whole number")):
        assert not dashboard.act("resize", typed)
        assert dashboard.message["error"] and says in dashboard.message["text"], typed
        assert trainer.workers == 3
    assert dashboard.act("resize", " 5 ")
    assert dashboard.message == {"text": "resized to 5 workers", "error": False}
    assert trainer.workers == 5 and dashboard.view("status")["workers_text"] == "5 workers"
    # The browser's message reaches the same place.
    dashboard._on_browser_message(dashboard, {"action": "resize", "workers": "x"}, [])
    assert dashboard.message["error"] and trainer.workers == 5


def test_the_monitor_slows_down_to_stay_under_its_cpu_budget(trainer):
    """A pull's thread CPU time sets the period: cost / cpu_budget, never shorter than
    1 / refresh_hz, never longer than MAX_PERIOD_S; dash.cpu_s adds them up."""
    from crystalline.viz.dashboard import widget
    trainer.run(2, progress=False)
    dash = Dashboard(trainer, refresh_hz=5, cpu_budget=0.5)
    dash.refresh()
    assert dash.period == pytest.approx(0.2)              # cheap pulls: as often as asked
    cheap_pull = dash.source.pull

    def costly_pull(*args):                               # 30 ms of this thread's CPU time
        started = time.thread_time()
        while time.thread_time() - started < 0.03:
            pass
        return cheap_pull(*args)

    dash.source.pull, dash.cpu_budget, spent = costly_pull, 0.02, dash.cpu_s
    for _ in range(20):
        dash.refresh()
    assert dash.cpu_s - spent >= 20 * 0.03
    assert 0.9 * 0.03 / 0.02 <= dash.period <= widget.MAX_PERIOD_S    # about 1.5 s
    dash.cpu_budget = 0.001                               # 30 s: capped
    for _ in range(20):
        dash.refresh()
    assert dash.period == widget.MAX_PERIOD_S
    dash.source.pull, dash.cpu_budget = cheap_pull, 0.5
    for _ in range(40):
        dash.refresh()
    assert dash.period == pytest.approx(0.2)              # cheap again: back to refresh_hz
    with pytest.raises(ConfigError, match="cpu_budget"):
        Dashboard(trainer, cpu_budget=0)
    dash.close()


def test_pause_really_pauses_and_resume_goes_on(trainer, dashboard):
    dashboard.start_monitor()
    trainer.start()
    wait_for(lambda: dashboard.view("status").get("step", 0) >= 3, what="three steps on the status line")
    assert dashboard.actions == ["pause", "stop", "resize"]
    assert dashboard.act("pause")
    with trainer._step_lock:                                   # the step in flight has ended
        held = trainer.steps_done
    seen = dashboard.refreshes
    wait_for(lambda: dashboard.refreshes >= seen + 5, what="five refreshes while paused")
    assert trainer.steps_done == held and dashboard.view("status")["step"] == held
    assert dashboard.view("status")["state"] == "paused" and dashboard.actions == ["resume", "stop", "resize"]
    assert dashboard.act("resume")
    wait_for(lambda: dashboard.view("status")["step"] > held, what="steps after resume")
    assert dashboard.act("stop")
    assert not dashboard.monitoring and not trainer.running
    assert dashboard.view("status")["state"] == "stopped"
    assert curve_steps(dashboard) == list(range(trainer.steps_done))   # each step once, none lost


def test_a_failing_panel_is_logged_and_nothing_else_stops(trainer, dashboard, caplog):
    def broken(pull):
        raise ValueError("cannot draw this")
    dashboard.panels["split"].compute = broken
    dashboard.start_monitor()
    with caplog.at_level(logging.ERROR, logger="crystalline.viz.dashboard"):
        trainer.start()
        wait_for(lambda: len(curve_steps(dashboard)) >= 6, what="curves despite it")
        wait_for(lambda: "split" in dashboard.errors, what="the error line")
    assert trainer.running and trainer.driver_error is None and dashboard.monitoring
    assert dashboard.errors["split"] == "ValueError: cannot draw this"
    failures = [r for r in caplog.records if "'split'" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None   # logged once, traceback
    dashboard.stop()


def test_a_live_run_is_controlled_through_its_control_file(trainer):
    trainer.run(4, progress=False)
    run = FakeRun(trainer)
    dash = Dashboard(run)
    assert dash.actions == ["pause", "stop", "resize"]
    assert dash.view("status")["kind"] == "run folder" and dash.view("status")["step"] == 4
    assert dash.act("pause") and dash.act("resize", "7") and not dash.act("resize", "-1")
    assert run.requests == [("pause", {}), ("resize", {"workers": 7})]
    run.state = "paused"
    dash.refresh()
    assert dash.actions == ["resume", "stop", "resize"]
    run.controllable = False                       # e.g. an MPI rank that reads no control file
    dash.refresh()
    assert dash.actions == [] and not dash.act("stop")
    assert run.requests[-1] == ("resize", {"workers": 7})


def test_pause_through_the_control_file_of_a_real_run_folder(shakespeare, tmp_path):
    """A Trainer writing a run folder, watched as a Run (what `crystalline watch` does): pause
    from the dashboard goes through control.json and holds the step count."""
    from crystalline.runs import open_run
    model_cfg, train_cfg = preset("tiny")
    with Trainer(model_cfg, train_cfg.replace(eval_interval=0), shakespeare, workers=2,
                 run_dir=tmp_path) as tr:
        tr.start()
        dash = Dashboard(open_run(tmp_path), refresh_hz=10)
        wait_for(lambda: tr.steps_done >= 2, what="two steps")
        dash.refresh()
        assert dash.actions == ["pause", "stop", "resize"] and dash.view("status")["kind"] == "run folder"
        assert dash.act("pause")
        wait_for(lambda: open_run(tmp_path).state == "paused", what="the run to pause")
        held = tr.steps_done
        dash.start_monitor()
        seen = dash.refreshes
        wait_for(lambda: dash.refreshes >= seen + 5, what="five refreshes while paused")
        assert tr.steps_done == held and dash.view("status")["state"] == "paused"
        assert dash.actions == ["resume", "stop", "resize"]
        assert dash.view("tree_layout")["label"] == ["N0", "w0", "w1"]
        stream = dash.view("stream")
        assert stream["row"] and set(stream["labels"]) == {"N0", "w0", "w1"}
        assert {PHASES[p] for p in stream["phase"]} >= {"compute", "wait_b", "update"}
        assert dash.act("resume")
        wait_for(lambda: tr.steps_done > held, what="steps after resume")
        assert dash.act("stop")
        wait_for(lambda: not tr.running, what="the run to stop")
        dash.close()


def test_a_run_folder_is_pulled_incrementally_and_again_after_a_resume(trainer):
    trainer.run(4, progress=False)
    run = FakeRun(trainer)
    source = RunSource(run)
    first = source.pull(None, 5)
    assert [r["step"] for r in first.records] == [0, 1, 2, 3] and first.steps == 4
    assert source.pull(first.cursor, 5).records == []
    trainer.run(1, progress=False)
    assert [r["step"] for r in source.pull(first.cursor, 5).records] == [4]
    run.started += 60                              # resumed: another process writes the folder
    assert [r["step"] for r in source.pull(4, 5).records] == [0, 1, 2, 3, 4]


def test_a_finished_run_replays_without_controls(trainer):
    trainer.run(6, progress=False)
    run = FakeRun(trainer, alive=False, state="finished")
    dash = Dashboard(run)
    assert dash.actions == []
    assert curve_steps(dash) == list(range(6)) and dash.view("status")["state"] == "finished"
    assert dash.view("split")["steps"] == 6 and dash.view("tree_layout")["label"][0] == "N0"
    assert not dash.act("pause") and dash.message["error"]
    assert isinstance(dash.source, RunSource)


# ---------------------------------------------------------------------------- crystalline watch
def test_watch_refuses_what_is_not_a_run_folder(tmp_path, capsys):
    from crystalline.cli import main
    assert main(["watch", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["watch", str(tmp_path / "notes.txt")]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err
    assert main(["watch", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["watch", str(tmp_path), "--port", "0"]) == 2
    assert "--port 0 is invalid" in capsys.readouterr().err


def test_watch_serves_a_notebook_of_the_run(tmp_path, monkeypatch):
    from crystalline.commands import watch
    nb = watch.watch_notebook(tmp_path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["cells"][0]["source"].endswith(f"Dashboard({str(tmp_path)!r})")
    voila = watch.server_command(tmp_path, 8870, True, lab=False)
    assert voila[1:3] == ["-m", "voila"] and "--port=8870" in voila and "--no-browser" in voila
    monkeypatch.setattr(watch.os, "geteuid", lambda: 0)
    lab = watch.server_command(tmp_path, None, False, lab=True)
    assert lab[1:3] == ["-m", "jupyterlab"] and "--allow-root" in lab
    monkeypatch.setattr(watch.os, "geteuid", lambda: 1000)
    assert "--allow-root" not in watch.server_command(tmp_path, None, False, lab=True)


def test_two_mpi_ranks_are_drawn_side_by_side_with_their_own_rows():
    """A Run's snapshot of 2 ranks: rows are concatenated rank by rank with a rank column."""
    (a, h0), (b, h1) = fake_snapshot(2, [1.0, 1.0]), fake_snapshot(3, [1.0, 1.0, 1.0])
    snap = {k: np.concatenate([a[k], b[k]]) for k in a if k != "step"}
    snap["rank"] = np.array([0] * 3 + [1] * 4)
    layout = D.cluster_tree_layout([h0, h1])
    assert layout["label"] == ["r0:N0", "r0:w0", "r0:w1", "r1:N0", "r1:w0", "r1:w1", "r1:w2"]
    assert layout["parent"] == [-1, 0, 0, -1, 3, 3, 3]           # rows, not per-rank ids
    assert max(layout["x"][:3]) < min(layout["x"][3:])           # rank 1 to the right
    assert D.sphere_labels(snap) == layout["label"]
    timeline = timeline_of([(1, 0, "compute", 10.0, 10.2), (1, 0, "wait_b", 10.2, 10.3),   # r0:w0
                            (1, 0, "compute", 10.0, 10.1), (1, 0, "wait_b", 10.1, 10.3)])  # r1:w0
    timeline["rank"] = np.array([0, 1, 1, 0])     # sorted by start: r0 and r1 compute, r1, r0 at B
    stream = D.task_stream(timeline, snap, steps=1)
    rows = {(stream["labels"][r], PHASES[p]) for r, p in zip(stream["row"], stream["phase"])}
    assert rows == {("r0:w0", "compute"), ("r0:w0", "wait_b"), ("r1:w0", "compute"),
                    ("r1:w0", "wait_b")}
    assert stream["waited_for"][0]["label"] == "r0:w0"          # it reached Point B last
