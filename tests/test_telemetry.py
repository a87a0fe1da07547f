"""Telemetry in the run folder: written by a trainer in another process, read with open_run.

Round trip through a subprocess, generation change on resize, ring wrap-around, and the clear
errors for a folder that is not a run, a truncated file and a file of another layout version.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import crystalline
from crystalline.config import preset
from crystalline.engine import telemetry
from crystalline.engine.stats import PHASES
from crystalline.engine.trainer import Trainer
from crystalline.errors import RunError

TIMEOUT_S = 120
TIMELINE_KEYS = {"sphere", "rank", "step", "phase", "start", "end"}

# Trains 2 workers on the tiny preset in its own process. After step 4 (once every worker has
# closed its wait at B) it writes its own in-memory view to argv[2], prints "ready" and waits
# for a line on stdin; then it trains to step 8 and exits.
WRITER = textwrap.dedent("""
    import json, sys, time
    from crystalline import Trainer, preset
    from crystalline.data.corpus import bundled_corpus
    from crystalline.engine.stats import FIELD, PHASES
    model_cfg, train_cfg = preset("tiny")
    tr = Trainer(model_cfg, train_cfg.replace(eval_interval=0), str(bundled_corpus()), workers=2,
                 run_dir=sys.argv[1])

    def after(record):
        if record["step"] != 4:
            return
        workers = tr.stats.role == "worker"
        deadline = time.time() + 30
        while (tr.stats.values[workers, FIELD["phase"]] != PHASES.index("wait_a")).any():
            assert time.time() < deadline, "workers never reached Point A"
            time.sleep(0.001)
        snap = tr.stats.snapshot()
        view = {"timeline": {k: v.tolist() for k, v in tr.timeline(last=1000).items()},
                "snapshot": {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in snap.items()}}
        with open(sys.argv[2], "w") as f:
            json.dump(view, f)
        print("ready", flush=True)
        sys.stdin.readline()

    tr.run(8, progress=False, on_step=after)
""")


def tiny_configs():
    model_cfg, train_cfg = preset("tiny")
    return model_cfg, train_cfg.replace(eval_interval=0)


def test_a_run_written_by_another_process_reads_the_same_live_and_after(tmp_path):
    run_dir, view_path = tmp_path / "run", tmp_path / "writer_view.json"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), str(view_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        run = crystalline.open_run(run_dir)
        assert run.alive and run.state == "running" and run.controllable
        writer = json.loads(view_path.read_text())

        snap = run.snapshot()
        assert set(snap) == set(writer["snapshot"]) | {"rank"}
        for key, value in writer["snapshot"].items():
            np.testing.assert_array_equal(snap[key], value, err_msg=key)
        model_cfg, train_cfg = tiny_configs()
        per_worker = train_cfg.batch_size // 2 * model_cfg.block_size      # 5 steps done
        workers = snap["role"] == "worker"
        assert snap["step"] == 5
        np.testing.assert_array_equal(snap["tokens"][workers], 5 * per_worker)
        np.testing.assert_array_equal(snap["micro_batches"][workers], 5)
        np.testing.assert_array_equal(snap["rank"], 0)

        timeline = run.timeline(last=1000)
        assert set(timeline) == TIMELINE_KEYS
        for key, value in writer["timeline"].items():
            np.testing.assert_array_equal(timeline[key], value, err_msg=key)
        assert sorted(set(timeline["step"].tolist())) == [0, 1, 2, 3, 4]
        # each worker's compute intervals add up to its compute_s column (two clocks, same spans)
        for sphere in np.flatnonzero(workers):
            mine = (timeline["sphere"] == sphere) & (timeline["phase"] == "compute")
            spent = (timeline["end"] - timeline["start"])[mine].sum()
            assert spent == pytest.approx(snap["compute_s"][sphere], abs=2e-3)
        assert run.hierarchy.n_workers == 2 and len(run.hierarchies) == 1
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT_S) == 0, proc.stderr.read()

    assert not run.alive and run.state == "finished" and not run.controllable
    assert run.snapshot()["step"] == 8
    after = run.timeline(last=2)
    assert sorted(set(after["step"].tolist())) == [6, 7]
    assert set(after["phase"].tolist()) <= set(PHASES)


def test_trainer_timeline_keeps_the_contract_in_memory(shakespeare):
    with Trainer(*tiny_configs(), shakespeare, workers=3) as tr:
        tr.run(4, progress=False)
        timeline = tr.timeline(last=2)
    assert set(timeline) == TIMELINE_KEYS
    lengths = {len(v) for v in timeline.values()}
    assert len(lengths) == 1 and lengths.pop() > 0
    assert all(v.ndim == 1 for v in timeline.values())
    assert timeline["sphere"].dtype.kind == timeline["rank"].dtype.kind == timeline["step"].dtype.kind == "i"
    assert timeline["phase"].dtype.kind == "U" and set(timeline["phase"].tolist()) <= set(PHASES)
    assert timeline["start"].dtype == timeline["end"].dtype == np.float64
    assert (np.diff(timeline["start"]) >= 0).all() and (timeline["end"] >= timeline["start"]).all()
    assert set(timeline["step"].tolist()) == {2, 3}
    # Node Zero's six phases of step 3, in order, each starting where the last one ended
    node_zero = timeline["sphere"] == 0
    mine = node_zero & (timeline["step"] == 3)
    assert timeline["phase"][mine].tolist() == ["idle", "update", "wait_a", "wait_b", "reduce", "update"]
    np.testing.assert_array_equal(timeline["start"][mine][1:], timeline["end"][mine][:-1])


def test_a_resize_writes_a_new_generation_that_readers_follow(tmp_path, shakespeare):
    run_dir = tmp_path / "run"
    with Trainer(*tiny_configs(), shakespeare, workers=2, run_dir=run_dir) as tr:
        tr.run(2, progress=False)
        run = crystalline.open_run(run_dir)
        old = telemetry.Telemetry.open(telemetry.telemetry_path(run_dir))
        assert old.generation == 0 and not old.superseded
        assert run.hierarchy.n_workers == 2 and len(run.snapshot()["role"]) == 3

        tr.resize(workers=14)                       # Node Zero + 12 controls + 14 workers
        assert old.superseded and old.counter("superseded") == 1
        new = telemetry.Telemetry.open(telemetry.telemetry_path(run_dir))
        assert new.generation == 1 and not new.superseded
        h = run.hierarchy
        assert h.n_workers == 14 and len(h.spheres) == 27
        assert [s.group for s in h.workers] == [s.group for s in tr.hierarchy.workers]
        assert [s.parent.id for s in h.spheres[1:]] == [s.parent.id for s in tr.hierarchy.spheres[1:]]
        snap = run.snapshot()
        assert len(snap["role"]) == 27 and snap["step"] == 2     # the step count carries over
        assert snap["generation"] == tr.stats.snapshot()["generation"] == 1
        tr.run(1, progress=False)
        assert run.snapshot()["step"] == 3
        assert set(run.timeline(last=1)["sphere"].tolist()) == set(range(27))


def test_the_ring_keeps_the_last_intervals_and_drops_the_old(tmp_path, shakespeare, monkeypatch):
    monkeypatch.setattr(telemetry, "RING_INTERVALS", 16)
    run_dir = tmp_path / "run"
    with Trainer(*tiny_configs(), shakespeare, workers=1, run_dir=run_dir) as tr:
        tr.run(20, progress=False)
    tel = telemetry.Telemetry.open(telemetry.telemetry_path(run_dir))
    assert tel.capacity == 16
    assert tel.cursor[0] == 20 * 6                  # Node Zero closed six intervals per step
    timeline = crystalline.open_run(run_dir).timeline(last=1000)
    mine = timeline["sphere"] == 0
    per_step = ["idle", "update", "wait_a", "wait_b", "reduce", "update"]
    # a reader keeps capacity - 1 entries: the slot after the newest may be mid-write in a live run
    expected = [(17, p) for p in per_step[3:]] + [(18, p) for p in per_step] + [(19, p) for p in per_step]
    assert list(zip(timeline["step"][mine].tolist(), timeline["phase"][mine].tolist())) == expected
    np.testing.assert_array_equal(timeline["start"][mine][1:], timeline["end"][mine][:-1])
    worker = timeline["sphere"] == 1
    assert 0 < worker.sum() <= 15 and timeline["step"][worker].min() >= 14


# Trains 2 workers for 30 steps with rings of 64 intervals (Node Zero laps its ring twice).
SMALL_RING_WRITER = textwrap.dedent("""
    import sys
    from crystalline import Trainer, preset
    from crystalline.data.corpus import bundled_corpus
    from crystalline.engine import telemetry
    telemetry.RING_INTERVALS = 64
    model_cfg, train_cfg = preset("tiny")
    tr = Trainer(model_cfg, train_cfg.replace(eval_interval=0), str(bundled_corpus()), workers=2,
                 run_dir=sys.argv[1])
    tr.run(30, progress=False)
""")


def reference_timeline(tel, last: int) -> list[tuple]:
    """The slow, obvious decode of a finished ring: every sphere's entries from its oldest
    intact one (cursor - capacity + 1) to its newest, those of the last `last` steps, by start."""
    rows = []
    for sphere, cursor in enumerate(tel.cursor.tolist()):
        for j in range(max(0, cursor - tel.capacity + 1), cursor):
            e = tel.ring[sphere, j % tel.capacity]
            rows.append((float(e["start"]), sphere, int(e["step"]), tel.phases[int(e["phase"])], float(e["end"])))
    newest = max(r[2] for r in rows)
    return sorted(r for r in rows if r[2] > newest - last)


class CopyCounter:
    """Stands in for a telemetry ring: counts the entries read through it."""

    def __init__(self, ring):
        self.ring, self.copied = ring, 0

    def __getitem__(self, key):
        out = self.ring[key]
        self.copied += out.size
        return out


def test_timeline_reads_only_the_last_steps_of_a_wrapped_ring_written_by_another_process(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, "-c", SMALL_RING_WRITER, str(run_dir)], check=True, timeout=TIMEOUT_S)
    tel = telemetry.Telemetry.open(telemetry.telemetry_path(run_dir))
    assert tel.capacity == 64 and tel.cursor[0] == 30 * 6        # every sphere's ring has wrapped
    run = crystalline.open_run(run_dir)
    for last in (1, 3, 10, 1000):
        timeline = run.timeline(last=last)
        got = sorted(zip(timeline["start"].tolist(), timeline["sphere"].tolist(), timeline["step"].tolist(),
                         timeline["phase"].tolist(), timeline["end"].tolist()))
        assert got == reference_timeline(tel, last), last
    assert sorted(set(run.timeline(last=3)["step"].tolist())) == [27, 28, 29]

    counter = tel.ring = CopyCounter(tel.ring)
    tel.timeline(last=3)
    n = len(tel.cursor)
    assert 0 < counter.copied <= n * telemetry.ENTRIES_PER_STEP * (3 + 1) < n * tel.capacity
    # a guess too small for the steps asked for grows until it holds them all
    monkeypatch.setattr(telemetry, "ENTRIES_PER_STEP", 1)
    timeline = tel.timeline(last=5)
    assert sorted(zip(timeline["start"].tolist(), timeline["sphere"].tolist(), timeline["step"].tolist(),
                      timeline["phase"].tolist(), timeline["end"].tolist())) == reference_timeline(tel, 5)


@pytest.mark.skipif(not hasattr(__import__("os"), "pidfd_open"), reason="no pidfd on this OS")
def test_liveness_reads_proc_once_then_polls_a_pidfd(tmp_path, monkeypatch):
    """Reading /proc/<pid>/stat costs more the more threads the writer runs (76 at 63 workers):
    a watcher reads it once, then polls a pidfd; a process that ends is seen to end."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        from crystalline.engine.hierarchy import Hierarchy
        path = tmp_path / "telemetry-rank0.bin"
        telemetry.Telemetry.create(Hierarchy.for_workers(1), ["x"], PHASES, path)
        tel = telemetry.Telemetry.open(path)
        tel.meta.update(pid=child.pid, process_started=telemetry._process_started(child.pid))
        assert tel.process_alive()
        monkeypatch.setattr(telemetry, "_process_started", lambda pid: pytest.fail("read /proc again"))
        assert all(tel.process_alive() for _ in range(100))
    finally:
        child.stdin.close()
        child.wait(timeout=TIMEOUT_S)
    assert not tel.process_alive()


def _a_finished_run(tmp_path, shakespeare):
    run_dir = tmp_path / "run"
    with Trainer(*tiny_configs(), shakespeare, workers=1, run_dir=run_dir) as tr:
        tr.run(1, progress=False)
    return run_dir, telemetry.telemetry_path(run_dir)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:40], "is truncated"),
    (lambda data: data[:len(data) // 2], "is truncated"),
    (lambda data: b"", "is truncated"),
    (lambda data: data[:8] + (99).to_bytes(4, "little") + data[12:], "layout version 99"),
    (lambda data: b"NOTATELE" + data[8:], "is not a crystalline telemetry file"),
    (lambda data: data[:64] + b"{" * 10 + data[74:], "damaged header"),
])
def test_damaged_telemetry_is_one_clear_error_naming_the_file(tmp_path, shakespeare, damage, message):
    run_dir, path = _a_finished_run(tmp_path, shakespeare)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(RunError, match=message) as info:
        crystalline.open_run(run_dir)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for path, why in [(tmp_path, "holds no telemetry"), (tmp_path / "missing", "does not exist"),
                      (tmp_path / "notes.txt", "it is a file")]:
        with pytest.raises(RunError, match=why) as info:
            crystalline.open_run(path)
        assert str(path) in str(info.value) and "not a run folder" in str(info.value)


def test_a_run_folder_that_cannot_be_written_is_one_clear_error(tmp_path, shakespeare):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunError, match="cannot write the telemetry file .*a_file/run"):
        Trainer(*tiny_configs(), shakespeare, workers=1, run_dir=tmp_path / "a_file" / "run")


def test_reads_racing_the_writers_never_return_a_torn_or_overwritten_interval(shakespeare, monkeypatch):
    monkeypatch.setattr(telemetry, "RING_INTERVALS", 8)     # the writers lap the ring every step
    with Trainer(*tiny_configs(), shakespeare, workers=2) as tr:
        tr.start(steps=150)
        reads = 0
        while tr.running or reads == 0:
            timeline = tr.timeline(last=1000 if reads % 2 else 2)     # the whole ring, or its tail
            reads += 1
            for sphere in set(timeline["sphere"].tolist()):
                mine = timeline["sphere"] == sphere           # sorted by start: the sphere's order
                start, end, step = timeline["start"][mine], timeline["end"][mine], timeline["step"][mine]
                assert len(start) <= 7
                # each interval begins where the sphere's previous one ended: none is torn or
                # from another lap of the ring
                np.testing.assert_array_equal(start[1:], end[:-1])
                assert (end >= start).all() and (np.diff(step) >= 0).all()
    assert tr.driver_error is None and tr.steps_done == 150 and reads > 10


def test_only_entries_no_write_touched_during_the_copy_are_kept():
    capacity = 4                                     # entries 0..5 written; slots hold 4, 5, 2, 3
    numbers = np.arange(-2, 6)[None, :]              # entry numbers asked for (negative: none yet)
    kept = telemetry.intact(numbers, np.array([6]), np.array([6]), capacity)
    assert numbers[kept].tolist() == [3, 4, 5]       # entry 2's slot is the next to be written
    # while the entries were copied the writer finished entry 6 (slot 2) and began entry 7 (slot 3)
    kept = telemetry.intact(numbers, np.array([6]), np.array([7]), capacity)
    assert numbers[kept].tolist() == [4, 5]
