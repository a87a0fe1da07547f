"""Reading run folders from anywhere: a terminal run, an MPI job, a notebook's, live or finished.

    run = crystalline.open_run("runs/small-20261130-1015")
    run.alive               # True while every process writing it (every MPI rank) is alive
    run.state               # "idle" | "running" | "paused" | "stopped" | "finished"
    run.snapshot()          # Trainer.stats.snapshot() keys, merged over ranks, plus "rank"
    run.history()           # the step records of metrics.jsonl (list of dicts)
    run.history(since=41)   # only those of steps after 41 (parsing only what was appended)
    run.timeline(last=50)   # phase intervals of the last 50 steps (Trainer.timeline's arrays)
    run.hierarchy           # rank 0's Hierarchy; run.hierarchies: one per rank
    run.request("pause")    # control.json: pause / resume / stop / resize(workers=N)
    run.reply               # control-reply.json: what came of the last request

A run folder holds telemetry-rank<r>.bin (one per process; see engine/telemetry.py), and,
from `crystalline train`, config.toml, metrics.jsonl and checkpoint.safetensors. Reading never
blocks or slows the writer: the telemetry files are memory-mapped read-only and copied; a
file replaced by a resize is reopened.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from crystalline.engine.control import REPLY_FILE, read_json, write_request
from crystalline.engine.telemetry import Telemetry, merge_timelines, telemetry_path
from crystalline.errors import RunError

RUN_FILES = ("config.toml", "metrics.jsonl")
MAX_RETRIES = 100      # reopen attempts when every read finds its file already replaced


def open_run(path) -> Run:
    """A Run over the run folder `path`; RunError if it is not one or its telemetry is unreadable."""
    return Run(path)


class Run:
    """One run folder, read from any process; see the module docstring."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunError(f"{self.path} is not a run folder: "
                           f"{'it is a file' if self.path.exists() else 'it does not exist'}; pass "
                           "the folder crystalline train printed (runs/<name>) or a Trainer's run_dir")
        self._files: dict[int, Telemetry] = {}
        if not self._ranks() and not any((self.path / name).exists() for name in RUN_FILES):
            raise RunError(f"{self.path} is not a run folder: it holds no telemetry-rank*.bin, "
                           f"config.toml or metrics.jsonl; pass the folder crystalline train "
                           "printed (runs/<name>) or a Trainer's run_dir")
        for rank in self._ranks():
            self._telemetry(rank)        # a foreign or truncated file is an error now
        self._records: list[dict] = []
        self._read_to = self._lines = 0  # bytes and lines of metrics.jsonl parsed so far
        self._metrics_id = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, {self.state}, {len(self._ranks())} rank(s))"

    # ------------------------------------------------------------------ telemetry files
    def _ranks(self) -> list[int]:
        ranks = []
        with os.scandir(self.path) as entries:        # (cheaper than Path.glob, called per read)
            for entry in entries:
                name = entry.name
                if name.startswith("telemetry-rank") and name.endswith(".bin") and name[14:-4].isdigit():
                    ranks.append(int(name[14:-4]))
        return sorted(ranks)

    def _telemetry(self, rank: int) -> Telemetry:
        tel = self._files.get(rank)
        if tel is None or tel.superseded:
            tel = self._files[rank] = Telemetry.open(telemetry_path(self.path, rank))
        return tel

    def _read(self, rank: int, read):
        """read(telemetry) on the current file of `rank`, again if the file was replaced meanwhile."""
        for _ in range(MAX_RETRIES):
            tel = self._telemetry(rank)
            result = read(tel)
            if not tel.superseded:
                return result
        raise RunError(f"{telemetry_path(self.path, rank)} was replaced {MAX_RETRIES} times while "
                       "being read; try again")

    def _require_telemetry(self) -> list[int]:
        ranks = self._ranks()
        if not ranks:
            raise RunError(f"{self.path} holds no telemetry (telemetry-rank*.bin): the run was made "
                           "without a run folder or by an older crystalline; only history() can be read")
        return ranks

    # ------------------------------------------------------------------ the contract
    @property
    def alive(self) -> bool:
        """True while every process writing this run (every MPI rank) is alive."""
        ranks = self._ranks()
        return bool(ranks) and all(self._telemetry(r).process_alive() for r in ranks)

    @property
    def state(self) -> str:
        """What the trainer published (rank 0's); a run whose process died while idle, running or
        paused is "stopped". "finished" once run(steps) completed all its steps."""
        ranks = self._ranks()
        if not ranks:
            return "finished" if (self.path / "checkpoint.safetensors").exists() else "stopped"
        state = self._telemetry(ranks[0]).state
        if state in ("idle", "running", "paused") and not self.alive:
            return "stopped"
        return state

    @property
    def started(self) -> float | None:
        """When the process writing this run (rank 0's) started, time.time() seconds; a run
        resumed in this folder is written by a new process. None without telemetry."""
        ranks = self._ranks()
        return float(self._telemetry(ranks[0]).meta["process_started"]) if ranks else None

    @property
    def controllable(self) -> bool:
        """True while the trainer is alive and acts on this folder's control file (MPI: rank 0
        reads it, and every rank acts on it between the same steps)."""
        ranks = self._ranks()
        return (bool(ranks) and ranks[0] == 0 and bool(self._telemetry(0).counter("reads_control"))
                and self.state in ("idle", "running", "paused"))

    def request(self, action: str, **kw) -> int:
        """Ask the trainer to "pause", "resume", "stop" or "resize" (workers=N per rank) between
        steps. Writes control.json atomically; returns the request's sequence number (see `reply`).
        """
        if not self.controllable:
            ranks = self._ranks()
            why = ("it has no telemetry" if not ranks
                   else f"it is {self.state}" if self.state not in ("idle", "running", "paused")
                   else "its trainer reads no control file (rank 0 of a run with a run folder does)")
            raise RunError(f"{self.path} cannot be controlled: {why}")
        return write_request(self.path, action, **kw)

    @property
    def reply(self) -> dict | None:
        """The trainer's answer to the last request: {seq, action, ok, error, time}, or None."""
        return read_json(self.path / REPLY_FILE)

    def snapshot(self) -> dict:
        """Trainer.stats.snapshot() keys (arrays concatenated over ranks, rank 0 first) plus
        "rank" (the rank of each row); "step" is the fewest steps any rank has completed and
        "generation" the sum of the ranks' generations (it changes when any rank resizes)."""
        parts = []
        for rank in self._require_telemetry():
            snap = self._read(rank, Telemetry.snapshot)
            snap["rank"] = np.full(len(snap["sphere_id"]), rank, dtype=np.int64)
            parts.append(snap)
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k not in ("step", "generation")}
        merged["step"] = min(p["step"] for p in parts)
        merged["generation"] = sum(p["generation"] for p in parts)
        return merged

    def timeline(self, last: int = 50) -> dict[str, np.ndarray]:
        """Phase intervals of the last `last` steps on every rank (Trainer.timeline's arrays)."""
        return merge_timelines([self._read(r, lambda tel: tel.timeline(last))
                                for r in self._require_telemetry()])

    @property
    def hierarchies(self) -> list:
        """The current Hierarchy of every rank, rank 0 first."""
        return [self._read(r, Telemetry.hierarchy) for r in self._require_telemetry()]

    @property
    def hierarchy(self):
        """Rank 0's (for one process: the run's) current Hierarchy."""
        return self.hierarchies[0]

    def history(self, since: int | None = None) -> list[dict]:
        """The records of metrics.jsonl (rank 0 writes them), oldest first; with `since` (a step),
        only the records of later steps (step > since), so a watcher asks for what is new.

        Read incrementally: only bytes added since the last call are parsed (the file offset is
        kept; a file replaced or cut back, as when a run resumes, is read again from its start).
        A last line still being written is left for the next call; a damaged line (a run killed
        mid-write, then resumed) is skipped with a warning naming it.
        """
        path = self.path / "metrics.jsonl"
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_ino, st.st_dev) != self._metrics_id or st.st_size < self._read_to:
                    self._records, self._read_to, self._lines = [], 0, 0
                    self._metrics_id = (st.st_ino, st.st_dev)
                f.seek(self._read_to)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1                 # complete lines only
        self._records.extend(self._parse(data[:end].split(b"\n")[:-1], path))
        self._read_to += end
        if since is None:
            return list(self._records)
        first = len(self._records)                  # steps only grow within one file: search back
        while first > 0 and self._records[first - 1]["step"] > since:
            first -= 1
        return self._records[first:]

    def _parse(self, lines: list[bytes], path: Path) -> list[dict]:
        """The records of complete lines: in one parse, or (if any line is damaged) line by line,
        skipping the damaged ones with a warning naming each."""
        if not lines:
            return []
        try:
            records = json.loads(b"[" + b",".join(lines) + b"]")
            if all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in records):
                self._lines += len(lines)
                return records
        except ValueError:
            pass
        records = []
        for line in lines:
            self._lines += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    raise ValueError("not a JSON object with an integer step")
            except ValueError as e:
                warnings.warn(f"{path}: skipped damaged line {self._lines} ({e})", stacklevel=3)
                continue
            records.append(record)
        return records
