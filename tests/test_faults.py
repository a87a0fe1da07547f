"""Faults: non-finite gradients, a stuck sphere (watchdog), stop/pause storms, kill -9 mid-save."""

import os
import re
import signal
import subprocess
import sys
import threading
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
import sys
from crystalline import Trainer
from crystalline.config import preset
m, t = preset("tiny")
tr = Trainer(m, t.replace(eval_interval=0), sys.argv[2], workers=1)
while True:
    tr.step()
    tr.save(sys.argv[1])
    print("saved", tr.steps_done, flush=True)
"""


def test_kill_9_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    corpus = str(PACKAGE.parent / "data" / "tinyshakespeare.txt")
    for kill_after in (3, 7, 12):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), corpus], stdout=subprocess.PIPE,
                                text=True)
        for line in proc.stdout:
            if int(line.split()[1]) >= kill_after:
                break
        proc.send_signal(signal.SIGKILL)      # lands at a random point of the save loop
        proc.wait(30)
        tensors, meta = read_checkpoint(path)
        assert meta["step"] >= kill_after and np.isfinite(tensors["params"]).all()


def test_nothing_in_the_package_loads_pickles():
    pattern = re.compile(r"import (c?pickle|dill|joblib|shelve|marshal)|pickle\.loads?\(|"
                         r"allow_pickle\s*=\s*True|torch\.load\(|Unpickler")
    offenders = [f"{path.name}:{n}: {line.strip()}"
                 for path in PACKAGE.rglob("*.py")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
