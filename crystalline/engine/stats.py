"""Live statistics: one row per sphere, each written only by its own thread, read by anyone.

    stats = SphereStats(hierarchy)
    stats.row(sphere_id)[FIELD["tokens"]] += n      # only from that sphere's thread
    snap = stats.snapshot()                          # dict of arrays, any thread, any time

Readers pull: the trainer never waits for them and never imports the notebook layer.
`History` is a bounded ring of per-step records with a cursor for incremental reads.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

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
PHASES = ("idle", "at_a", "computing", "at_b", "reducing")


def set_phase(row: np.ndarray, phase: str) -> None:
    """Record that the sphere owning `row` entered `phase` (the watchdog reads it)."""
    row[FIELD["phase"]] = PHASES.index(phase)
    row[FIELD["phase_since"]] = time.time()


class SphereStats:
    """Per-sphere counters for one hierarchy; rows are indexed by sphere id."""

    def __init__(self, hierarchy):
        spheres = hierarchy.spheres
        self.role = np.array(["node_zero" if s.is_node_zero else s.role for s in spheres])
        self.group = np.array([s.group for s in spheres], dtype=np.int64)
        self.level = np.array([s.level for s in spheres], dtype=np.int64)
        self.worker_index = np.array([s.worker_index for s in spheres], dtype=np.int64)
        self.parent = np.array([-1 if s.parent is None else s.parent.id for s in spheres], dtype=np.int64)
        self.values = np.zeros((len(spheres), len(FIELDS)), dtype=np.float64)
        self.values[:, FIELD["loss"]] = self.values[:, FIELD["efficiency"]] = np.nan
        self.values[:, FIELD["slowdown"]] = 1.0
        self.values[:, FIELD["updated"]] = self.values[:, FIELD["phase_since"]] = time.time()
        self.step = 0

    def row(self, sphere_id: int) -> np.ndarray:
        """The sphere's own row: write it only from that sphere's thread."""
        return self.values[sphere_id]

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of every column plus the static role, group, level, worker_index and parent.

        Taken without stopping training: a row may be mid-update, never torn across steps
        by more than one sphere's last write.
        """
        values = self.values.copy()
        snap = {name: values[:, i] for i, name in enumerate(FIELDS)}
        snap.update(sphere_id=np.arange(len(values)), role=self.role.copy(), group=self.group.copy(),
                    level=self.level.copy(), worker_index=self.worker_index.copy(),
                    parent=self.parent.copy(), step=self.step)
        return snap


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
