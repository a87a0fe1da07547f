"""Telemetry: the per-sphere stats rows and phase rings in one buffer, in memory or in the run folder.

    tel = Telemetry.create(hierarchy, FIELDS, PHASES, path=run_dir / "telemetry-rank0.bin")
    tel.values[sphere_id, k] = x             # the stats rows: only that sphere's thread writes
    tel.ring[sphere_id, n % tel.capacity] = (start, end, step, phase); tel.cursor[sphere_id] = n + 1
    reader = Telemetry.open(path)            # any process: read-only, validated
    reader.snapshot(); reader.timeline(last=50); reader.hierarchy()

Layout (version 1, little-endian), one file per process (MPI: one per rank):

    0    magic b"CRYSTLTM", uint32 layout version, uint32 length of the JSON metadata
    16   int64 counters: generation, superseded, step, state, reads_control, (reserved)
    64   JSON metadata: field and phase names, states, sphere table (id, role, group, level,
         parent, position, worker_index), rank, ranks, pid, host, process start time
    then (each 64-byte aligned) float64 values [n, F]; int64 cursor [n]; intervals [n, capacity]
         (start, end: float64 time.time() seconds; step, phase: int32)

Consistency without a lock. Every sphere writes only its own row and its own ring row, a ring
entry before its cursor, so a reader that reads a cursor, copies ring entries and reads the
cursor again keeps exactly the entries no write touched meanwhile (at most the newest
capacity - 1: the slot after the newest may be mid-write). `timeline(last)` copies only each
sphere's newest entries, as many as the last steps need, not the whole ring. The sphere table never changes in a file: a resize writes
a new file (the next generation) to a temporary name, renames it over the old path, then sets
`superseded` in the old one; a reader that finds `superseded` set (or the path now naming
another file) after copying reopens the path and reads again. The rows themselves are as
consistent as in memory: a row may be mid-update, never from another tree.

The blocks are reserved when the file is made (posix_fallocate), so a full disk is an error
then, never a fault when a sphere first touches a page.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
import weakref
from pathlib import Path

import numpy as np

from crystalline.errors import RunError
from crystalline.io import atomic_path

MAGIC = b"CRYSTLTM"
VERSION = 1
HEADER_BYTES = 64
COUNTERS = ("generation", "superseded", "step", "state", "reads_control", "reserved")
STATES = ("idle", "running", "paused", "stopped", "finished")
RING_INTERVALS = 1024      # per sphere: 341 steps of a worker's 3 phases, 170 of Node Zero's 6
ENTRIES_PER_STEP = 6       # Node Zero's intervals per training step (the most of any sphere)
INTERVAL = np.dtype([("start", "<f8"), ("end", "<f8"), ("step", "<i4"), ("phase", "<i4")])


def telemetry_path(run_dir, rank: int = 0) -> Path:
    """Where rank `rank` of a run writes its telemetry."""
    return Path(run_dir) / f"telemetry-rank{rank}.bin"


def remove_other_ranks(run_dir, ranks: int) -> None:
    """Delete telemetry files of ranks >= `ranks` (left by an earlier run with more ranks)."""
    for path in Path(run_dir).glob("telemetry-rank*.bin"):
        suffix = path.stem.removeprefix("telemetry-rank")
        if suffix.isdigit() and int(suffix) >= ranks:
            path.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


def _layout(meta_bytes: int, n: int, n_fields: int, capacity: int) -> tuple[int, int, int, int]:
    """Byte offsets of values, cursor and ring, and the total size."""
    values = _align(HEADER_BYTES + meta_bytes)
    cursor = _align(values + n * n_fields * 8)
    ring = _align(cursor + n * 8)
    return values, cursor, ring, _align(ring + n * capacity * INTERVAL.itemsize)


def sphere_table(hierarchy, rank: int = 0) -> dict[str, list]:
    """The static columns of every sphere, by id: what a reader needs to rebuild the tree."""
    spheres = hierarchy.spheres
    return {"id": [s.id for s in spheres],
            "role": [s.role_name for s in spheres],
            "group": [s.group for s in spheres], "level": [s.level for s in spheres],
            "parent": [-1 if s.parent is None else s.parent.id for s in spheres],
            "position": [s.position for s in spheres],
            "worker_index": [s.worker_index for s in spheres], "rank": [rank] * len(spheres)}


def _process_started(pid: int) -> float:
    import psutil
    return psutil.Process(pid).create_time()


class Telemetry:
    """Views of one telemetry buffer: counters, metadata, values [n, F], cursor [n], ring [n, cap]."""

    def __init__(self, buf: np.ndarray, path: Path | None = None):
        buf = buf.view(np.ndarray)         # plain views (np.memmap indexing runs Python code)
        self.buf, self.path, self.inode = buf, path, None
        where = str(path) if path is not None else "telemetry buffer"
        size = len(buf)
        if size < HEADER_BYTES:
            raise RunError(f"{where} is truncated: {size} bytes, shorter than its {HEADER_BYTES}-byte "
                           "header; it was not written by a complete crystalline run")
        if bytes(buf[:8]) != MAGIC:
            raise RunError(f"{where} is not a crystalline telemetry file (its first bytes are "
                           f"{bytes(buf[:8])!r}, not {MAGIC!r})")
        version, meta_bytes = (int(v) for v in buf[8:16].view("<u4"))
        if version != VERSION:
            raise RunError(f"{where} has telemetry layout version {version}; this crystalline reads "
                           f"version {VERSION}: open it with the crystalline version that wrote it")
        if HEADER_BYTES + meta_bytes > size:
            raise RunError(f"{where} is truncated: {size} bytes, its header needs {HEADER_BYTES + meta_bytes}")
        try:
            self.meta = json.loads(bytes(buf[HEADER_BYTES:HEADER_BYTES + meta_bytes]).decode("utf-8"))
            n, n_fields, capacity = (len(self.meta["spheres"]["id"]), len(self.meta["fields"]),
                                     int(self.meta["capacity"]))
        except (ValueError, KeyError, TypeError) as e:
            raise RunError(f"{where} has a damaged header ({e}); it cannot be read") from None
        values, cursor, ring, total = _layout(meta_bytes, n, n_fields, capacity)
        if size < total:
            raise RunError(f"{where} is truncated: {size} bytes, its header describes {total}")
        self.counters = buf[16:HEADER_BYTES].view("<i8")
        self.values = buf[values:values + n * n_fields * 8].view("<f8").reshape(n, n_fields)
        self.cursor = buf[cursor:cursor + n * 8].view("<i8")
        self.ring = buf[ring:ring + n * capacity * INTERVAL.itemsize].view(INTERVAL).reshape(n, capacity)
        self.fields, self.phases = tuple(self.meta["fields"]), tuple(self.meta["phases"])
        self.capacity, self.rank = capacity, int(self.meta["rank"])
        self.table = {k: np.array(v) for k, v in self.meta["spheres"].items()}
        self._exit_poll, self._pidfd_tried, self._exited = None, False, False    # process_alive

    # ------------------------------------------------------------------ writing
    @classmethod
    def create(cls, hierarchy, fields, phases, path=None, rank: int = 0, ranks: int = 1,
               generation: int = 0, capacity: int | None = None) -> Telemetry:
        """A zeroed buffer for `hierarchy`: in memory (path None) or a file made atomically at `path`.

        capacity: phase intervals kept per sphere (default RING_INTERVALS)."""
        capacity = RING_INTERVALS if capacity is None else capacity
        pid = os.getpid()
        meta = {"fields": list(fields), "phases": list(phases), "states": list(STATES),
                "capacity": capacity, "spheres": sphere_table(hierarchy, rank), "rank": rank,
                "ranks": ranks, "pid": pid, "host": socket.gethostname(),
                "process_started": _process_started(pid), "created": time.time()}
        meta_bytes = json.dumps(meta).encode("utf-8")
        size = _layout(len(meta_bytes), len(hierarchy.spheres), len(fields), capacity)[-1]
        if path is None:
            buf = np.zeros(size, dtype=np.uint8)
            cls._write_header(buf, meta_bytes, generation)
            return cls(buf)
        path = Path(path)
        try:
            with atomic_path(path) as tmp:               # readers see the old file or this whole one
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    # Reserve every block now: a full disk is an error here, never a SIGBUS when
                    # a sphere first touches a page of the mapping.
                    if hasattr(os, "posix_fallocate"):
                        os.posix_fallocate(fd, 0, size)
                    else:
                        os.ftruncate(fd, size)
                finally:
                    os.close(fd)
                buf = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(size,))
                cls._write_header(buf, meta_bytes, generation)
                tel = cls(buf, path)
                tel.inode = os.stat(tmp).st_ino
        except OSError as e:
            raise RunError(f"cannot write the telemetry file {path}: {e.strerror or e}; free space "
                           "there or choose another run folder") from None
        return tel

    @staticmethod
    def _write_header(buf, meta_bytes: bytes, generation: int) -> None:
        buf[:8] = np.frombuffer(MAGIC, dtype=np.uint8)
        buf[8:16].view("<u4")[:] = (VERSION, len(meta_bytes))
        buf[16:HEADER_BYTES].view("<i8")[:] = 0
        buf[16:24].view("<i8")[0] = generation
        buf[HEADER_BYTES:HEADER_BYTES + len(meta_bytes)] = np.frombuffer(meta_bytes, dtype=np.uint8)

    def counter(self, name: str) -> int:
        return int(self.counters[COUNTERS.index(name)])

    def set_counter(self, name: str, value: int) -> None:
        self.counters[COUNTERS.index(name)] = value

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, path) -> Telemetry:
        """A read-only view of a telemetry file; RunError naming the path if it cannot be read."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_size == 0:
                    raise RunError(f"{path} is truncated: 0 bytes, shorter than its "
                                   f"{HEADER_BYTES}-byte header")
                buf = np.memmap(f, dtype=np.uint8, mode="r")
        except OSError as e:
            raise RunError(f"{path}: cannot read the telemetry file ({e.strerror})") from None
        tel = cls(buf, path)
        tel.inode = st.st_ino
        return tel

    @property
    def generation(self) -> int:
        return self.counter("generation")

    @property
    def superseded(self) -> bool:
        """True once a resize (or a new process) has put another file at this path."""
        if self.counter("superseded"):
            return True
        try:
            return self.path is not None and os.stat(self.path).st_ino != self.inode
        except OSError:
            return False

    @property
    def state(self) -> str:
        return STATES[self.counter("state")]

    def snapshot(self) -> dict:
        """Every stats column, the sphere table, step, and generation (bumped by each resize), copied."""
        values = np.array(self.values)
        snap = {name: values[:, i] for i, name in enumerate(self.fields)}
        snap.update(sphere_id=self.table["id"].copy(), role=self.table["role"].copy(),
                    group=self.table["group"].copy(), level=self.table["level"].copy(),
                    worker_index=self.table["worker_index"].copy(), parent=self.table["parent"].copy(),
                    step=self.counter("step"), generation=self.generation)
        return snap

    def timeline(self, last: int = 50) -> dict[str, np.ndarray]:
        """Closed phase intervals of the last `last` steps, sorted by start (see timeline_arrays).

        Copies each sphere's newest entries only: a guess of how many the steps need (Node Zero
        closes 6 intervals a step, the others 3; validation adds more), grown until the oldest
        entry copied of every sphere is from an earlier step or is its oldest intact one."""
        n, capacity = len(self.cursor), self.capacity
        take = min(capacity, ENTRIES_PER_STEP * (last + 1))
        while True:
            before = np.array(self.cursor)
            numbers = before[:, None] - take + np.arange(take)       # (n, take) entries, oldest first
            entries = self.ring[np.arange(n)[:, None], numbers % capacity]     # the copy
            after = np.array(self.cursor)
            kept = intact(numbers, before, after, capacity)
            steps = entries["step"]
            cutoff = (steps[kept].max() if kept.any() else 0) - last
            # a sphere whose oldest copied entry is intact, not its oldest in the ring, and
            # still inside the last steps: older entries may belong to them too
            short = kept[:, 0] & (numbers[:, 0] > np.maximum(after - capacity + 1, 0)) & (steps[:, 0] > cutoff)
            if take >= capacity or not short.any():
                break
            take = min(capacity, 4 * take)
        sphere = np.broadcast_to(np.arange(n)[:, None], numbers.shape)[kept]
        return timeline_arrays(sphere, np.full(len(sphere), self.rank), entries[kept], self.phases, last)

    def hierarchy(self):
        """The Hierarchy this file describes (same ids, roles, groups, worker indices)."""
        from crystalline.engine.hierarchy import Hierarchy, Sphere
        t, spheres = self.table, []
        for i in range(len(t["id"])):
            parent = int(t["parent"][i])
            s = Sphere("control" if t["role"][i] != "worker" else "worker",
                       spheres[parent] if parent >= 0 else None, int(t["position"][i]))
            s.worker_index = int(t["worker_index"][i])
            if parent >= 0:
                spheres[parent].children.append(s)
            spheres.append(s)
        return Hierarchy(spheres[0])

    def process_alive(self) -> bool:
        """Is the process that wrote this file still running (same host: pid and start time)?

        The first call checks the pid's start time (psutil reads /proc/<pid>/stat, which costs
        more the more threads the process runs) and, where the OS has them, keeps a pidfd of that
        process: later calls only poll it (readable once the process has exited), no /proc read,
        and a reused pid cannot be mistaken for the writer."""
        if self.meta["host"] != socket.gethostname():
            return self.state in ("idle", "running", "paused")    # another machine: trust the state
        if self._exited:
            return False
        if self._exit_poll is None and not self._pidfd_tried:
            self._pidfd_tried = True
            self._exit_poll = self._open_pidfd()
        alive = self._started_matches() if self._exit_poll is None else not self._exit_poll.poll(0)
        self._exited = not alive
        return alive

    def _open_pidfd(self):
        """A poll object on a pidfd of the writing process, or None (no pidfd here)."""
        try:
            fd = os.pidfd_open(int(self.meta["pid"]))
        except (AttributeError, OSError):             # no pidfd on this OS, or no such process
            return None
        weakref.finalize(self, os.close, fd)
        if not self._started_matches():               # the pid is another process's now
            return None
        exit_poll = select.poll()
        exit_poll.register(fd, select.POLLIN)
        return exit_poll

    def _started_matches(self) -> bool:
        """The pid runs and started when the writer did (psutil: a read of /proc/<pid>/stat)."""
        import psutil
        pid = int(self.meta["pid"])
        try:
            return abs(_process_started(pid) - float(self.meta["process_started"])) < 1.0
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return psutil.pid_exists(pid)


def intact(numbers: np.ndarray, before: np.ndarray, after: np.ndarray, capacity: int) -> np.ndarray:
    """Which copied ring entries are intact: (n, k) bool for entry numbers `numbers` (n, k).

    before, after: (n,) cursors read before and after copying. Entry j of sphere i sits in slot
    j % capacity; writes during the copy (entries before[i] .. after[i], the last perhaps half
    done) overwrote the slots of entries up to after[i] - capacity, so entries
    [after[i] - capacity + 1, before[i]) are intact.
    """
    low = np.maximum(after - capacity + 1, 0)
    return (numbers >= low[:, None]) & (numbers < before[:, None])


def timeline_arrays(sphere, rank, entries, phases, last: int) -> dict[str, np.ndarray]:
    """The timeline contract: equal-length 1-D arrays sphere, rank, step, phase (names), start,
    end (time.time() seconds), of the steps after max(step) - last, sorted by start."""
    step = entries["step"].astype(np.int64)
    keep = step > (step.max() - last if len(step) else 0)
    order = np.argsort(entries["start"][keep], kind="stable")
    names = np.array(phases)
    return {"sphere": np.asarray(sphere, dtype=np.int64)[keep][order],
            "rank": np.asarray(rank, dtype=np.int64)[keep][order],
            "step": step[keep][order],
            "phase": names[entries["phase"][keep][order]],
            "start": entries["start"][keep][order].astype(np.float64),
            "end": entries["end"][keep][order].astype(np.float64)}


def merge_timelines(parts: list[dict]) -> dict[str, np.ndarray]:
    """Several timelines (e.g. one per rank) as one, sorted by start."""
    keys = ("sphere", "rank", "step", "phase", "start", "end")
    if not parts:
        return {k: np.zeros(0, dtype=str if k == "phase" else np.float64 if k in ("start", "end")
                            else np.int64) for k in keys}
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    order = np.argsort(merged["start"], kind="stable")
    return {k: v[order] for k, v in merged.items()}
