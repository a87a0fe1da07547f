"""open_run from another process: a CLI run paused, resized and stopped through its control file,
metrics.jsonl read while it is being written, and a 2-rank MPI run merged."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import crystalline
from crystalline.checkpoint import read_checkpoint
from crystalline.engine.control import write_request
from crystalline.engine.telemetry import Telemetry
from crystalline.errors import RunError

TIMEOUT_S = 120
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def wait_until(condition, what: str, timeout: float = 60.0):
    """Poll `condition` (a file another process writes) until it holds; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except RunError:            # the run folder or its telemetry does not exist yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def train_cli(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crystalline", "train", "--preset", "tiny", "--steps", "100000",
                             "--workers", "2", "--run-dir", str(run_dir), "--ckpt-interval", "1000000",
                             "--eval-interval", "0", "--sample", "0", "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def answered(run, seq: int):
    reply = run.reply
    return reply if reply is not None and reply["seq"] == seq else None


def test_a_cli_run_is_paused_resized_resumed_and_stopped_from_another_process(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = write_request(run_dir, "stop")         # written before the run: must be ignored
    proc = train_cli(run_dir)
    try:
        run = wait_until(lambda: crystalline.open_run(run_dir) if crystalline.open_run(run_dir).snapshot()["step"] >= 3
                         else None, "three steps")
        assert run.alive and run.controllable and run.state == "running"

        seq = run.request("pause")
        assert seq == stale + 1
        assert wait_until(lambda: answered(run, seq), "the pause reply")["ok"]
        wait_until(lambda: run.state == "paused", "the paused state")
        paused_at, records = run.snapshot()["step"], len(run.history())
        time.sleep(1.0)                           # a window in which no step may complete
        assert run.snapshot()["step"] == paused_at and len(run.history()) == records == paused_at
        assert proc.poll() is None

        seq = run.request("resize", workers=0)
        reply = wait_until(lambda: answered(run, seq), "the resize reply")
        assert not reply["ok"] and "workers=0 is invalid" in reply["error"]
        (run_dir / "control.json").write_text("{not json")
        reply = wait_until(lambda: run.reply if run.reply["action"] is None else None, "the damaged-file reply")
        assert not reply["ok"] and "not valid JSON" in reply["error"]
        seq = run.request("resize", workers=3)
        assert wait_until(lambda: answered(run, seq), "the resize reply")["ok"]
        assert run.hierarchy.n_workers == 3 and run.state == "paused"
        assert run.snapshot()["step"] == paused_at and proc.poll() is None

        seq = run.request("resume")
        wait_until(lambda: answered(run, seq), "the resume reply")
        wait_until(lambda: run.snapshot()["step"] >= paused_at + 3, "steps after resume")
        assert run.state == "running"
        assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["workers"] == 3

        seq = run.request("stop")
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert answered(run, seq)["ok"]
    steps = run.snapshot()["step"]
    assert f"stopped (control file) at step {steps}" in out
    assert read_checkpoint(run_dir / "checkpoint.safetensors")[1]["step"] == steps == len(run.history())
    assert run.state == "stopped" and not run.alive and not run.controllable
    with pytest.raises(RunError, match="cannot be controlled: it is stopped"):
        run.request("pause")


def test_bad_requests_are_clear_errors(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    run = crystalline.open_run(tmp_path)
    with pytest.raises(RunError, match="no telemetry"):
        run.request("pause")
    with pytest.raises(RunError, match="not a control action"):
        write_request(tmp_path, "explode")
    with pytest.raises(RunError, match="resize needs workers"):
        write_request(tmp_path, "resize")
    with pytest.raises(RunError, match="pause takes no options"):
        write_request(tmp_path, "pause", workers=3)
    assert not (tmp_path / "control.json").exists()


def test_history_reads_what_is_complete_and_skips_a_damaged_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": i, "loss": 5.0 - i} for i in range(4)]
    lines = [json.dumps(r) + "\n" for r in records]
    metrics.write_text(lines[0] + lines[1] + lines[2][:7])        # a live run mid-write
    run = crystalline.open_run(tmp_path)
    assert run.history() == records[:2]
    with open(metrics, "a") as f:
        f.write(lines[2][7:] + '{"step": 99, "lo' + "\n" + lines[3])   # killed mid-line, resumed
    with pytest.warns(UserWarning, match="metrics.jsonl: skipped damaged line 4"):
        assert run.history() == records
    metrics.write_text(lines[0])                                   # a new file: read from its start
    assert run.history() == records[:1]


def test_history_since_a_step_parses_only_the_lines_appended(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": i, "loss": 5.0 - i} for i in range(6)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records[:4]))
    run = crystalline.open_run(tmp_path)
    assert run.history(since=1) == records[2:4] and run.history(since=3) == []
    assert run.history(since=-1) == run.history() == records[:4]
    parsed = []                                     # every text handed to json.loads
    real_loads = json.loads
    monkeypatch.setattr(crystalline.runs.json, "loads", lambda text: parsed.append(text) or real_loads(text))
    line = json.dumps(records[4]) + "\n"
    with open(metrics, "a") as f:
        f.write(line)
    assert run.history(since=3) == [records[4]]
    assert sum(map(len, parsed)) <= len(line) + 2            # only the appended line was parsed
    assert run.history(since=4) == [] and run.history() == records[:5]
    assert sum(map(len, parsed)) <= len(line) + 2            # nothing new: nothing parsed
    # a resumed run cuts the file back (rewritten atomically): read again from its start
    tmp = tmp_path / "metrics.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    os.replace(tmp, metrics)
    assert run.history(since=0) == records[1:2] and run.history() == records[:2]


# ---------------------------------------------------------------------- MPI
def _mpiexec():
    beside_python = Path(sys.executable).parent / "mpiexec"
    return shutil.which("mpiexec") or (str(beside_python) if beside_python.exists() else None)


def _no_mpi() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    return None if _mpiexec() else "no mpiexec on PATH or beside python (pip install mpich)"


@pytest.mark.skipif(_no_mpi() is not None, reason=str(_no_mpi()))
def test_a_two_rank_mpi_run_is_read_merged_over_ranks(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "crystalline", "train", "--distributed",
           "--preset", "tiny", "--workers", "1", "--steps", "4", "--eval-interval", "0", "--sample", "0",
           "--no-progress", "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = crystalline.open_run(run_dir)
    assert sorted(p.name for p in run_dir.glob("telemetry-*")) == ["telemetry-rank0.bin", "telemetry-rank1.bin"]
    snap = run.snapshot()
    assert snap["rank"].tolist() == [0, 0, 1, 1] and snap["sphere_id"].tolist() == [0, 1, 0, 1]
    assert snap["step"] == 4 and len(run.history()) == 4
    workers = snap["role"] == "worker"
    # each rank's one worker computed half of every batch of 8 sequences of 32 tokens
    np.testing.assert_array_equal(snap["tokens"][workers], 4 * 4 * 32)
    assert [h.n_workers for h in run.hierarchies] == [1, 1]
    timeline = run.timeline(last=2)
    assert set(timeline["rank"].tolist()) == {0, 1} and set(timeline["step"].tolist()) == {2, 3}
    for rank in (0, 1):
        assert set(timeline["phase"][(timeline["rank"] == rank) & (timeline["sphere"] == 1)].tolist()) \
            == {"wait_a", "compute", "wait_b"}
    assert not run.alive and run.state == "finished" and not run.controllable
    with pytest.raises(RunError, match="cannot be controlled: it is finished"):
        run.request("pause")

    from crystalline.commands.trace import chrome_trace
    events = chrome_trace(run, 2)["traceEvents"]
    assert sorted((e["pid"], e["args"]["name"]) for e in events if e["name"] == "process_name") \
        == [(0, "rank 0"), (1, "rank 1")]
    assert {(e["pid"], e["tid"]) for e in events if e["ph"] == "X"} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_a_live_run_whose_trainer_reads_no_control_file_shows_no_controls(tmp_path):
    """Two ranks' telemetry written live by this process (so the run is alive): controls only
    where rank 0 reads the control file; otherwise no buttons, and request() says why."""
    from crystalline.engine.hierarchy import Hierarchy
    from crystalline.engine.stats import SphereStats
    from crystalline.engine.telemetry import telemetry_path
    from crystalline.viz.dashboard import Dashboard
    ranks = [SphereStats(Hierarchy.for_workers(1), telemetry_path(tmp_path, r), rank=r, ranks=2)
             for r in (0, 1)]
    for stats in ranks:
        stats.state = "running"
    run = crystalline.open_run(tmp_path)
    assert run.alive and run.state == "running" and not run.controllable
    with pytest.raises(RunError, match="reads no control file"):
        run.request("pause")
    assert not (tmp_path / "control.json").exists()
    dash = Dashboard(run)
    assert dash.actions == [] and not dash.act("pause") and "cannot act" in dash.message["text"]
    ranks[0].reads_control = True                 # what rank 0 of an MPI run with a run folder sets
    assert run.controllable
    dash.refresh()
    assert dash.actions == ["pause", "stop", "resize"]
    dash.close()


def mpi_train(run_dir: Path, steps: int, *extra: str) -> list[str]:
    return [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "crystalline", "train", "--distributed",
            "--preset", "tiny", "--workers", "1", "--steps", str(steps), "--eval-interval", "0", "--sample", "0",
            "--no-progress", "--ckpt-interval", "1000000", "--run-dir", str(run_dir), *extra]


@pytest.mark.skipif(_no_mpi() is not None, reason=str(_no_mpi()))
def test_a_two_rank_mpi_run_is_paused_resized_and_stopped_through_its_control_file(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(mpi_train(run_dir, 100000), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env=ENV)
    try:
        def two_ranks_stepping():
            run = crystalline.open_run(run_dir)
            return run if len(run.hierarchies) == 2 and run.snapshot()["step"] >= 3 else None
        run = wait_until(two_ranks_stepping, "two ranks' first steps", timeout=TIMEOUT_S)
        assert run.alive and run.controllable

        seq = run.request("pause")
        assert wait_until(lambda: answered(run, seq), "the pause reply")["ok"]
        files = [Telemetry.open(run_dir / f"telemetry-rank{r}.bin") for r in (0, 1)]
        assert [t.state for t in files] == ["paused", "paused"]       # every rank paused
        held = run.snapshot()["step"]
        deadline = time.monotonic() + 1.0                             # many steps' time, were any run
        while time.monotonic() < deadline:
            assert run.snapshot()["step"] == held and proc.poll() is None
            time.sleep(0.1)

        seq = run.request("resize", workers=3)
        assert wait_until(lambda: answered(run, seq), "the resize reply")["ok"]
        wait_until(lambda: [h.n_workers for h in run.hierarchies] == [3, 3], "each rank's new tree")
        seq = run.request("resume")
        wait_until(lambda: answered(run, seq), "the resume reply")
        wait_until(lambda: run.snapshot()["step"] > held + 2, "steps after resume")
        seq = run.request("stop")
        out, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert "stopped (control file)" in out and run.reply["seq"] == seq and run.reply["ok"]
    assert (run_dir / "checkpoint.safetensors").exists() and run.state == "stopped"


def test_a_notebook_trainer_in_the_background_obeys_the_control_file(tmp_path, shakespeare):
    from crystalline.config import preset
    from crystalline.engine.trainer import Trainer
    model_cfg, train_cfg = preset("tiny")
    with Trainer(model_cfg, train_cfg.replace(eval_interval=0), shakespeare, workers=2,
                 run_dir=tmp_path / "run") as tr:
        run = crystalline.open_run(tmp_path / "run")
        assert run.state == "idle" and run.controllable
        tr.start()
        wait_until(lambda: tr.steps_done >= 2, "two steps")
        seq = run.request("pause")
        wait_until(lambda: answered(run, seq), "the pause reply")
        assert tr.state == "paused" and run.state == "paused"
        steps = tr.steps_done
        tr.resume()                                   # the notebook's own button wins
        wait_until(lambda: tr.steps_done > steps, "a step after resume()")
        assert run.state == "running"
        seq = run.request("stop")
        wait_until(lambda: answered(run, seq) and not tr.running, "the stop")
        assert tr.stopped_by_control and run.state == "stopped" and tr.state == "stopped"
        assert run.alive                              # this process still lives
