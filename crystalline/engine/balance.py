"""Stragglers on purpose, dynamic balancing of a step's sequences, and barrier efficiency.

    check_stragglers({1: 2.0}, workers=2)     # -> {1: 2.0}, or ConfigError naming the problem
    chunks = SharedChunks(first, count, n_workers)
    chunks.reset()                            # Node Zero, before Point A
    k = chunks.take()                         # a worker: chunk index, or -1 when all are taken
    slow_down(seconds, "sleep", aborted)      # a straggler's extra time after its compute
    step_efficiency(before, after, seconds)   # a step's total worker compute / (workers x seconds)

Balance modes. `static`: each worker computes a fixed slice of the step (reduce.split_by_group).
`dynamic`: the step is cut into chunks, large first and small at the end (guided
self-scheduling), and each worker takes the next chunk from one shared counter as soon as it
has finished its last one, accumulating into its own gradient row; no lock is taken. Which
worker takes which chunk varies run to run, so the sum is the same to float32 summation order
only: run-to-run bitwise identity holds for `static` alone.

Straggler modes. After each forward+backward a slowed worker waits (factor - 1) x the time it
just computed: `sleep` frees its core (a slower core), `busy` spins on it (a competing
process). The extra seconds count as the worker's compute (it has not reached Point B) and are
also kept apart in the stats column `slowed_s`.

Barrier efficiency. Each worker writes its last step's compute / (compute + wait at B) to the
stats column `efficiency`; a step's efficiency (history) is step_efficiency below.
"""

from __future__ import annotations

import itertools
import math
import threading
import time

import numpy as np
from numba import njit

from crystalline.errors import ConfigError

BALANCE_MODES = ("static", "dynamic")
STRAGGLER_MODES = ("sleep", "busy")
CHUNKS_PER_WORKER = 2      # guided self-scheduling: a chunk is remaining / (this x workers)
MIN_CHUNK = 2              # sequences: the smallest chunk when the batch allows it


def check_balance(balance) -> str:
    if balance not in BALANCE_MODES:
        raise ConfigError(f"balance={balance!r} is not a balance mode; use one of {list(BALANCE_MODES)}")
    return balance


def check_straggler_mode(mode) -> str:
    if mode not in STRAGGLER_MODES:
        raise ConfigError(f"straggler mode {mode!r} is unknown; use one of {list(STRAGGLER_MODES)}")
    if mode == "busy":
        _spin(1)        # compiled (or loaded from the cache) now, never inside a timed step
    return mode


def check_stragglers(stragglers, workers: int) -> dict[int, float]:
    """{worker index: factor >= 1}, checked against a tree of `workers` workers."""
    if stragglers is None:
        return {}
    if not isinstance(stragglers, dict):
        raise ConfigError(f"stragglers must be a dict {{worker index: factor}}, got "
                          f"{type(stragglers).__name__}")
    checked = {}
    for w, f in stragglers.items():
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 0 <= w < workers:
            raise ConfigError(f"straggler worker index {w!r} is not a worker of this tree; use "
                              f"0..{workers - 1}")
        if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) \
                or not math.isfinite(f) or f < 1:
            raise ConfigError(f"straggler factor {f!r} for worker {w} is invalid; use a finite "
                              "number >= 1 (1: not slowed, 2: twice as slow)")
        checked[int(w)] = float(f)
    return checked


def parse_straggler(text: str) -> tuple[int, float]:
    """'W:F' (the CLI's --straggler) -> (worker index, factor); checked later against the tree."""
    w, sep, f = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        return int(w), float(f)
    except ValueError:
        raise ConfigError(f"--straggler {text!r} is invalid; write WORKER:FACTOR, e.g. "
                          "--straggler 1:2.0") from None


# ---------------------------------------------------------------- dynamic balancing
def chunk_schedule(count: int, n_workers: int, min_chunk: int = MIN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(starts, sizes) of the step's chunks, relative to its first sequence, largest first.

    Each chunk is ceil(remaining / (CHUNKS_PER_WORKER x n_workers)) sequences, at least
    `min_chunk` (or what remains): big chunks keep the kernels efficient, small ones at the
    end let a fast worker make up for a slow one; one worker takes the step in one chunk. A
    function of (count, n_workers) alone.
    """
    if n_workers == 1:
        return np.zeros(min(count, 1), dtype=np.int64), np.full(min(count, 1), count, dtype=np.int64)
    starts, sizes, done = [], [], 0
    while done < count:
        remaining = count - done
        size = min(remaining, max(min_chunk, -(-remaining // (CHUNKS_PER_WORKER * n_workers))))
        starts.append(done)
        sizes.append(size)
        done += size
    return np.array(starts, dtype=np.int64), np.array(sizes, dtype=np.int64)


class SharedChunks:
    """A step's chunks and the counter workers take them from.

    take() is one call to an itertools.count's __next__, which runs in C without releasing the
    GIL: atomic, no lock, well under a microsecond (benchmarks/stragglers.py measures it).
    """

    def __init__(self, first: int, count: int, n_workers: int):
        starts, self.sizes = chunk_schedule(count, n_workers)
        self.starts = starts + first           # (n_chunks,) global sequence index of each chunk
        self.n_chunks = len(self.sizes)
        self.max_size = int(self.sizes.max()) if self.n_chunks else 0
        self._next = itertools.count().__next__

    def reset(self) -> None:
        """A fresh counter for the next step (Node Zero, before Point A releases the workers)."""
        self._next = itertools.count().__next__

    def take(self) -> int:
        """The next untaken chunk's index, or -1 when every chunk of the step is taken."""
        k = self._next()
        return k if k < self.n_chunks else -1


def live_rows(children, took: np.ndarray, result_rows: np.ndarray) -> list[int]:
    """The gradient rows a control adds this step, in child order.

    children: [(is_worker, index)]: a worker's index (its row, if it took a chunk this step) or
    a control child's sphere id (the row its reduction left the sum in, -1 if none).
    """
    rows = []
    for is_worker, i in children:
        row = (i if took[i] else -1) if is_worker else int(result_rows[i])
        if row >= 0:
            rows.append(row)
    return rows


# ---------------------------------------------------------------- stragglers
@njit(nogil=True, cache=True)
def _spin(iterations):
    """Burn a core for `iterations` steps of a dependent float recurrence (about 1 ns each)."""
    x = 0.5
    for _ in range(iterations):
        x = x * 1.0000001 + 1e-9
    return x


SPIN_ITERATIONS = 20_000       # tens of microseconds between checks of the clock


def slow_down(seconds: float, mode: str, aborted: threading.Event) -> float:
    """Spend `seconds` as a straggler: sleeping (`sleep`) or spinning (`busy`); return early
    when `aborted` is set. Returns the seconds actually spent."""
    t0 = time.perf_counter()
    if seconds <= 0:
        return 0.0
    if mode == "sleep":
        aborted.wait(seconds)
    else:
        deadline = t0 + seconds
        while time.perf_counter() < deadline and not aborted.is_set():
            _spin(SPIN_ITERATIONS)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- barrier efficiency
def step_efficiency(before: dict, after: dict, step_seconds: float) -> float:
    """A step's barrier efficiency: its total worker compute / (workers x step_seconds).

    before, after: stats snapshots taken around the step. 1.0 when no worker waits at either
    barrier and hand-out, reduction and update take no time.
    """
    workers = after["role"] == "worker"
    compute = float((after["compute_s"][workers] - before["compute_s"][workers]).sum())
    return compute / (int(workers.sum()) * step_seconds) if step_seconds > 0 else float("nan")
