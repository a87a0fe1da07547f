"""A run folder belongs to one run (refused, --resume, --overwrite, locked); nothing is lost when a
start fails, the disk is full or the folder cannot be written; metrics.jsonl agrees with the
checkpoint after a kill and a resume."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crystalline import Trainer
from crystalline.checkpoint import read_checkpoint
from crystalline.cli import main
from crystalline.config import preset
from crystalline.engine.hierarchy import Hierarchy
from crystalline.engine.memory import check_fits, design_bytes
from crystalline.errors import ConfigError, RunFolderError
from crystalline.io import RunLock, atomic_write_bytes

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def train(run, *extra, steps=3):
    return main(["train", "--preset", "tiny", "--steps", str(steps), "--workers", "2", "--run-dir", str(run),
                 "--no-progress", "--sample", "0", *extra])


def steps_in_metrics(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def files(run):
    return {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}


# ---------------------------------------------------------------------- one run per folder
def test_a_folder_that_holds_a_run_is_refused_and_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run) == 0
    before = files(run)
    capsys.readouterr()
    assert train(run, "--lr", "1e-2") == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and f"--resume {run}" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert files(run) == before


def test_resume_takes_a_run_folder_or_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert train(run) == 0
    assert main(["train", "--resume", str(run), "--steps", "2", "--no-progress", "--sample", "0"]) == 0
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 5
    assert main(["train", "--resume", str(run / "checkpoint.safetensors"), "--steps", "1",
                 "--no-progress", "--sample", "0"]) == 0
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 6
    assert steps_in_metrics(run) == list(range(6))


def test_resume_into_another_folder_that_holds_a_run_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(a) == 0 and train(b) == 0
    before = files(b)
    assert main(["train", "--resume", str(a), "--run-dir", str(b), "--steps", "1", "--no-progress"]) == 2
    assert "holds another run" in capsys.readouterr().err and files(b) == before


def test_a_folder_where_no_step_was_completed_is_used_again(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[model]\n")            # what a start stopped before step 1 leaves
    (run / "metrics.jsonl").write_text("")
    assert train(run, steps=2) == 0 and steps_in_metrics(run) == [0, 1]


def test_resume_of_nothing_is_a_clear_error_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    assert main(["train", "--resume", str(missing), "--steps", "1", "--no-progress"]) == 2
    assert "no such run folder or checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_overwrite_replaces_the_run(tmp_path):
    run = tmp_path / "run"
    assert train(run, steps=4) == 0
    assert train(run, "--overwrite", "--seed", "5", steps=2) == 0
    meta = read_checkpoint(run / "checkpoint.safetensors")[1]
    assert meta["step"] == 2 and meta["train_config"]["seed"] == 5
    assert steps_in_metrics(run) == [0, 1]
    assert "seed = 5" in (run / "config.toml").read_text()


HOLD_LOCK = """
import sys
from crystalline.io import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_process_on_a_locked_folder_is_told_which_pid_holds_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "locked"
    proc = subprocess.run([sys.executable, "-m", "crystalline", "train", "--steps", "1", "--run-dir", str(run),
                           "--no-progress", "--sample", "0"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"in use by process {holder.pid}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "checkpoint.safetensors").exists() and not (run / "config.toml").exists()
    holder.kill()                                 # the kernel drops the lock with its holder
    holder.wait()
    assert train(run, steps=1) == 0


def test_two_concurrent_runs_on_one_folder_one_is_refused(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "crystalline", "train", "--steps", "30", "--workers", "1", "--run-dir", str(run),
           "--no-progress", "--sample", "0"]
    procs = [subprocess.Popen(cmd + ["--seed", str(seed)], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=ENV) for seed in (1, 2)]
    results = [(p.wait(180), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by process" in refused or "holds another run" in refused
    winner = [seed for seed, (code, _) in zip((1, 2), results) if code == 0][0]
    meta = read_checkpoint(run / "checkpoint.safetensors")[1]
    assert meta["train_config"]["seed"] == winner and f"seed = {winner}" in (run / "config.toml").read_text()
    assert steps_in_metrics(run) == list(range(30))


def test_run_lock_in_process(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()


# ---------------------------------------------------------------------- failed starts, memory
def test_memory_estimate_equals_the_buffers_a_tree_allocates(shakespeare):
    model_cfg, train_cfg = preset("tiny")
    for workers, batch in ((1, 8), (3, 8), (13, 12), (2, 5)):
        with Trainer(model_cfg, train_cfg.replace(batch_size=batch), shakespeare, workers=workers) as tr:
            tr.step()
            tree = tr._tree
            active = [w for w in range(workers) if tree.counts[w]]
            allocated = {"parameters": tr.model.params.nbytes + tr.model.decay_mask.nbytes,
                         "adamw": tr.optimizer.m.nbytes + tr.optimizer.v.nbytes,
                         "gradients": sum(tree.grads[w].nbytes for w in active),
                         "activations": sum(tree.workspaces[w].buffer.nbytes for w in active),
                         "batches": sum(tree.inputs[w].nbytes + tree.targets[w].nbytes for w in active)
                         + 2 * 8 * batch}                     # the int64 offsets of a train and a val step
            assert design_bytes(tr.model_cfg, batch, tr.hierarchy) == allocated


def test_a_configuration_that_cannot_fit_is_refused_before_allocating(tmp_path, capsys):
    model_cfg, _ = preset("tiny")
    with pytest.raises(ConfigError, match=r"needs about .* GiB .* only 0\.00 GiB .* lower --batch-size"):
        check_fits(model_cfg.replace(vocab_size=256), 64, Hierarchy.for_workers(2), available=1 << 20)
    run = tmp_path / "run"
    assert train(run, steps=4, ) == 0
    before = files(run)
    capsys.readouterr()
    assert train(run, "--overwrite", "--batch-size", "1000000") == 2
    err = capsys.readouterr().err
    assert "GiB" in err and "lower --batch-size" in err and "Traceback" not in err
    assert files(run) == before                        # the step-4 run is intact
    fresh = tmp_path / "fresh"
    assert train(fresh, "--batch-size", "1000000") == 2
    assert not (fresh / "checkpoint.safetensors").exists()


def test_a_run_whose_first_step_fails_writes_no_checkpoint(tmp_path, monkeypatch, capsys):
    from crystalline.errors import TrainingError

    def fail(self):
        raise TrainingError("injected failure before any step")
    monkeypatch.setattr(Trainer, "step", fail)
    run = tmp_path / "run"
    assert train(run) == 2
    assert "injected failure" in capsys.readouterr().err
    assert not (run / "checkpoint.safetensors").exists()


# ---------------------------------------------------------------------- metrics agree after kill -9
def test_kill_9_then_resume_leaves_each_step_once(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "crystalline", "train", "--steps", "100000", "--workers", "1",
                             "--run-dir", str(run), "--ckpt-interval", "5", "--no-progress", "--sample", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics, ckpt = run / "metrics.jsonl", run / "checkpoint.safetensors"
    while True:      # freeze the child at a moment when steps after its last checkpoint are logged
        while proc.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < 13):
            try:
                proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGSTOP)
        ckpt_step = read_checkpoint(ckpt)[1]["step"] if ckpt.exists() else 0
        if len(steps_in_metrics(run)) > ckpt_step:
            break
        proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(0.05)         # let it run on to its next logged step
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()
    assert len(steps_in_metrics(run)) > ckpt_step           # steps after the last checkpoint were logged
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress", "--sample", "0"]) == 0
    assert steps_in_metrics(run) == list(range(ckpt_step + 4))


# ---------------------------------------------------------------------- unwritable, disk full
def test_a_run_folder_below_a_regular_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train(tmp_path / "file" / "run") == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "--run-dir" in err and len(err.strip().splitlines()) == 1


FAULTY = """
import errno, os, sys
from pathlib import Path
fault, run = sys.argv[1], Path(sys.argv[2]).resolve()
if fault == "enospc":          # the disk fills up while a checkpoint is written
    real = os.fsync
    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(run / ".checkpoint")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    os.fsync = fsync
else:                           # the run folder's file system is read-only
    real = os.open
    def open_(path, *a, **kw):
        if str(Path(path).resolve()).startswith(str(run)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *a, **kw)
    os.open = open_
from crystalline.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_faulty(fault, run, *argv):
    return subprocess.run([sys.executable, "-c", FAULTY, fault, str(run), *argv], capture_output=True,
                          text=True, env=ENV, timeout=180)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    run = tmp_path / "run"
    assert train(run, steps=5) == 0
    before = (run / "checkpoint.safetensors").read_bytes()
    proc = run_faulty("enospc", run, "train", "--resume", str(run), "--steps", "3", "--no-progress", "--sample", "0")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "intact" in err[0], proc.stderr
    assert (run / "checkpoint.safetensors").read_bytes() == before
    assert read_checkpoint(run / "checkpoint.safetensors")[1]["step"] == 5
    assert not list(run.glob(".checkpoint.safetensors.tmp-*"))


def test_a_read_only_run_folder_is_a_one_line_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = run_faulty("erofs", run, "train", "--steps", "2", "--run-dir", str(run), "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert "Read-only file system" in proc.stderr and "--run-dir" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


SAVER = """
import sys
from crystalline import Trainer
from crystalline.config import preset
m, t = preset("tiny")
tr = Trainer(m, t.replace(eval_interval=0), sys.argv[2], workers=1)
tr.step()
while True:
    tr.save(sys.argv[1])
    print("saved", flush=True)
"""


def test_temporaries_of_a_killed_save_are_removed_by_the_next_save(tmp_path, shakespeare):
    path = tmp_path / "checkpoint.safetensors"
    corpus = str(Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt")
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), corpus], stdout=subprocess.PIPE,
                            text=True, env=ENV)
    for _ in range(3):
        proc.stdout.readline()
    proc.kill()                                  # kill -9 at a random point of a save loop
    proc.wait()
    dead = tmp_path / f".checkpoint.safetensors.tmp-{proc.pid}-1"
    dead.write_bytes(b"half a checkpoint")       # what a save killed before its rename leaves
    mine = tmp_path / f".checkpoint.safetensors.tmp-{os.getpid()}-1"
    mine.write_bytes(b"a save of this process")  # a live writer's file is not touched
    model_cfg, train_cfg = preset("tiny")
    with Trainer(model_cfg, train_cfg, shakespeare, workers=1) as tr:
        tr.save(path)
    assert list(tmp_path.glob(".checkpoint.safetensors.tmp-*")) == [mine]
    assert read_checkpoint(path)[1]["step"] == 0


def test_atomic_write_keeps_the_old_file_on_error(tmp_path, monkeypatch):
    from crystalline.errors import WriteError
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_every_file_is_written_through_crystalline_io():
    """One module renames temporary files into place; nothing else writes files directly."""
    import re
    package = Path(__file__).resolve().parent.parent / "crystalline"
    pattern = re.compile(r"os\.replace\(|os\.rename\(|mkstemp|\.write_text\(|\.write_bytes\(|open\([^)]*[\"'][wax]b?[\"']")
    offenders = [f"{p.relative_to(package)}:{n}: {line.strip()}" for p in package.rglob("*.py")
                 if p.name != "io.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    # the one exception: metrics.jsonl, appended line by line and cut back through io on resume
    assert len(offenders) == 1 and offenders[0].startswith("commands/train.py") and "metrics" in offenders[0], offenders
