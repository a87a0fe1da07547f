"""A run folder belongs to one run: refused when it holds another, locked while training.

    folder = open_run_folder(path, resume_from=None, overwrite=False)   # RunFolderError if taken
    folder.clear()                      # --overwrite: drop the old run's files (after the start)
    folder.trim_metrics(step)           # --resume: keep exactly the checkpoint's steps
    folder.close()                      # release the lock; a folder this run made and left empty goes

A folder "holds a run" when it has a checkpoint.safetensors or a non-empty metrics.jsonl (a
start that completed no step leaves only config.toml, and the folder is used again).
A new run is refused there (continue it with --resume, replace it with --overwrite); a resume
may write only into the folder of its own checkpoint or into a folder that holds no run. The
lock (crystalline.io.RunLock) makes a second process on the same folder fail at once, naming
the PID that holds it.
"""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path

from crystalline.errors import RunFolderError
from crystalline.io import RunLock, atomic_write_text

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
RUN_FILES = (CHECKPOINT, CONFIG, METRICS)


def resume_paths(resume: str | Path) -> tuple[Path, Path]:
    """(checkpoint, its run folder) for `--resume RUN_DIR` or `--resume CHECKPOINT`."""
    resume = Path(resume)
    if not resume.exists():
        raise RunFolderError(f"--resume {resume}: no such run folder or checkpoint file; pass a run folder "
                             "written by crystalline train (e.g. runs/NAME) or its checkpoint.safetensors")
    if resume.is_dir():
        if not (resume / CHECKPOINT).is_file():
            raise RunFolderError(f"--resume {resume}: the folder has no {CHECKPOINT} to continue from; "
                                 "pass a run folder written by crystalline train, or a checkpoint file")
        return resume / CHECKPOINT, resume
    return resume, resume.parent


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


class RunFolder:
    """An open, locked run folder."""

    def __init__(self, path: Path, lock: RunLock, created: bool = False):
        self.path, self.lock, self.created = path, lock, created
        self.checkpoint, self.config, self.metrics = (path / n for n in RUN_FILES)

    def clear(self) -> None:
        """Remove the previous run's files (--overwrite)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def trim_metrics(self, step: int) -> int:
        """Rewrite metrics.jsonl, atomically, with only the records of steps 0..step-1 (each once).

        Lines written after the checkpoint (a kill, a crash) and a torn last line are dropped.
        Returns the number of records kept.
        """
        if not self.metrics.is_file():
            return 0
        kept: dict[int, str] = {}
        for line in self.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                s = record["step"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(s, int) and 0 <= s < step:
                kept[s] = line
        atomic_write_text(self.metrics, "".join(kept[s] + "\n" for s in sorted(kept)))
        return len(kept)

    def close(self) -> None:
        """Release the lock; remove the folder if this run created it and a failed start left it empty."""
        self.lock.release()
        if self.created and {p.name for p in self.path.iterdir()} <= {self.lock.path.name}:
            with contextlib.suppress(OSError):
                self.lock.path.unlink()
                self.path.rmdir()


def _unusable(path: Path, e: OSError) -> RunFolderError:
    why = {errno.ENOTDIR: "a part of the path is a file, not a folder",
           errno.EEXIST: "it is a file, not a folder",
           errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.ENOSPC: "the disk is full"}.get(e.errno, e.strerror or str(e))
    return RunFolderError(f"cannot use run folder {path}: {why}; choose a writable folder with --run-dir")


def open_run_folder(path: str | Path, resume_from: Path | None = None, overwrite: bool = False) -> RunFolder:
    """Create and lock `path` for a run; RunFolderError (one line) if it cannot or must not be used.

    resume_from: the checkpoint a resumed run starts from (None for a new run).
    """
    path = Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unusable(path, e) from None
    lock = RunLock(path).acquire()
    try:
        held = [n for n in (CHECKPOINT, METRICS) if (path / n).is_file() and (path / n).stat().st_size]
        resuming_here = resume_from is not None and _same(resume_from.parent, path)
        if resuming_here and overwrite:
            raise RunFolderError(f"--overwrite with --resume {resume_from} would delete the checkpoint "
                                 "being resumed; drop --overwrite to continue the run in its folder")
        if held and not overwrite and not resuming_here:
            how = f"--resume {path}" if resume_from is None else f"--resume {resume_from} without --run-dir"
            raise RunFolderError(f"run folder {path} holds another run ({', '.join(held)}); continue it "
                                 f"with {how}, replace it with --overwrite, or choose another --run-dir")
    except BaseException:
        lock.release()
        raise
    return RunFolder(path, lock, created)
