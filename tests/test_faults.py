"""Faults: non-finite gradients, a stuck sphere (watchdog), stop/pause storms, kill -9 inside a save."""

import os
import re
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
from crystalline.engine.trainer import MAX_SKIPPED_IN_A_ROW
from crystalline.errors import TrainingError

MODEL_CFG, TRAIN_CFG = preset("tiny")
TRAIN_CFG = TRAIN_CFG.replace(batch_size=12, eval_interval=0)
PACKAGE = Path(__file__).resolve().parent.parent / "crystalline"


def poison_gradient(tr, at_steps, value=np.nan):
    """Make worker 1's backward write `value` into its gradient at the given steps."""
    original = tr.model.backward_into
    target = f"sphere-{tr.hierarchy.workers[1].id}-worker"

    def backward_into(ws, grad, dloss, **kw):
        original(ws, grad, dloss, **kw)
        if tr.steps_done in at_steps and threading.current_thread().name == target:
            grad[123] = value

    tr.model.backward_into = backward_into


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_gradient_skips_the_step_and_keeps_parameters_finite(shakespeare, value):
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=3) as tr:
        poison_gradient(tr, {1}, value)
        tr.step()
        before = tr.model.params.copy()
        skipped = tr.step()
        assert skipped.skipped and not np.isfinite(skipped.grad_norm)
        assert np.array_equal(tr.model.params, before) and tr.optimizer.t == 1
        assert tr.step().skipped is False and tr.optimizer.t == 2
        assert np.isfinite(tr.model.params).all()
        assert tr.skipped_steps == 1 and tr.history[1]["skipped"]


def test_non_finite_gradients_in_a_row_stop_the_run(shakespeare):
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2) as tr:
        poison_gradient(tr, set(range(100)))
        with pytest.raises(TrainingError, match=f"not finite for {MAX_SKIPPED_IN_A_ROW} steps"):
            for _ in range(MAX_SKIPPED_IN_A_ROW):
                tr.step()
        assert np.isfinite(tr.model.params).all() and tr.optimizer.t == 0


def test_watchdog_names_the_sphere_that_has_not_arrived(shakespeare):
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=5)
    tr.watchdog_min_s = 0.2
    for _ in range(3):
        tr.step()
    stuck_name = f"sphere-{tr.hierarchy.workers[3].id}-worker"
    reported, release = threading.Event(), threading.Event()
    original = tr.model.forward_into

    def forward_into(ws, x, y, params=None):
        if threading.current_thread().name == stuck_name:
            release.wait(30)
        return original(ws, x, y, params)

    seen = []
    tr.on_stall = lambda stall: (seen.append(stall), reported.set(), release.set())
    tr.model.forward_into = forward_into
    tr.step()                                   # completes once the watchdog has reported
    assert reported.is_set()
    spheres = seen[0]["spheres"]
    assert [(s["worker"], s["not_arrived_at"]) for s in spheres] == [(3, "B")]
    assert seen[0]["step"] == 3 and tr.stall is None
    tr.close()


def inject_fault(tr, site, step):
    """Raise RuntimeError("injected fault") at `step` in one sphere: a worker's forward or backward
    (worker 13, group 1, level 2), a control sphere's reduction (group 1, level 1) or Node Zero's
    update. Returns (the faulty sphere, a function that removes the fault)."""
    import crystalline.engine.spheres as spheres
    h = tr.hierarchy
    if site in ("forward", "backward"):
        sphere = h.workers[13]
    elif site == "reduction":
        sphere = next(s for s in h.spheres if s.role == "control" and s.group == 1)
    else:
        sphere = h.node_zero
    thread = f"sphere-{sphere.id}-{'node-zero' if sphere.is_node_zero else sphere.role}"

    def faulty(original):
        def call(*args, **kwargs):
            if tr.steps_done == step and threading.current_thread().name == thread:
                raise RuntimeError("injected fault")
            return original(*args, **kwargs)
        return call

    if site == "forward":
        original, tr.model.forward_into = tr.model.forward_into, faulty(tr.model.forward_into)
        return sphere, lambda: setattr(tr.model, "forward_into", original)
    if site == "backward":
        original, tr.model.backward_into = tr.model.backward_into, faulty(tr.model.backward_into)
        return sphere, lambda: setattr(tr.model, "backward_into", original)
    if site == "reduction":
        original, spheres.reduce_rows = spheres.reduce_rows, faulty(spheres.reduce_rows)
        return sphere, lambda: setattr(spheres, "reduce_rows", original)
    original, tr.optimizer.update = tr.optimizer.update, faulty(tr.optimizer.update)
    return sphere, lambda: setattr(tr.optimizer, "update", original)


@pytest.mark.parametrize("site, role", [("forward", "worker"), ("backward", "worker"),
                                        ("reduction", "control"), ("update", "node zero")])
def test_a_fault_in_any_sphere_names_it_with_group_and_level_and_changes_nothing(shakespeare, site, role):
    """15 workers, 24 sequences: Node Zero (level 0), 12 controls (level 1), workers at level 2;
    groups 0-2 hold two busy workers, so their controls really reduce. The error names sphere, role, worker, group,
    level, the exception and the step; parameters and AdamW state are as before the step; every
    thread has ended; the next step rebuilds the tree."""
    before = set(threading.enumerate())
    tr = Trainer(MODEL_CFG, TRAIN_CFG.replace(batch_size=24), shakespeare, workers=15)
    sphere, remove = inject_fault(tr, site, step=1)
    assert (sphere.level, sphere.group) == {"worker": (2, 1), "control": (1, 1), "node zero": (0, -1)}[role] \
        or (role == "node zero" and sphere.level == 0)
    tr.step()
    params, m, t = tr.model.params.copy(), tr.optimizer.m.copy(), tr.optimizer.t
    expected = (rf"sphere {sphere.id} \({role}, worker {sphere.worker_index}, group {sphere.group}, "
                rf"level {sphere.level}\) raised RuntimeError: injected fault during train step 1; "
                "the parameters are as before that step")
    try:
        with pytest.raises(TrainingError, match=expected):
            tr.step()
    finally:
        remove()          # reduce_rows is patched in its module: never leave it to other tests
    assert np.array_equal(tr.model.params, params) and np.array_equal(tr.optimizer.m, m)
    assert tr.optimizer.t == t and tr.steps_done == 1
    assert set(threading.enumerate()) <= before | {threading.current_thread()}
    assert tr.step().step == 1
    tr.close()
    assert set(threading.enumerate()) <= before


def test_watchdog_threshold_is_factor_times_the_recent_median_and_at_least_the_minimum(shakespeare):
    """The README: a step is stalled after 10 x the recent median step time, at least 10 s (the
    first step, which compiles, gets 60 s). The limit each step waits with is computed here from
    the step times the trainer reported: the median of the last 20."""
    import statistics
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2)
    assert (tr.watchdog_factor, tr.watchdog_min_s) == (10.0, 10.0)
    limits = []
    tree = tr._ensure_tree()
    original_run = tree.run
    tree.run = lambda job, stall_after, on_stall: (limits.append(stall_after),
                                                   original_run(job, stall_after, on_stall))[1]
    seconds = []
    for factor, minimum, steps in ((10.0, 10.0, 3), (3.0, 0.0, 24), (3.0, 0.05, 3)):
        tr.watchdog_factor, tr.watchdog_min_s = factor, minimum
        for _ in range(steps):
            expected = max(minimum, factor * statistics.median(seconds[-20:]) if seconds else 60.0)
            seconds.append(tr.step().seconds)
            assert limits[-1] == pytest.approx(expected, rel=1e-12), (len(seconds), seconds)
    assert limits[0] == 60.0 and min(limits[1:3]) == 10.0
    tr.watchdog_min_s = 1e6
    tr.step()
    assert limits[-1] == 1e6
    tr.close()


def test_a_stall_shows_on_the_progress_bar_in_the_log_and_in_trainer_stall(shakespeare, capsys, caplog):
    """While worker 3 is held in step 3, the watchdog's report is in trainer.stall, in one log line
    naming the sphere, and on run()'s progress bar; after the step, trainer.stall is None."""
    import logging
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=5)
    tr.run(3, progress=False)
    tr.watchdog_min_s = 0.3
    stuck = tr.hierarchy.workers[3]
    logged, during = threading.Event(), []
    original = tr.model.forward_into

    class Flag(logging.Handler):
        def emit(self, record):
            logged.set()

    def forward_into(ws, x, y, params=None):
        if threading.current_thread().name == f"sphere-{stuck.id}-worker" and tr.steps_done == 3:
            assert logged.wait(30)
            during.append(dict(tr.stall))
        return original(ws, x, y, params)

    flag = Flag(logging.WARNING)
    logging.getLogger("crystalline.engine.trainer").addHandler(flag)
    tr.model.forward_into = forward_into
    try:
        with caplog.at_level(logging.WARNING, logger="crystalline.engine.trainer"):
            tr.run(1, progress=True)
    finally:
        logging.getLogger("crystalline.engine.trainer").removeHandler(flag)
    stall = during[0]
    assert stall["step"] == 3 and stall["seconds"] >= 0.3
    assert [(s["sphere"], s["worker"], s["group"], s["not_arrived_at"]) for s in stall["spheres"]] \
        == [(stuck.id, 3, stuck.group, "B")]
    assert tr.stall is None
    line = f"sphere {stuck.id} (worker 3, group {stuck.group}) not at B"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(re.fullmatch(rf"step 3 has run \d+\.\d s: waiting for {re.escape(line)}", m)
               for m in messages), messages
    bar = capsys.readouterr().err
    assert re.search(rf"STALLED \d+s at step 3: sphere {stuck.id} \(worker, group {stuck.group}\) "
                     "not at B", bar), bar
    tr.close()


def test_a_stall_in_node_zeros_update_names_node_zero_alone(shakespeare):
    """Node Zero held inside the update: the report names it alone, in phase "update", not at the
    reduction's end, for the seconds since it entered the update."""
    import time
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2)
    tr.run(3, progress=False)
    tr.watchdog_min_s = 0.3
    reported, stalls, held = threading.Event(), [], []
    tr.on_stall = lambda stall: (stalls.append(dict(stall)), reported.set())
    original = tr.optimizer.update

    def update(*args):
        began = time.time()
        assert reported.wait(30)
        held.append(time.time() - began)
        return original(*args)

    tr.optimizer.update = update
    tr.step()                                       # (run() hands on_stall to its progress bar)
    tr.close()
    node_zero = tr.hierarchy.node_zero
    spheres = stalls[0]["spheres"]
    assert [(s["sphere"], s["phase"], s["not_arrived_at"]) for s in spheres] == \
        [(node_zero.id, "update", "the reduction's end")]
    # the step's stall began when run() handed out the job; Node Zero's phase when it entered the update
    assert 0 < spheres[0]["seconds"] <= min(stalls[0]["seconds"], held[0]) + 0.05
    assert stalls[0]["seconds"] >= 0.3


def test_a_stall_in_a_control_spheres_reduction_names_it_in_phase_reduce(shakespeare, monkeypatch):
    """One control sphere held while adding its children's rows: the report names it, in phase
    "reduce", not yet at the reduction's end (Node Zero waits for it in the same phase)."""
    import crystalline.engine.spheres as spheres
    tr = Trainer(MODEL_CFG, TRAIN_CFG.replace(batch_size=26), shakespeare, workers=13)  # 2 each
    tr.step()
    tr.watchdog_min_s = 0.3
    reported, stalls, held = threading.Event(), [], []
    tr.on_stall = lambda stall: (stalls.append((dict(stall), time.perf_counter())), reported.set())
    original = spheres.reduce_rows

    def reduce_rows(grads, target, sources):
        name = threading.current_thread().name
        if name.endswith("-control") and not held:
            held.append(name)
            assert reported.wait(30)
        return original(grads, target, sources)

    monkeypatch.setattr(spheres, "reduce_rows", reduce_rows)
    began = time.perf_counter()
    tr.step()
    tr.close()
    (stall, at), *_ = stalls
    assert 0.3 <= stall["seconds"] <= at - began           # the step's age when it was reported
    reducing = [s for s in stall["spheres"] if s["role"] == "control"]
    assert reducing and all(s["phase"] == "reduce" and s["not_arrived_at"] == "the reduction's end"
                            for s in reducing)
    assert not [s for s in stall["spheres"] if s["phase"] == "compute"]


def test_stop_and_pause_storm_never_hangs_or_half_applies(shakespeare):
    before = set(threading.enumerate())
    rng = np.random.default_rng(1)
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=3)
    snapshots = {0: tr.model.params.copy()}
    original_update = tr._update

    def update(grad, loss_sum):
        result = original_update(grad, loss_sum)
        snapshots[tr.steps_done] = tr.model.params.copy()
        return result

    tr._update = update
    for trial in range(200):
        if trial % 50 == 25:
            tr.resize(workers=int(rng.integers(1, 14)))
        tr.start()
        if rng.random() < 0.3:
            tr.pause()
            tr.resume()
        stopper = threading.Timer(float(rng.uniform(0, 0.02)), tr.stop)
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), f"trial {trial}: stop() hung"
        assert tr.driver_error is None, tr.driver_error
        assert np.array_equal(tr.model.params, snapshots[tr.steps_done]), f"trial {trial}"
    assert tr.steps_done > 0
    assert set(threading.enumerate()) <= before


SAVER = """
import hashlib, os, sys, threading
from crystalline import Trainer
from crystalline.config import preset
path, corpus, mode, pause_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
m, t = preset("tiny")
tr = Trainer(m, t.replace(eval_interval=0), corpus, workers=1)
real = {"replace": os.replace, "rename": os.rename}

def publishing(name):
    # the rename that publishes a checkpoint (os.replace or os.rename, which Path.replace and
    # Path.rename call): from step `pause_at` on, stop there, inside the write
    return lambda src, dst: pause_then(real[name], src, dst)

def pause_then(rename, src, dst):
    if os.fspath(dst) == path and tr.steps_done >= pause_at:
        if mode == "half-written":
            os.truncate(src, os.path.getsize(src) // 2)       # as if killed while writing it
        print("paused", tr.steps_done, os.fspath(src), os.path.getsize(src), flush=True)
        threading.Event().wait()                              # until SIGKILL
    rename(src, dst)

os.replace, os.rename = publishing("replace"), publishing("rename")
while True:
    tr.step()
    tr.save(path)
    print("saved", tr.steps_done, hashlib.sha256(tr.model.params.tobytes()).hexdigest(), flush=True)
"""


@pytest.mark.parametrize("mode", ["before-rename", "half-written"])
def test_kill_9_inside_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, mode):
    """The child stops inside save(): its temp file written (whole, or cut in half as by a kill
    mid-write) and not yet renamed; kill -9 there, and the previous checkpoint loads, bit for bit.
    A save that wrote the destination in place would never reach the pause and fails here."""
    import hashlib
    path = tmp_path / "ckpt.safetensors"
    corpus = str(PACKAGE.parent / "data" / "tinyshakespeare.txt")
    pause_at = 3
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), corpus, mode, str(pause_at)],
                            stdout=subprocess.PIPE, text=True)
    saved, paused = {}, None
    try:
        for line in proc.stdout:
            words = line.split()
            if words[0] == "saved":
                saved[int(words[1])] = words[2]
                assert int(words[1]) < pause_at, "a save past the pause was never renamed into place"
            else:
                paused = words
                break
        assert paused is not None, f"the child ended with {proc.wait(30)} before pausing"
        temp = Path(paused[2])
        assert int(paused[1]) == pause_at and temp.exists() and temp != path
        assert temp.stat().st_size == int(paused[3]) > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    tensors, meta = read_checkpoint(path)
    assert meta["step"] == pause_at - 1
    assert hashlib.sha256(tensors["params"].tobytes()).hexdigest() == saved[pause_at - 1]
    with Trainer.load(path, corpus=corpus, workers=1) as resumed:
        assert resumed.steps_done == pause_at - 1
        assert resumed.step().step == pause_at - 1


def test_nothing_in_the_package_loads_pickles():
    pattern = re.compile(r"import (c?pickle|dill|joblib|shelve|marshal)|pickle\.loads?\(|"
                         r"allow_pickle\s*=\s*True|torch\.load\(|Unpickler")
    offenders = [f"{path.name}:{n}: {line.strip()}"
                 for path in PACKAGE.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
