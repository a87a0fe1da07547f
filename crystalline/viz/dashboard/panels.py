"""The dashboard's components: each turns one Pull into the small JSON-able dict its view draws.

    panel = GroupLoadPanel()
    changed = panel.update(pull)        # pull: crystalline.viz.dashboard.sources.Pull
    panel.data                          # what the browser receives (a few KB at most)
    panel.extra                         # other traits this pull changed: {trait: dict or bytes}

A panel never changes the source and never draws: the ES module (dashboard.js) draws `data`
in the browser. `note` is set only while a panel has nothing to show, and says why. Per-sphere
and per-interval columns travel as packed little-endian records (TREE_RECORD, STREAM_RECORD:
binary buffers, no JSON); `unpack` turns them back into columns.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

import numpy as np

from crystalline.viz.dashboard import data as D
from crystalline.viz.style import TIME_COLUMNS, plural


# Packed records the browser reads with a DataView (dashboard.js: treeValues, streamIntervals).
TREE_RECORD = np.dtype([("tokens_per_s", "<f4"), ("ratio", "<f4"), ("bytes", "<f8"),
                        ("phase", "u1"), ("slowed", "u1")])            # per sphere, 18 bytes
STREAM_RECORD = np.dtype([("start_ms", "<f4"), ("end_ms", "<f4"), ("step", "<i4"),
                          ("row", "<u2"), ("phase", "u1"), ("pad", "u1")])   # per interval, 16 bytes


def pack(record: np.dtype, **columns) -> bytes:
    """Equal-length columns as packed records (the missing `pad` field left zero)."""
    n = len(next(iter(columns.values())))
    out = np.zeros(n, dtype=record)
    for name, values in columns.items():
        out[name] = values
    return out.tobytes()


def unpack(record: np.dtype, data: bytes) -> dict[str, list]:
    """Packed records back into columns (lists; float32 NaN as None): what the browser reads."""
    rows = np.frombuffer(data, dtype=record)
    out = {}
    for name in record.names:
        if name != "pad":
            values = rows[name].tolist()
            out[name] = [None if v != v else v for v in values] if rows[name].dtype.kind == "f" else values
    return out


def _round(values, digits: int = 4) -> list:
    """Floats for JSON (any shape): a few significant digits, None for NaN / inf."""
    v = np.asarray(values, dtype=float)
    finite = np.isfinite(v)
    magnitude = np.floor(np.log10(np.abs(np.where(finite & (v != 0), v, 1.0))))
    scale = 10.0 ** (digits - 1 - magnitude)
    rounded = np.where(finite, np.round(np.where(finite, v, 0.0) * scale) / scale, np.nan)
    out = rounded.astype(object)
    out[~finite] = None
    return out.tolist()


def group_load(pull) -> dict:
    """data.group_load of the pull's snapshot, computed once for all panels."""
    if "group_load" not in pull.shared:
        pull.shared["group_load"] = D.group_load(pull.snapshot)
    return pull.shared["group_load"]


def slowed_spheres(snap: dict) -> list[bool]:
    """Per sphere: slowed on purpose (a `slowdown` stats column above 1), else all False."""
    if "slowdown" not in snap:
        return [False] * len(snap["role"])
    return (np.asarray(snap["slowdown"], dtype=float) > 1.0).tolist()


class Panel:
    """A component: `update(pull)` refreshes `data`; True when what it draws changed."""

    name = "panel"

    def __init__(self):
        self.data: dict = {}
        self.extra: dict = {}           # other traits it feeds: {trait name: data}

    def update(self, pull) -> bool:
        self.extra = {}
        new = self.compute(pull)
        if new is None or new == self.data:
            return False
        self.data = new
        return True

    def compute(self, pull) -> dict | None:
        """The data to draw from this pull (None: keep the previous data)."""
        raise NotImplementedError


class StatusPanel(Panel):
    """The status line: state, step, loss, tokens/s, worker count, slowest group, errors."""

    name = "status"

    def __init__(self, describe):
        super().__init__()
        self.describe = describe         # () -> {title, kind, detail} of the source, now
        self._last = None
        self._val_loss = None

    def compute(self, pull):
        if pull.records:
            self._last = pull.records[-1]
        for r in pull.records:
            if D.finite(r.get("val_loss")) is not None:
                self._val_loss = D.finite(r["val_loss"])
        slowest = D.slowest_group(group_load(pull))
        last = self._last or {}
        return {**self.describe(), "state": pull.state, "step": pull.steps,
                "loss": D.finite(last.get("loss")), "val_loss": self._val_loss,
                "tokens_per_s": D.finite(last.get("tokens_per_s")),
                "workers": pull.workers, "workers_text": plural(pull.workers, "worker"),
                "spheres": len(pull.snapshot["role"]),
                "slowest": slowest, "slowest_text": f"slowest group g{slowest}" if slowest >= 0 else "",
                "error": pull.error}


class GroupLoadPanel(Panel):
    """12 bars: each top-level group's share of tokens/s against the fair share."""

    name = "groups"

    def compute(self, pull):
        load = group_load(pull)
        started = bool(load["tokens_per_s"].sum() > 0)
        return {"tokens_per_s": _round(load["tokens_per_s"]), "share": _round(load["share"]),
                "fair_share": load["fair_share"], "active": load["active"].tolist(),
                "workers": load["workers"].tolist(), "level": load["level"],
                "slowest": D.slowest_group(load),
                "note": "" if started or pull.steps else "waiting for the first step"}


class CurvesPanel(Panel):
    """Loss (and validation loss), tokens/s and memory over steps.

    `data` holds the curves up to some step (at most `points` points: older ones thinned, the
    last `tail` at full resolution) and is re-sent only every `rebase` new steps; the steps
    since then go in `extra["curves_recent"]` (a few points), so a refresh sends little.
    The browser draws data followed by recent.
    """

    name = "curves"
    KEYS = ("step", "loss", "tokens_per_s", "rss_mib", "cut")

    def __init__(self, history: int = 20_000, points: int = 600, tail: int = 200,
                 rebase: int = 50):
        super().__init__()
        self._columns = {k: deque(maxlen=history) for k in self.KEYS}
        self._val = {k: deque(maxlen=history) for k in ("step", "loss")}
        self._previous = None
        self._recent = None              # points appended since `data` was built (None: no pull yet)
        self.points, self.tail, self.rebase = points, tail, rebase
        self.data = self._payload(self._columns, self._val, 0)

    def compute(self, pull):
        if self._recent is None:                  # the first pull: no recent steps yet
            self._recent = 0
            self.extra["curves_recent"] = self._payload({k: [] for k in self.KEYS},
                                                        {"step": [], "loss": []}, pull.steps)
        if not pull.records:
            return None if self.data["note"] == "" or not pull.steps else \
                self._payload(self._columns, self._val, pull.steps)
        new = D.curve_points(pull.records, self._previous)
        self._previous = pull.records[-1]
        for k in self.KEYS:
            self._columns[k].extend(new[k])
        for step, val in zip(new["step"], new["val_loss"]):
            if val is not None:
                self._val["step"].append(step)
                self._val["loss"].append(val)
        self._recent += len(pull.records)
        if self._recent >= self.rebase or not self.data["step"] or \
                self._recent >= len(self._columns["step"]):
            self._recent = 0
            self.extra = {"curves_recent": self._payload({k: [] for k in self.KEYS},
                                                         {"step": [], "loss": []}, pull.steps)}
            return self._payload(self._columns, self._val, pull.steps)
        first = self.data["step"][-1]
        recent = {k: list(islice(reversed(self._columns[k]), self._recent))[::-1] for k in self.KEYS}
        val = {k: [v for s, v in zip(self._val["step"], self._val[k]) if s > first]
               for k in ("step", "loss")}
        self.extra = {"curves_recent": self._payload(recent, val, pull.steps)}
        return None

    def _payload(self, columns: dict, val: dict, steps: int) -> dict:
        n = len(columns["step"])
        if n > self.points:
            old = np.linspace(0, n - self.tail - 1, self.points - self.tail).astype(int)
            keep = np.unique(np.concatenate([old, np.arange(n - self.tail, n)]))
        else:
            keep = np.arange(n)
        cols = {k: list(columns[k]) for k in self.KEYS}
        out = {k: [cols[k][i] for i in keep] for k in self.KEYS}
        for k in ("loss", "tokens_per_s", "rss_mib"):
            out[k] = [None if v is None else float(f"{v:.5g}") for v in out[k]]
        out["val_step"], out["val_loss"] = list(val["step"]), list(val["loss"])
        out["note"] = "" if n or self._columns["step"] else (
            "no step records yet" if steps else "waiting for the first step")
        return out


class TimeSplitPanel(Panel):
    """Per sphere, milliseconds per step computing, waiting at Point A, at Point B, reducing,
    since the previous pull that saw a step (a new tree, after resize, starts from zero)."""

    name = "split"

    def __init__(self):
        super().__init__()
        self._baseline = None
        self._generation = None
        self._steps = 0
        self.data = {"labels": [], "ms": [], "steps": 0, "slowed": [], "groups": [],
                     "note": "waiting for the first step"}

    def compute(self, pull):
        snap = pull.snapshot
        if pull.generation != self._generation:
            self._generation, self._baseline, self._steps = pull.generation, None, 0
        self._steps += len(pull.records)
        if not self._steps:
            if self._baseline is None and pull.steps and not self.data["labels"]:
                self._steps = 1            # a run folder opened mid-run: split since the start
            else:
                return None
        seconds = D.time_split(self._baseline, snap, self._steps)
        if any((v < 0).any() for v in seconds.values()):    # a restarted run: its counters are new
            seconds = D.time_split(None, snap, self._steps)
        self._baseline = {c: np.asarray(snap[c], dtype=float).copy() for c in TIME_COLUMNS}
        steps, self._steps = self._steps, 0
        order = D.sphere_order(snap)
        labels = D.sphere_labels(snap)
        slowed = slowed_spheres(snap)
        ms = np.stack([seconds[c] for c in TIME_COLUMNS], axis=1)[order] * 1e3
        return {"labels": [labels[i] for i in order], "ms": _round(ms, 3),
                "steps": steps, "slowed": [slowed[i] for i in order],
                "groups": [int(snap["group"][i]) for i in order], "note": ""}


class TreePanel(Panel):
    """The sphere tree: `extra["tree_layout"]` (positions and the sphere table, sent only for a
    new tree) and `extra["tree_values"]` (per sphere, TREE_RECORD: tokens/s, its ratio to the
    fair share for the anchored colour scale, bytes, the phase it is in, slowed); `data` names
    the tree the values belong to."""

    name = "tree"

    def __init__(self):
        super().__init__()
        self._generation = None

    def compute(self, pull):
        snap = pull.snapshot
        if sum(len(h) for h in pull.hierarchies) != len(snap["role"]):
            return None                     # caught mid-resize: the next pull sees the new tree
        if pull.generation != self._generation:
            self._generation = pull.generation
            self.extra["tree_layout"] = {**D.cluster_tree_layout(pull.hierarchies),
                                         "generation": str(pull.generation)}
        phase = np.asarray(snap["phase"], dtype=float)
        self.extra["tree_values"] = pack(
            TREE_RECORD, tokens_per_s=snap["tokens_per_s"], ratio=D.throughput_ratio(snap),
            bytes=snap["bytes"], phase=np.where((phase >= 0) & (phase < len(D.PHASES)), phase, 0),
            slowed=slowed_spheres(snap))
        return {"generation": str(pull.generation), "spheres": len(snap["role"])}


class TaskStreamPanel(Panel):
    """The task stream: per sphere, its phase intervals over the last `steps` completed steps
    (read and sent once per step, not at every refresh): `data` the rows, labels and who Point B
    waited for; `extra["stream_intervals"]` the intervals (STREAM_RECORD, binary)."""

    name = "stream"

    def __init__(self, steps: int = 5):
        super().__init__()
        self.steps = steps
        self._seen = None
        self.data = {"rows": [], "intervals": 0, "note": "waiting for the first step"}

    def compute(self, pull):
        seen = (pull.steps, pull.generation)
        if seen == self._seen:
            return None
        timeline = pull.read_timeline()
        if isinstance(timeline, Exception):
            raise timeline
        self._seen = seen
        stream = D.task_stream(timeline, pull.snapshot, self.steps, before=pull.steps)
        self.extra["stream_intervals"] = pack(
            STREAM_RECORD, start_ms=stream.pop("start_ms"), end_ms=stream.pop("end_ms"),
            step=stream.pop("step"), row=stream.pop("row"), phase=stream.pop("phase"))
        stream["intervals"] = len(self.extra["stream_intervals"]) // STREAM_RECORD.itemsize
        stream["note"] = "" if stream["intervals"] else (
            "no phase timeline yet" if pull.steps else "waiting for the first step")
        stream["t0"] = round(stream["t0"], 3)
        return stream
