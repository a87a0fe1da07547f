"""Live statistics: one row per sphere, each written only by its own thread, read by anyone.

    stats = SphereStats(hierarchy)                   # in memory; path=...: in the run folder
    stats.row(sphere_id)[FIELD["tokens"]] += n      # only from that sphere's thread
    stats.clock(sphere_id).enter("compute")         # only from that sphere's thread
    snap = stats.snapshot()                          # dict of arrays, any thread, any time
    stats.timeline(last=50)                          # phase intervals of the last 50 steps

The rows and each sphere's ring of phase intervals live in one telemetry buffer
(engine/telemetry.py): a numpy array, or pages of a memory-mapped file in the run folder that
other processes read (crystalline.open_run). Readers pull: the trainer never waits for them
and never imports the notebook layer. `History` is a bounded ring of per-step records with a
cursor for incremental reads.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from crystalline.engine.telemetry import STATES, Telemetry

# Columns of the per-sphere float64 array. Counters and seconds are cumulative since the tree
# was built; `loss`, `last_tokens` and `tokens_per_s` describe the sphere's last step.
FIELDS = (
    "micro_batches",   # micro-batches processed (workers)
    "tokens",          # tokens processed (workers)
    "loss",            # mean loss of its last micro-batch (workers); NaN before the first
    "compute_s",       # seconds in forward + backward (workers)
    "wait_a_s",        # seconds waiting at Point A (distribution barrier)
    "wait_b_s",        # seconds waiting at Point B (completion barrier)
    "reduce_s",        # seconds summing gradient segments (controls); Node Zero adds hand-out,
                       # clipping and AdamW here
    "bytes",           # bytes of buffers the sphere owns
    "last_tokens",     # tokens of its last step
    "tokens_per_s",    # last step's tokens over its cycle (wait A + compute + wait B)
    "updated",         # time.time() of the last write
    "phase",           # index into PHASES: where the sphere is in the step right now
    "phase_since",     # time.time() when it entered that phase
    "slowdown",        # straggler factor of its last step (workers; 1.0: not slowed)
    "slowed_s",        # seconds a straggler spent slowed after its compute (counted in compute_s)
    "efficiency",      # last step's compute / (compute + wait at B) (workers; NaN before)
)
FIELD = {name: i for i, name in enumerate(FIELDS)}
# Where a sphere is in a step. idle: Node Zero between steps (and every sphere before its first);
# wait_a / wait_b: at Point A / Point B; compute: a worker's forward + backward; reduce: a
# control summing its children's segments; update: Node Zero's own work, handing out the
# micro-batches before Point A, and clipping + AdamW after the reduction.
PHASES = ("idle", "wait_a", "compute", "wait_b", "reduce", "update")
PHASE_INDEX = {name: i for i, name in enumerate(PHASES)}
_PHASE, _SINCE = FIELD["phase"], FIELD["phase_since"]


class PhaseClock:
    """One sphere's phase recorder, used only by that sphere's thread.

    enter(phase) closes the open interval (labelled with `step`, the step it belongs to) into
    the sphere's ring and opens the next: a clock read and eight array stores, no lock.
    """

    __slots__ = ("row", "starts", "ends", "steps", "phases", "cursor", "index", "capacity",
                 "count", "step", "phase", "since")

    def __init__(self, telemetry: Telemetry, index: int, step: int):
        ring = telemetry.ring[index]
        self.starts, self.ends, self.steps, self.phases = (ring[k] for k in ("start", "end", "step", "phase"))
        self.row, self.cursor, self.index, self.capacity = telemetry.values[index], telemetry.cursor, index, len(ring)
        self.count, self.step = int(telemetry.cursor[index]), step
        self.phase, self.since = int(self.row[_PHASE]), float(self.row[_SINCE])

    def enter(self, phase: str) -> None:
        now = time.time()
        k = self.count
        slot = k % self.capacity
        self.starts[slot], self.ends[slot] = self.since, now
        self.steps[slot], self.phases[slot] = self.step, self.phase
        self.count = k + 1
        self.cursor[self.index] = k + 1          # after the entry: readers trust entries below it
        self.phase, self.since = PHASE_INDEX[phase], now
        self.row[_PHASE], self.row[_SINCE] = self.phase, now


class SphereStats:
    """Per-sphere counters and phase rings for one hierarchy; rows are indexed by sphere id.

    path: None keeps everything in memory; a path writes the telemetry file there (rank and
    ranks go in its header). previous: the stats of the tree this one replaces (a resize): the
    step and published state carry over, the file becomes the next generation, and the old
    file is marked superseded.
    """

    def __init__(self, hierarchy, path=None, rank: int = 0, ranks: int = 1,
                 previous: SphereStats | None = None):
        generation = previous.telemetry.generation + 1 if previous is not None else 0
        self.telemetry = Telemetry.create(hierarchy, FIELDS, PHASES, path, rank, ranks, generation)
        self.rank = rank
        self.values = self.telemetry.values
        self.role, self.group, self.level, self.worker_index, self.parent = (
            self.telemetry.table[k] for k in ("role", "group", "level", "worker_index", "parent"))
        self.values[:, FIELD["loss"]] = self.values[:, FIELD["efficiency"]] = np.nan
        self.values[:, FIELD["slowdown"]] = 1.0
        self.values[:, FIELD["updated"]] = self.values[:, FIELD["phase_since"]] = time.time()
        if previous is not None:
            self.step, self.state, self.reads_control = previous.step, previous.state, previous.reads_control
            previous.telemetry.set_counter("superseded", 1)
        self._clocks = [PhaseClock(self.telemetry, i, self.step) for i in range(len(self.values))]

    @property
    def step(self) -> int:
        """Steps completed (Node Zero sets it after each update)."""
        return self.telemetry.counter("step")

    @step.setter
    def step(self, value: int) -> None:
        self.telemetry.set_counter("step", value)

    @property
    def state(self) -> str:
        """What the trainer publishes: one of telemetry.STATES."""
        return self.telemetry.state

    @state.setter
    def state(self, value: str) -> None:
        self.telemetry.set_counter("state", STATES.index(value))

    @property
    def reads_control(self) -> bool:
        """Published: the trainer acts on its run folder's control file."""
        return bool(self.telemetry.counter("reads_control"))

    @reads_control.setter
    def reads_control(self, value: bool) -> None:
        self.telemetry.set_counter("reads_control", int(value))

    def row(self, sphere_id: int) -> np.ndarray:
        """The sphere's own row: write it only from that sphere's thread."""
        return self.values[sphere_id]

    def clock(self, sphere_id: int) -> PhaseClock:
        """The sphere's phase clock: call enter() only from that sphere's thread."""
        return self._clocks[sphere_id]

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of every column plus the static role, group, level, worker_index and parent,
        the step count and the generation (a number that each resize increases).

        Taken without stopping training: a row may be mid-update, never torn across steps
        by more than one sphere's last write.
        """
        return self.telemetry.snapshot()

    def timeline(self, last: int = 50) -> dict[str, np.ndarray]:
        """Phase intervals of the last `last` steps: equal-length arrays sphere, rank, step,
        phase (a PHASES name), start, end (time.time() seconds), sorted by start."""
        return self.telemetry.timeline(last)


def group_tokens_per_s(snap: dict) -> np.ndarray:
    """(12,) tokens/s summed over the workers of each top-level symmetry group."""
    workers = snap["role"] == "worker"
    return np.bincount(snap["group"][workers], weights=snap["tokens_per_s"][workers], minlength=12)[:12]


def slowest_group(snap: dict) -> int:
    """The top-level group with the lowest tokens/s in its last step (-1 before any step)."""
    per_group = group_tokens_per_s(snap)
    active = np.flatnonzero(per_group > 0)
    return int(active[np.argmin(per_group[active])]) if len(active) else -1


class History:
    """A bounded ring of per-step records (dicts); `since(cursor)` reads only what is new."""

    def __init__(self, maxlen: int = 20_000):
        self._records: deque[dict] = deque(maxlen=maxlen)
        self._total = 0
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        with self._lock:
            self._records.append(record)
            self._total += 1

    def since(self, cursor: int) -> tuple[list[dict], int]:
        """Records appended after `cursor` (a count returned by an earlier call) and the new cursor."""
        with self._lock:
            first = self._total - len(self._records)
            new = list(self._records)[max(cursor, first) - first:]
            return new, self._total

    def column(self, key: str) -> np.ndarray:
        with self._lock:
            return np.array([r.get(key, np.nan) for r in self._records], dtype=np.float64)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i):
        with self._lock:
            return list(self._records)[i]

    def __iter__(self):
        with self._lock:
            return iter(list(self._records))
