"""Ctrl-C (SIGINT) and SIGTERM in the command line: a run ends cleanly and exits 130 or 143.

    previous = signals.install()     # first thing in cli.main, before any heavy import
    signals.watch(trainer)           # from here a signal calls trainer.interrupt()
    signals.watch(None)              # the final checkpoint is written: a signal ends at once
    signals.exit_code()              # 130 after SIGINT, 143 after SIGTERM, None if none came
    signals.restore(previous)

Before watch(trainer) (imports, reading the corpus, building the model) a signal raises
Interrupted, a KeyboardInterrupt, at once: nothing has been trained and nothing is written;
the CLI catches it and exits with 128 + the signal number, without a traceback. In a process
started by mpiexec (PMI_SIZE or OMPI_COMM_WORLD_SIZE above 1) a signal never raises: one rank
leaving during start-up would leave the others blocked in MPI_Init or a collective, so the
signal is kept and handed to the trainer as soon as it exists, and the ranks stop together
before their first update. While a
trainer is watched, the first signal only calls trainer.interrupt() (a flag, no lock taken):
the step in flight is abandoned before its update, run() raises TrainingStopped and the CLI
writes a final checkpoint. A second signal raises Interrupted when `escalate` is True (one
process) and is ignored otherwise (under MPI, mpiexec forwards the terminal's Ctrl-C to every
rank a second time; pressing Ctrl-C again makes mpiexec end the job).

A signal that lands while C code is calling back into Python (a ctypes callback: llvmlite's
object cache while Numba compiles) cannot raise there: Python would print the Interrupted as
"Exception ignored" with a traceback and carry on. install() makes such an ignored Interrupted
silent; the signal is kept, and watch(trainer) hands it over as under MPI, so the run still stops
before its first update and exits 128 + N.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A signal ended the process before or after training (signum: which one)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_state: dict = {"received": None, "trainer": None, "escalate": True, "mpi": False}


def launched_by_mpiexec() -> bool:
    """Whether this process is one of several ranks started by mpiexec (MPICH or Open MPI)."""
    return any(int(os.environ.get(v, "1") or "1") > 1 for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))


def _handler(signum, frame) -> None:
    first = _state["received"] is None
    if first:
        _state["received"] = signum
    trainer = _state["trainer"]
    if trainer is None:
        if _state["mpi"]:
            return                    # kept: watch() hands it to the trainer
        raise Interrupted(signum)
    if first:
        trainer.interrupt()
    elif _state["escalate"] and not _state["mpi"]:
        raise Interrupted(signum)


def install() -> dict | None:
    """Handle SIGINT and SIGTERM as above; returns the previous handlers (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _state.update(received=None, trainer=None, escalate=True, mpi=launched_by_mpiexec())
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    previous["unraisablehook"] = sys.unraisablehook
    sys.unraisablehook = _quiet_if_interrupted(sys.unraisablehook)
    return previous


def _quiet_if_interrupted(hook):
    """An unraisablehook that drops our Interrupted (the signal is kept in _state) and passes
    anything else to `hook`."""
    def unraisable(info):
        if not isinstance(info.exc_value, Interrupted):
            hook(info)
    return unraisable


def restore(previous: dict | None) -> None:
    if previous:
        previous = dict(previous)
        sys.unraisablehook = previous.pop("unraisablehook")
        for s, h in previous.items():
            signal.signal(s, h)
    _state.update(trainer=None)


def watch(trainer, escalate: bool = True) -> None:
    """Route signals to `trainer.interrupt()` (None: raise Interrupted again); a signal kept
    during an MPI start-up is handed over at once."""
    _state.update(trainer=trainer, escalate=escalate)
    if trainer is not None and _state["received"] is not None:
        trainer.interrupt()


def received() -> int | None:
    """The first signal received since install(), or None."""
    return _state["received"]


def exit_code() -> int | None:
    """128 + the first signal received (130 for SIGINT, 143 for SIGTERM), or None."""
    return None if _state["received"] is None else 128 + int(_state["received"])
