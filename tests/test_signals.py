"""Ctrl-C, SIGTERM and stop(): a run ends after at most the step in flight, with a final
checkpoint whose metrics agree, exit 130 / 143 and no traceback; on one process and on MPI ranks."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crystalline import Trainer
from crystalline.checkpoint import read_checkpoint
from crystalline.config import preset
from crystalline.engine.trainer import TrainingStopped
from crystalline.errors import TrainingError

MODEL_CFG, TRAIN_CFG = preset("tiny")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def train_cmd(run_dir, *extra):
    return [sys.executable, "-m", "crystalline", "train", "--preset", "tiny", "--steps", "100000",
            "--workers", "2", "--run-dir", str(run_dir), "--ckpt-interval", "1000000",
            "--no-progress", "--sample", "0", *extra]


def signal_after(cmd, seconds, signum=signal.SIGINT, group=False, metrics=None):
    """Start `cmd`, send `signum` `seconds` after it starts (after its first step if `metrics`)
    to it (or its process group if `group`), and wait for it to end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=group)
    kill = os.killpg if group else os.kill
    try:
        if metrics is not None:
            wait_for_steps(proc, metrics, 1)
        elif not group:
            wait_for_handlers(proc)
        try:
            proc.wait(seconds)         # the random moment at which the signal lands
        except subprocess.TimeoutExpired:
            pass
        kill(proc.pid, signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:        # a failed trial leaves no process (or MPI rank) behind
            kill(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out, err


def wait_for_handlers(proc) -> None:
    """Return once `proc` catches SIGTERM (bit 15 of SigCgt in /proc): crystalline's handlers are
    installed. Before that the interpreter is still starting and runs no crystalline code."""
    status, deadline = Path(f"/proc/{proc.pid}/status"), time.monotonic() + 60
    while proc.poll() is None:
        assert time.monotonic() < deadline, "crystalline did not install its SIGINT/SIGTERM handlers"
        caught = next(line for line in status.read_text().splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1:
            return
        try:
            proc.wait(0.005)
        except subprocess.TimeoutExpired:
            pass


def wait_for_steps(proc, metrics: Path, steps: int) -> None:
    """Return once `metrics` holds `steps` lines (or the process has ended)."""
    while proc.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < steps):
        try:
            proc.wait(0.05)
        except subprocess.TimeoutExpired:
            pass


def assert_checkpoint_agrees_with_metrics(run_dir: Path) -> int:
    """The checkpoint (if any step was completed) loads, and metrics.jsonl holds each of its steps
    exactly once; returns the checkpoint's step (0 when no checkpoint was written)."""
    metrics = run_dir / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
    ckpt = run_dir / "checkpoint.safetensors"
    if not ckpt.exists():
        assert steps == [], steps
        return 0
    tensors, meta = read_checkpoint(ckpt)
    assert np.isfinite(tensors["params"]).all()
    assert steps == list(range(meta["step"])), (meta["step"], steps[-5:])
    return meta["step"]


# ---------------------------------------------------------------------- one process
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_training_writes_a_final_checkpoint(tmp_path, signum, code):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(run, "--eval-interval", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stdout:                    # the run folder is printed: training starts now
        if line.startswith("run folder"):
            break
    wait_for_steps(proc, run / "metrics.jsonl", 5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted at step" in out
    assert assert_checkpoint_agrees_with_metrics(run) >= 5


def test_a_signal_at_any_moment_from_start_up_on_exits_cleanly(tmp_path):
    """Ctrl-C during imports, corpus loading, the first steps or later: always exit 130 without a
    traceback, never swallowed, and what was written agrees. Moments count from the installation
    of crystalline's handlers (before it the interpreter itself is starting: no program's code
    runs yet, so none can handle a signal)."""
    rng = np.random.default_rng(7)
    for trial, seconds in enumerate([0.0, 0.01, 0.05, 0.2] + list(rng.uniform(0, 3, 5))):
        run = tmp_path / f"run{trial}"
        code, out, err = signal_after(train_cmd(run), seconds)
        assert code == 130, f"trial {trial} at {seconds:.2f} s: exit {code}\n{err}"
        assert "Traceback" not in err, err
        assert_checkpoint_agrees_with_metrics(run)


def test_stop_from_another_thread_at_any_moment_ends_run(shakespeare):
    """threading.Timer(random 0-0.3 s, tr.stop) during tr.run(big): every trial ends early, also
    when stop() lands while the tree is being built or before run() has begun."""
    rng = np.random.default_rng(3)
    tr = Trainer(MODEL_CFG, TRAIN_CFG.replace(eval_interval=0), shakespeare, workers=3)
    tr.step()                                    # compile once
    for trial in range(40):
        tr.close()                               # the next run() builds a new tree
        stopper = threading.Timer(float(rng.uniform(0, 0.3)), tr.stop)
        before = tr.steps_done
        stopper.start()
        with pytest.raises(TrainingStopped):     # a missed stop() would run all 1,500 steps
            tr.run(1500, progress=False)
        stopper.join()
        assert tr.steps_done - before < 1500, f"trial {trial}"
    tr.run(2, progress=False)                    # nothing is left pending: the next run trains
    tr.close()


def test_interrupt_during_validation_still_reports_the_step(shakespeare):
    """The step before an interrupted validation was applied: its record must reach on_step (the
    CLI's metrics.jsonl line), so the metrics agree with the checkpoint written after it."""
    tr = Trainer(MODEL_CFG, TRAIN_CFG.replace(eval_interval=2, eval_batches=2), shakespeare, workers=2)
    evaluate, forward, records, validating = tr.evaluate, tr.model.forward_into, [], threading.Event()

    def evaluate_flagged(*args, **kw):
        validating.set()
        return evaluate(*args, **kw)

    def forward_interrupted_in_validation(ws, x, y, params=None):
        if validating.is_set():
            tr.interrupt()                       # lands while the validation job is in flight
        return forward(ws, x, y, params)
    tr.evaluate, tr.model.forward_into = evaluate_flagged, forward_interrupted_in_validation
    with pytest.raises(TrainingStopped, match="eval"):
        tr.run(10, progress=False, on_step=records.append)
    assert tr.steps_done == 2
    assert [r["step"] for r in records] == [0, 1]
    tr.close()


def test_a_stop_inside_the_update_is_a_stop_not_a_failure(shakespeare):
    """What an MPI rank raises when the ranks agree to stop (in Node Zero's update) must come out
    of step() as TrainingStopped, not be wrapped as a TrainingError."""
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2)
    tr.step()

    def stopped_update(grad, loss_sum):
        raise TrainingStopped("the ranks agreed to stop")
    tr.close()                                   # the next tree calls the patched update
    tr._update = stopped_update
    with pytest.raises(TrainingStopped) as info:
        tr.step()
    assert not type(info.value) is TrainingError and tr.steps_done == 1
    tr.close()


# ---------------------------------------------------------------------- MPI ranks
def _mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"
    return shutil.which("mpiexec") or (str(beside) if beside.exists() else None)


def _no_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    return None if _mpiexec() else "no mpiexec"


@pytest.mark.skipif(_no_mpi() is not None, reason=str(_no_mpi()))
def test_ctrl_c_on_two_mpi_ranks_ends_like_one_process(tmp_path):
    """SIGINT to mpiexec's process group at random moments (start-up included): exit 130, no
    traceback, and a final checkpoint that loads and agrees with metrics.jsonl, every time."""
    rng = np.random.default_rng(11)
    trained = 0
    moments = [(s, False) for s in rng.uniform(0.2, 2.5, 3)] + [(s, True) for s in rng.uniform(0, 1.5, 5)]
    for trial, (seconds, after_first_step) in enumerate(moments):
        run = tmp_path / f"run{trial}"
        cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "crystalline", "train", "--distributed",
               "--preset", "tiny", "--workers", "1", "--steps", "100000", "--eval-interval", "3",
               "--ckpt-interval", "1000000", "--run-dir", str(run), "--no-progress", "--sample", "0"]
        code, out, err = signal_after(cmd, seconds, group=True,
                                      metrics=run / "metrics.jsonl" if after_first_step else None)
        where = f"trial {trial}: {seconds:.2f} s after {'the first step' if after_first_step else 'launch'}"
        assert code == 130, f"{where}: exit {code}\n{out}\n{err}"
        assert "Traceback" not in err and "TrainingError" not in err and "MPI_Abort" not in err, err
        trained += assert_checkpoint_agrees_with_metrics(run) > 0
    assert trained >= 5                   # the signals sent during training found steps to save


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_c_extensions_import_is_still_an_interrupt(monkeypatch, capsys, signum):
    """CI caught Ctrl-C landing while matplotlib's ft2font initialised: Python reports that as
    ImportError("initialization failed") caused by our Interrupted, which must still exit 128 + N
    without a traceback; an ImportError with no signal behind it still propagates."""
    from crystalline import cli
    from crystalline.signals import Interrupted

    def failing_import(cause):
        def build_parser():
            raise ImportError("initialization failed") from cause
        return build_parser
    monkeypatch.setattr(cli, "build_parser", failing_import(Interrupted(signum)))
    assert cli.main(["train"]) == 128 + signum
    assert capsys.readouterr().err == f"crystalline: interrupted ({signal.Signals(signum).name})\n"
    monkeypatch.setattr(cli, "build_parser", failing_import(None))
    with pytest.raises(ImportError, match="initialization failed"):
        cli.main(["train"])


def test_an_interrupt_inside_a_ctypes_callback_is_kept_quietly(monkeypatch):
    """CI caught Ctrl-C landing in llvmlite's object-cache callback while Numba compiled: ctypes
    cannot propagate it and printed "Exception ignored ... Traceback" (through sys.unraisablehook).
    Under install() that Interrupted is dropped silently (the signal stays received, for watch()
    to hand over); any other exception in a callback still reaches the hook; restore() puts the
    hook back."""
    import ctypes

    from crystalline import signals
    from crystalline.signals import Interrupted

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_value))

    def calling_back(exc):
        def body():
            raise exc
        ctypes.CFUNCTYPE(None)(body)()
    previous = signals.install()
    try:
        calling_back(Interrupted(signal.SIGINT))
        assert reported == []
        bug = ValueError("a real bug")
        calling_back(bug)
        assert reported == [bug]
    finally:
        signals.restore(previous)
    interrupt = Interrupted(signal.SIGINT)
    calling_back(interrupt)
    assert reported == [bug, interrupt]
