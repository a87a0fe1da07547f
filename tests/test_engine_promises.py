"""README promises about stopping, interrupting, bad corpora and the history, each tested as stated."""

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from crystalline import Trainer
from crystalline.config import preset
from crystalline.engine.stats import History
from crystalline.engine.trainer import TrainingStopped
from crystalline.errors import DataError

MODEL_CFG, TRAIN_CFG = preset("tiny")
TRAIN_CFG = TRAIN_CFG.replace(batch_size=12, eval_interval=0)


def sphere_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sphere-") and t.is_alive()]


def test_every_sphere_thread_has_ended_when_each_stop_returns(shakespeare):
    """After every stop(), not only at the end: start, wait for a step (an event, no sleep), stop,
    and no sphere thread is left; five times over, on trees of 1, 3, 13, 2 and 15 workers."""
    assert sphere_threads() == []
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=1)
    original = tr.model.forward_into
    stepping = threading.Event()

    def forward_into(ws, x, y, params=None):
        stepping.set()
        return original(ws, x, y, params)

    tr.model.forward_into = forward_into
    for workers in (1, 3, 13, 2, 15):
        tr.resize(workers=workers)
        stepping.clear()
        tr.start()
        assert stepping.wait(60)
        assert len(sphere_threads()) == len(tr.hierarchy.spheres)
        tr.stop()
        assert sphere_threads() == [], (workers, sphere_threads())
        assert tr.driver_error is None and tr.state in ("stopped", "idle")
    tr.close()


def test_a_second_ctrl_c_raises_keyboard_interrupt_at_once(shakespeare):
    """The first Ctrl-C asks run() to stop (interrupt()); a second one, while that is under way,
    raises KeyboardInterrupt in the main thread, and Python's handler is back afterwards."""
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2)
    original_forward, original_interrupt = tr.model.forward_into, tr.interrupt
    first_handled, second_sent = threading.Event(), threading.Event()

    def forward(ws, x, y, params=None):
        if tr.steps_done == 1 and threading.current_thread().name.endswith("-worker") \
                and not second_sent.is_set():
            second_sent.set()
            os.kill(os.getpid(), signal.SIGINT)
            assert first_handled.wait(30)
            os.kill(os.getpid(), signal.SIGINT)
        return original_forward(ws, x, y, params)

    def interrupt():
        original_interrupt()
        first_handled.set()

    tr.model.forward_into, tr.interrupt = forward, interrupt
    with pytest.raises(KeyboardInterrupt):
        tr.run(50, progress=False)
    assert first_handled.is_set() and tr.steps_done == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    tr.close()
    assert sphere_threads() == []


def test_a_single_ctrl_c_is_not_a_keyboard_interrupt(shakespeare):
    tr = Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2)
    original_forward = tr.model.forward_into
    sent = threading.Event()

    def forward(ws, x, y, params=None):
        if tr.steps_done == 1 and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGINT)
        return original_forward(ws, x, y, params)

    tr.model.forward_into = forward
    with pytest.raises(TrainingStopped):
        tr.run(50, progress=False)
    tr.close()


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.txt", "does not exist"),
    (lambda d: (d / "empty.txt").write_bytes(b"") and d / "empty.txt" or d / "empty.txt", "empty"),
    (lambda d: (d / "short.txt").write_text("too short") and d / "short.txt", "too few for block_size"),
    (lambda d: (d / "folder").mkdir() or (d / "folder" / "x.bin").write_bytes(b"\0" * 100) and d / "folder",
     "no text files"),
])
def test_corpus_errors_come_before_anything_is_allocated(tmp_path, monkeypatch, make, message):
    """A missing, empty, too short corpus or a folder without text: the DataError comes before
    the model, the optimizer or any sphere is allocated."""
    import crystalline.engine.trainer as trainer_module
    allocated = []
    for name in ("GPT", "AdamW", "SphereStats", "History"):
        real = getattr(trainer_module, name)
        monkeypatch.setattr(trainer_module, name,
                            lambda *a, _real=real, _name=name, **k: allocated.append(_name) or _real(*a, **k))
    with pytest.raises(DataError, match=message):
        Trainer(MODEL_CFG, TRAIN_CFG, make(tmp_path), workers=2)
    assert allocated == []


def test_the_history_ring_keeps_the_last_20000_steps():
    history = History()
    for step in range(20_005):
        history.append({"step": step})
    assert len(history) == 20_000
    assert history[0]["step"] == 5 and history[-1]["step"] == 20_004
    new, cursor = history.since(0)                     # a reader that fell behind gets what is kept
    assert [r["step"] for r in new[:2]] == [5, 6] and len(new) == 20_000 and cursor == 20_005
    history.append({"step": 20_005})
    new, cursor = history.since(cursor)
    assert [r["step"] for r in new] == [20_005] and cursor == 20_006
    assert np.array_equal(history.column("step")[-2:], [20_004, 20_005])


def test_a_trainers_history_is_that_ring(shakespeare):
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=1) as tr:
        assert isinstance(tr.history, History) and tr.history._records.maxlen == 20_000
