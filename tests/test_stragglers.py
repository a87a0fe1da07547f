"""Stragglers on purpose: a slowed worker's time moves as set (sleep and busy), the stats and
history show it (slowdown, slowed_s, efficiency), and bad input is a clear error."""

import json
import math

import numpy as np
import pytest

from crystalline import Trainer
from crystalline.cli import main
from crystalline.config import preset
from crystalline.errors import ConfigError

MODEL_CFG, TRAIN_CFG = preset("small")
TRAIN_CFG = TRAIN_CFG.replace(batch_size=16, eval_interval=0)
STEPS = 3


def worker_rows(tr):
    return [s.id for s in tr.hierarchy.workers]


def step_deltas(tr, steps):
    """Per-sphere seconds computing, slowed and waiting at B over `steps` steps."""
    before = tr.stats.snapshot()
    for _ in range(steps):
        tr.step()
    after = tr.stats.snapshot()
    return {k: after[k] - before[k] for k in ("compute_s", "slowed_s", "wait_b_s")}, after


@pytest.mark.parametrize("mode", ["sleep", "busy"])
def test_a_straggler_waits_factor_minus_one_times_its_compute(shakespeare, mode):
    factor = 3.0
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2, straggler_mode=mode) as tr:
        tr.step()                                   # compile outside the measurement
        plain, _ = step_deltas(tr, STEPS)
        tr.set_stragglers({0: factor})
        slowed, snap = step_deltas(tr, STEPS)
        history = list(tr.history)
    slow, fast = worker_rows(tr)
    # The straggler's own time: slowed seconds are (factor - 1) x its forward+backward seconds.
    own = slowed["compute_s"][slow] - slowed["slowed_s"][slow]
    assert 0.9 * (factor - 1) <= slowed["slowed_s"][slow] / own <= 1.25 * (factor - 1)
    assert plain["slowed_s"][slow] == 0 and slowed["slowed_s"][fast] == 0
    # The other worker now waits at B for it: its wait/compute ratio rises by about factor - 1.
    rise = slowed["wait_b_s"][fast] / slowed["compute_s"][fast] - \
        plain["wait_b_s"][fast] / plain["compute_s"][fast]
    assert 0.4 * (factor - 1) <= rise <= 2.5 * (factor - 1)
    # Stats: which spheres are slowed, and each worker's efficiency in the last step.
    assert snap["slowdown"][slow] == factor and snap["slowdown"][fast] == 1.0
    assert snap["slowdown"][tr.hierarchy.node_zero.id] == 1.0
    assert snap["efficiency"][slow] > 0.8 and snap["efficiency"][fast] < 0.6
    assert math.isnan(snap["efficiency"][tr.hierarchy.node_zero.id])
    # History: the step's efficiency is total worker compute / (workers x step time).
    # (ideal: (1 + factor) / (2 factor) = 0.67 of the plain steps' efficiency; the tiny model's
    # hand-out, reduction and update dilute it, and on a loaded machine the plain steps already
    # wait for a descheduled worker (0.63 against 0.69 seen in CI), so ask for a drop, not the ideal)
    assert np.median([r["efficiency"] for r in history[-STEPS:]]) < \
        0.95 * np.median([r["efficiency"] for r in history[1:1 + STEPS]])
    expected = slowed["compute_s"][[slow, fast]].sum() / (2 * sum(r["seconds"] for r in history[-STEPS:]))
    assert np.mean([r["efficiency"] for r in history[-STEPS:]]) == pytest.approx(expected, rel=0.2)
    assert all(0 < r["efficiency"] <= 1 for r in history[1:])


def test_dynamic_balancing_wins_back_the_straggler_time(shakespeare):
    """The fast worker's wait at B mostly disappears when it takes the slow one's chunks."""
    waits = {}
    for balance in ("static", "dynamic"):
        with Trainer(MODEL_CFG, TRAIN_CFG.replace(batch_size=32), shakespeare, workers=2,
                     balance=balance) as tr:
            tr.step()
            tr.set_stragglers({0: 4.0})
            d, _ = step_deltas(tr, STEPS)
            fast = worker_rows(tr)[1]
            waits[balance] = d["wait_b_s"][fast] / d["compute_s"][fast]
    assert waits["dynamic"] < 0.5 * waits["static"]


def test_set_stragglers_between_steps_and_resize(shakespeare):
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=3, stragglers={2: 1.5}) as tr:
        tr.step()
        assert list(tr.stats.snapshot()["slowdown"][worker_rows(tr)]) == [1.0, 1.0, 1.5]
        tr.set_stragglers({0: 2})
        tr.step()
        assert list(tr.stats.snapshot()["slowdown"][worker_rows(tr)]) == [2.0, 1.0, 1.0]
        tr.set_stragglers({2: 2})
        with pytest.raises(ConfigError, match=r"stragglers \[2\] are not workers of a 2-worker tree"):
            tr.resize(workers=2)
        assert tr.workers == 3
        tr.set_stragglers({}, mode="busy")
        assert tr.straggler_mode == "busy" and tr.stragglers == {}
        tr.step()


@pytest.mark.parametrize("stragglers, message", [
    ({2: 2.0}, "worker index 2 is not a worker of this tree; use 0..1"),
    ({-1: 2.0}, "worker index -1"),
    ({True: 2.0}, "worker index True"),
    ({"0": 2.0}, "worker index '0'"),
    ({0: 0.5}, "factor 0.5 for worker 0 is invalid; use a finite number >= 1"),
    ({0: float("nan")}, "factor nan"),
    ({0: float("inf")}, "factor inf"),
    ({0: "2"}, "factor '2'"),
    ([(0, 2.0)], "stragglers must be a dict"),
])
def test_bad_stragglers_are_clear_errors(shakespeare, stragglers, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2, stragglers=stragglers)
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2, stragglers={1: 2.0}) as tr:
        with pytest.raises(ConfigError, match="worker index|factor|must be a dict"):
            tr.set_stragglers(stragglers)
        assert tr.stragglers == {1: 2.0}


def test_bad_straggler_mode_is_a_clear_error(shakespeare):
    with pytest.raises(ConfigError, match="straggler mode 'spin' is unknown; use one of"):
        Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2, straggler_mode="spin")
    with Trainer(MODEL_CFG, TRAIN_CFG, shakespeare, workers=2) as tr:
        with pytest.raises(ConfigError, match="straggler mode"):
            tr.set_stragglers({0: 2.0}, mode="slow")
        assert tr.stragglers == {} and tr.straggler_mode == "sleep"


def test_cli_straggler_flags(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "3", "--workers", "2", "--balance", "dynamic",
                 "--straggler", "1:2", "--straggler-mode", "busy", "--run-dir", str(run),
                 "--no-progress", "--sample", "0"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["balance"] for r in records] == ["dynamic"] * 3
    assert all(0 < r["efficiency"] <= 1 and "assignment" in r for r in records)


@pytest.mark.parametrize("flags, message", [
    (["--straggler", "2:2"], "straggler worker index 2 is not a worker of this tree"),
    (["--straggler", "1:0.5"], "straggler factor 0.5 for worker 1 is invalid"),
    (["--straggler", "1:inf"], "straggler factor inf"),
    (["--straggler", "one:2"], "--straggler 'one:2' is invalid; write WORKER:FACTOR"),
    (["--straggler", "1"], "--straggler '1' is invalid"),
    (["--straggler", "1:2", "--straggler", "1:3"], "names a worker twice"),
    (["--straggler-mode", "busy"], "--straggler-mode has no straggler to act on"),
])
def test_cli_bad_straggler_flags_exit_2(tmp_path, capsys, flags, message):
    argv = ["train", "--steps", "1", "--workers", "2", "--run-dir", str(tmp_path / "run"),
            "--no-progress", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()        # refused before anything was written


@pytest.mark.parametrize("flags", [["--balance", "fast"], ["--straggler-mode", "spin"]])
def test_cli_unknown_modes_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--steps", "1", *flags])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
