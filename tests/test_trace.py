"""`crystalline trace`: the Chrome trace event format, checked against what a barrier step means."""

import json
from collections import defaultdict

import pytest

from crystalline.cli import main
from crystalline.config import preset
from crystalline.engine.stats import PHASES
from crystalline.engine.trainer import Trainer


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """13 workers (Node Zero, 12 controls, 13 workers: two levels) for 6 steps, traced over 4."""
    from crystalline.data.corpus import bundled_corpus
    tmp = tmp_path_factory.mktemp("trace")
    model_cfg, train_cfg = preset("tiny")
    with Trainer(model_cfg, train_cfg.replace(eval_interval=0, batch_size=13), str(bundled_corpus()),
                 workers=13, run_dir=tmp / "run") as tr:
        tr.run(6, progress=False)
        hierarchy = tr.hierarchy
    assert main(["trace", str(tmp / "run"), "--out", str(tmp / "trace.json"), "--last", "4"]) == 0
    return json.loads((tmp / "trace.json").read_text()), hierarchy


def test_every_event_has_the_chrome_trace_fields(traced):
    trace, hierarchy = traced
    assert set(trace) >= {"traceEvents", "displayTimeUnit"}
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert complete and all(e["ph"] in ("X", "M") for e in trace["traceEvents"])
    for e in complete:
        assert {"name", "ph", "ts", "dur", "pid", "tid"} <= set(e)
        assert all(isinstance(e[k], int) for k in ("ts", "dur", "pid", "tid")) and e["dur"] >= 0
        assert e["name"] in PHASES and e["pid"] == 0 and 0 <= e["tid"] < len(hierarchy.spheres)
    assert {e["args"]["step"] for e in complete} == {2, 3, 4, 5}


def test_one_named_track_per_sphere_and_one_process_per_rank(traced):
    trace, hierarchy = traced
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    expected = {}
    for s in hierarchy.spheres:
        expected[s.id] = ("node zero" if s.parent is None else
                          f"g{s.group} w{s.worker_index}" if s.is_worker else f"g{s.group} c{s.id}")
    assert names == expected and names[1] == "g0 c1" and names[14] == "g0 w12" and names[25] == "g11 w11"
    processes = [e for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"]
    assert [(e["pid"], e["args"]["name"]) for e in processes] == [(0, "rank 0")]


def test_intervals_follow_the_barriers(traced):
    trace, hierarchy = traced
    by_sphere = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            by_sphere[e["tid"]].append(e)
    for events in by_sphere.values():                   # one sphere does one thing at a time
        events.sort(key=lambda e: e["ts"])
        for a, b in zip(events, events[1:]):
            assert a["ts"] + a["dur"] <= b["ts"]

    def span(sphere, step, phase):
        (e,) = [e for e in by_sphere[sphere] if e["args"]["step"] == step and e["name"] == phase]
        return e["ts"], e["ts"] + e["dur"]

    everyone = [s.id for s in hierarchy.spheres]
    for step in (2, 3, 4):           # step 5's waits at B close when the next step begins
        # Point A releases no sphere before the last one arrives; Point B likewise, and the
        # last to arrive there is a worker that has finished its compute
        a = [span(s, step, "wait_a") for s in everyone]
        assert max(start for start, _ in a) <= min(end for _, end in a)
        b = [span(s, step, "wait_b") for s in everyone]
        computed = max(span(w.id, step, "compute")[1] for w in hierarchy.workers)
        assert max(start for start, _ in b) <= computed <= min(end for _, end in b)
        for w in hierarchy.workers:
            wait_a, compute, wait_b = (span(w.id, step, p) for p in ("wait_a", "compute", "wait_b"))
            assert wait_a[1] <= compute[0] and compute[1] <= wait_b[0]
        for c in hierarchy.controls[1:]:               # a control reduces after Point B
            assert span(c.id, step, "wait_b")[1] <= span(c.id, step, "reduce")[0]
        assert span(0, step, "reduce")[0] >= computed


@pytest.mark.parametrize("argv, message", [
    (["trace", "/no/such/run", "--out", "t.json"], "does not exist"),
    (["trace", ".", "--out", "t.json", "--last", "0"], "--last 0 is invalid"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "t.json").exists()
