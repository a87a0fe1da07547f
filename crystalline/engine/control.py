"""Control of a training run from another process, through small files in its run folder.

    write_request(run_dir, "pause")            # a watcher (Run.request); returns the sequence number
    write_request(run_dir, "resize", workers=12)
    reader = ControlReader(run_dir)            # the trainer, at start
    request = reader.poll()                    # between steps: a stat; a dict once per new request
    reader.reply(request, error=None)          # control-reply.json: what came of it

control.json holds one request: {"seq": n, "action": "pause" | "resume" | "stop" | "resize",
"workers": N (resize), "time": t}. Each request has a higher `seq` than the one before it; the
trainer acts on each seq once, ignores requests written before it started, and answers in
control-reply.json {"seq", "action", "ok", "error", "time"}. Both files are written
atomically. Two watchers writing at the same instant may take the same seq: the later file wins.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from crystalline.io import atomic_write_bytes
from crystalline.errors import RunError

CONTROL_FILE = "control.json"
REPLY_FILE = "control-reply.json"
ACTIONS = ("pause", "resume", "stop", "resize")


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None if there is none; RunError if it is not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RunError(f"{path} is not valid JSON ({e}); delete it, or write requests with "
                       "Run.request(...)") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} holds {type(data).__name__}, not a JSON object; delete it")
    return data


def write_request(run_dir, action: str, **kw) -> int:
    """Write a request into `run_dir`/control.json atomically; returns its sequence number."""
    if action not in ACTIONS:
        raise RunError(f"action {action!r} is not a control action; use one of {list(ACTIONS)}")
    allowed = {"workers"} if action == "resize" else set()
    if set(kw) - allowed:
        raise RunError(f"{action} takes {sorted(allowed) or 'no options'}, not {sorted(set(kw) - allowed)}")
    if action == "resize" and "workers" not in kw:
        raise RunError("resize needs workers=N (the new number of worker spheres)")
    path = Path(run_dir) / CONTROL_FILE
    request = {"seq": last_seq(run_dir) + 1, "action": action, **kw, "time": time.time()}
    atomic_write_bytes(path, (json.dumps(request) + "\n").encode("utf-8"))
    return request["seq"]


def last_seq(run_dir) -> int:
    """The highest sequence number in control.json and control-reply.json (0 if none): a damaged
    control file does not reset the count, so the trainer never mistakes a new request for old."""
    seqs = [0]
    for name in (CONTROL_FILE, REPLY_FILE):
        try:
            seq = (read_json(Path(run_dir) / name) or {}).get("seq")
        except RunError:
            continue
        if isinstance(seq, int) and not isinstance(seq, bool):
            seqs.append(seq)
    return max(seqs)


class ControlReader:
    """The trainer's side: a stat of control.json per poll; each new request is returned once."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / CONTROL_FILE
        self.reply_path = Path(run_dir) / REPLY_FILE
        self._stamp = self._stat()
        self.seq = last_seq(run_dir)         # requests written before the trainer started are old

    def _stat(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def poll(self) -> dict | None:
        """A request not seen before, or None. A malformed file is answered with an error reply."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            request = read_json(self.path)
        except RunError as e:
            self.reply({"seq": self.seq, "action": None}, error=str(e))   # keeps the count
            return None
        if request is None:
            return None
        seq = request.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self.reply({"seq": self.seq, "action": request.get("action")},
                       error=f"{self.path}: seq {seq!r} is not an integer; write requests with Run.request(...)")
            return None
        if seq <= self.seq:
            return None
        self.seq = seq
        if request.get("action") not in ACTIONS:
            self.reply(request, error=f"action {request.get('action')!r} is not one of {list(ACTIONS)}")
            return None
        return request

    def reply(self, request: dict, error: str | None = None) -> None:
        """Write control-reply.json: the request's seq and action, ok, and the error if any."""
        reply = {"seq": request.get("seq"), "action": request.get("action"), "ok": error is None,
                 "error": error, "time": time.time()}
        atomic_write_bytes(self.reply_path, (json.dumps(reply) + "\n").encode("utf-8"))
