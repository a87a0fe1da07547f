"""Atomic file writes and the run folder's lock: every file crystalline writes goes through here.

    atomic_write_bytes(path, data)          # readers see the old file or the whole new one
    atomic_write_text(path, text); atomic_write_json(path, doc); atomic_write_npy(path, array)
    with atomic_path(path) as tmp:          # for writers that want a file name (safetensors)
        save_file(tensors, tmp)
    with RunLock(folder):                   # one process per run folder; others get RunFolderError
        ...

A write goes to `.<name>.tmp-<pid>-<thread>` in the same folder, is fsynced, renamed over
`path` (os.replace) and the folder is fsynced, so a crash, a kill -9 or a full disk leaves the
previous file intact. Temporary files left by a killed process (its PID no longer runs) are
removed by the next write of the same name. An OSError is raised as a WriteError: one line
naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
from pathlib import Path

import numpy as np

from crystalline.errors import RunFolderError, WriteError

_UMASK = os.umask(0o022)   # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)
LOCK_NAME = ".lock"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _pid_of(tmp_name: str, prefix: str) -> int | None:
    digits = tmp_name[len(prefix):].split("-")[0]
    return int(digits) if digits.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove `.<name>.tmp-<pid>...` files beside `path` whose process no longer runs."""
    path = Path(path)
    prefix, removed = _tmp_prefix(path), []
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for p in candidates:
        pid = _pid_of(p.name, prefix)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def fsync_folder(folder: str | Path) -> None:
    """Make a rename in `folder` durable where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, e: OSError) -> WriteError:
    reason = e.strerror or str(e)
    hint = {errno.ENOSPC: "free some space or write elsewhere",
            errno.EDQUOT: "free some space or write elsewhere",
            errno.EROFS: "the file system is read-only: write elsewhere",
            errno.EACCES: "make the folder writable or write elsewhere",
            errno.EPERM: "make the folder writable or write elsewhere",
            errno.ENOTDIR: "a path component is a file, not a folder: write elsewhere"}.get(
        e.errno, "check the folder and try again")
    return WriteError(e.errno, f"cannot write {path}: {reason}; {hint} (any previous {path.name} is intact)")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; when the block ends without error, fsync it and
    rename it to `path`. On any error the temporary file is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f"{_tmp_prefix(path)}{os.getpid()}-{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise _write_error(path, e) from None
        raise
    fsync_folder(path.parent)


def atomic_write(path: str | Path, write) -> Path:
    """Call `write(binary file object)` on a temporary file, then put it in place atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, doc, **dumps_kw) -> Path:
    return atomic_write_text(path, json.dumps(doc, **dumps_kw) + "\n")


def atomic_write_npy(path: str | Path, array: np.ndarray) -> Path:
    """`array` as a .npy file (never pickled)."""
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


class RunLock:
    """An exclusive lock on a run folder (fcntl.flock on `<folder>/.lock`, which holds the PID).

    A second process (or a second RunLock in this one) gets a RunFolderError naming the PID
    that holds it. The kernel drops the lock when the holder exits, however it exits.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as e:
            raise RunFolderError(f"cannot use run folder {self.folder}: {e.strerror or e}; "
                                 "choose a writable folder with --run-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(f"run folder {self.folder} is in use by process {holder} (it holds "
                                 f"{self.path}); wait for that run to end, or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)          # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
