"""What the views draw, computed from a stats snapshot, history records or a phase timeline.

Pure functions of plain data (no widgets, no drawing), shared by the browser dashboard and the
static figures, so a panel and its figure show the same numbers:

    group_load(snap)                    # 12 groups: tokens/s, share, fair share, level
    slowest_group(load)                 # -1 unless one group is clearly behind the others
    time_split(before, after, steps)    # per sphere, seconds per step in each part
    curve_points(records, previous)     # loss / tokens/s / memory with the spikes dropped
    throughput_ratio(snap)              # per sphere tokens/s over the fair share (colour scale)
    tree_layout(hierarchy)              # radial positions and the sphere table
    task_stream(timeline, snap)         # per-sphere phase intervals and who Point B waited for

`snap` is a `Trainer.stats.snapshot()` (or `Run.snapshot()`): per-sphere arrays role, group,
worker_index, tokens_per_s, compute_s, ... indexed by sphere id.
"""

from __future__ import annotations

import math

import numpy as np

from crystalline.viz.style import (LOAD_LOW, LOAD_STRAGGLER, PHASES, TIME_COLUMNS, role_of,
                                   sphere_label)

GROUPS = 12
PHASE_NAMES_SORTED = np.array(sorted(PHASES))                    # phase name -> index, vectorised
PHASE_OF_SORTED = np.array([PHASES.index(p) for p in PHASE_NAMES_SORTED])
NOISE = 0.05        # a group is "slowest" only when it runs this far below the median group


def ranks_of(snap: dict) -> np.ndarray:
    """The MPI rank of each row (a Run's snapshot has a "rank" column; a Trainer's is rank 0)."""
    return np.asarray(snap.get("rank", np.zeros(len(snap["role"]), dtype=np.int64)))


def sphere_order(snap: dict) -> np.ndarray:
    """Rows for a per-sphere axis: per rank, Node Zero, the controls by id, the workers by index."""
    is_worker = snap["role"] == "worker"
    return np.lexsort((snap["worker_index"], np.asarray(snap["sphere_id"]) * ~is_worker, is_worker,
                       ranks_of(snap)))


def sphere_labels(snap: dict) -> list[str]:
    """Per row: N0, c<id>, w<worker index> (crystalline.viz.style.sphere_label), prefixed
    r<rank>: when the snapshot holds several MPI ranks."""
    ranks = ranks_of(snap)
    prefix = len(set(ranks.tolist())) > 1
    return [(f"r{k}:" if prefix else "") + sphere_label(r, i, w)
            for k, i, r, w in zip(ranks, snap["sphere_id"], snap["role"], snap["worker_index"])]


# ---------------------------------------------------------------------- group load
def group_load(snap: dict) -> dict:
    """Each top-level symmetry group's tokens/s in the last step against the fair share.

    Returns tokens_per_s (12,), share (12,; sums to 1 once a step ran), fair_share (1 / active
    groups), active (12, bool: the group has workers), workers (12,: workers per group) and
    level (12 of ok / low / straggler / idle / waiting: share over fair share >= LOAD_LOW,
    >= LOAD_STRAGGLER, below; no workers; no step yet).
    """
    workers = snap["role"] == "worker"
    groups = snap["group"][workers]
    tokens_per_s = np.bincount(groups, weights=snap["tokens_per_s"][workers], minlength=GROUPS)[:GROUPS]
    counts = np.bincount(groups, minlength=GROUPS)[:GROUPS]
    active = counts > 0
    total = float(tokens_per_s.sum())
    share = tokens_per_s / total if total > 0 else np.zeros(GROUPS)
    fair = 1.0 / max(1, int(active.sum()))
    level = []
    for g in range(GROUPS):
        ratio = share[g] / fair
        level.append("idle" if not active[g] else "waiting" if total <= 0 else
                     "ok" if ratio >= LOAD_LOW else "low" if ratio >= LOAD_STRAGGLER else "straggler")
    return {"tokens_per_s": tokens_per_s, "share": share, "fair_share": fair, "active": active,
            "workers": counts, "level": level}


def slowest_group(load: dict, noise: float = NOISE) -> int:
    """The group furthest below the others, or -1: before any step, when fewer than two groups
    work, or when every group is within `noise` (relative) of the median group."""
    working = np.flatnonzero(load["active"] & (load["tokens_per_s"] > 0))
    if len(working) < 2:
        return -1
    tps = np.sort(load["tokens_per_s"][working])
    median = 0.5 * float(tps[(len(tps) - 1) // 2] + tps[len(tps) // 2])
    slowest = int(np.argmin(load["tokens_per_s"][working]))
    return int(working[slowest]) if tps[0] < (1 - noise) * median else -1


# ---------------------------------------------------------------------- time split
def time_split(before: dict | None, after: dict, steps: int) -> dict[str, np.ndarray]:
    """{stats seconds column: (spheres,) seconds per step} between two snapshots of one tree
    `steps` steps apart (before None: since the tree was built)."""
    steps = max(1, steps)
    return {c: (np.asarray(after[c], dtype=float)
                - (0.0 if before is None else np.asarray(before[c], dtype=float))) / steps
            for c in TIME_COLUMNS}


# ---------------------------------------------------------------------- curves
def is_discontinuity(record: dict, previous: dict | None) -> bool:
    """True when `record` follows a pause, resize or restart: the worker count changed, the step
    did not follow on, the clock went back (a new process) or time passed between the steps."""
    if previous is None:
        return False
    gap = record.get("time", 0.0) - previous.get("time", 0.0) - record.get("seconds", 0.0)
    return (record.get("workers") != previous.get("workers")
            or record["step"] != previous["step"] + 1
            or gap < -1.0 or gap > max(1.0, 3.0 * record.get("seconds", 0.0)))


def curve_points(records: list[dict], previous: dict | None = None) -> dict[str, list]:
    """Per record: step, loss, val_loss (None where not evaluated), tokens_per_s, rss_mib, and
    `cut` (True where the line breaks: the first record, and each one after a discontinuity).
    tokens_per_s is None where cut: a tree's first step includes starting its threads (and
    compiling), which is not throughput. previous: the record before records[0], if any."""
    out = {k: [] for k in ("step", "loss", "val_loss", "tokens_per_s", "rss_mib", "cut")}
    for r in records:
        cut = previous is None or is_discontinuity(r, previous)
        out["step"].append(int(r["step"]))
        out["loss"].append(finite(r.get("loss")))
        out["val_loss"].append(finite(r.get("val_loss")))
        out["tokens_per_s"].append(None if cut else finite(r.get("tokens_per_s")))
        out["rss_mib"].append(finite(r.get("rss", math.nan) / 2**20))
        out["cut"].append(cut)
        previous = r
    return out


def finite(x) -> float | None:
    """x as a float, or None when it is missing, NaN or infinite (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None


# ---------------------------------------------------------------------- tree
def phase_names(snap: dict) -> list[str]:
    """Per sphere, the phase it is in now (names of style.PHASES, which the engine's stats
    column indexes: engine.stats.PHASES is the same tuple)."""
    return [PHASES[int(i)] if 0 <= i < len(PHASES) else "idle"
            for i in np.asarray(snap["phase"], dtype=float)]


def throughput_ratio(snap: dict) -> np.ndarray:
    """Per sphere, its last step's tokens/s over the fair share (the mean over workers that
    report one); NaN for controls and workers without data. 1.0 is fair: the colour scale is
    anchored there, so a 2% spread stays 2% of it."""
    tps = np.asarray(snap["tokens_per_s"], dtype=float)
    workers = (snap["role"] == "worker") & (tps > 0)
    ratio = np.full(len(tps), np.nan)
    if workers.any():
        ratio[workers] = tps[workers] / tps[workers].mean()
    return ratio


def tree_layout(hierarchy, rank: int = 0, exact: bool = False) -> dict[str, list]:
    """The sphere table with radial positions: id, parent, role, level, position, group,
    worker_index, rank, label, x, y (Node Zero at the centre, level k on the circle of radius
    k; rounded to 4 decimals for the browser unless exact)."""
    from crystalline.viz.graph import radial_layout
    pos = radial_layout(hierarchy)
    spheres = list(hierarchy)
    digits = None if exact else 4
    return {"id": [s.id for s in spheres],
            "parent": [-1 if s.parent is None else s.parent.id for s in spheres],
            "role": [role_of(s) for s in spheres], "level": [s.level for s in spheres],
            "position": [s.position for s in spheres],
            "group": [s.group for s in spheres], "worker_index": [s.worker_index for s in spheres],
            "rank": [rank] * len(spheres),
            "label": [sphere_label(role_of(s), s.id, s.worker_index) for s in spheres],
            "x": [round(pos[s.id][0], digits) if digits else pos[s.id][0] for s in spheres],
            "y": [round(pos[s.id][1], digits) if digits else pos[s.id][1] for s in spheres]}


def cluster_tree_layout(hierarchies: list) -> dict[str, list]:
    """tree_layout of every rank's tree side by side (rank k shifted right), rows in snapshot
    order (rank 0's spheres by id, then rank 1's, ...): `parent` indexes these rows; extent
    is (x min, x max, y min, y max) for the view to fit."""
    out: dict[str, list] = {}
    shift, first_row = 0.0, 0
    for rank, h in enumerate(hierarchies):
        part = tree_layout(h, rank)
        radius = max(1, h.depth) + 0.6
        part["x"] = [round(x + shift + radius, 4) for x in part["x"]]
        part["parent"] = [p + first_row if p >= 0 else -1 for p in part["parent"]]
        if len(hierarchies) > 1:
            part["label"] = [f"r{rank}:{label}" for label in part["label"]]
        for key, values in part.items():
            out.setdefault(key, []).extend(values)
        shift += 2 * radius
        first_row += len(h)
    depth = max((max(1, h.depth) for h in hierarchies), default=1) + 0.6
    out["extent"] = [0.0, shift, -depth, depth]
    return out


# ---------------------------------------------------------------------- task stream
def task_stream(timeline: dict, snap: dict, steps: int = 5, before: int | None = None) -> dict:
    """The last `steps` steps of a phase timeline (those < `before`, if given) as Gantt rows.

    timeline: equal-length arrays sphere, rank, step, phase (names of style.PHASES), start, end
    (seconds); the in-flight step is left out by passing before=steps done. Returns rows
    (snapshot rows: per rank Node Zero, controls, workers), labels, t0 (seconds); per interval,
    arrays row (index into rows), phase (index into PHASES), step, start_ms, end_ms (from t0);
    and waited_for: per step, the sphere that reached Point B last (everyone else waited for it)
    with how long the first arrival waited, in ms.
    """
    order = [int(i) for i in sphere_order(snap)]
    labels = sphere_labels(snap)
    spheres = 1 + int(np.max(snap["sphere_id"], initial=0))
    keys = ranks_of(snap) * spheres + np.asarray(snap["sphere_id"])     # (rank, id) -> one int
    by_key = np.argsort(keys)
    none = np.zeros(0, dtype=np.int64)
    empty = {"rows": order, "labels": [labels[i] for i in order], "t0": 0.0, "row": none,
             "phase": none, "step": none, "start_ms": none.astype(float), "end_ms": none.astype(float),
             "waited_for": []}
    if timeline is None or not len(timeline.get("step", ())):
        return empty
    step = np.asarray(timeline["step"], dtype=np.int64)
    rank = np.asarray(timeline.get("rank", np.zeros(len(step))), dtype=np.int64)
    done = step < before if before is not None else np.ones(len(step), dtype=bool)
    if not done.any():
        return empty
    keep = done & (step >= step[done].max() - steps + 1)
    wanted = rank[keep] * spheres + np.asarray(timeline["sphere"], dtype=np.int64)[keep]
    at = np.minimum(np.searchsorted(keys[by_key], wanted), len(keys) - 1)
    rows = by_key[at]                                 # the snapshot row of each interval
    known = (keys[rows] == wanted) & (np.asarray(timeline["sphere"])[keep] < spheres)
                                                      # else: not in the tree drawn (a resize)
    keep_idx = np.flatnonzero(keep)[known]
    snap_row, step = rows[known], step[keep_idx]
    phase = np.asarray(timeline["phase"])[keep_idx]
    start = np.asarray(timeline["start"], dtype=float)[keep_idx]
    end = np.asarray(timeline["end"], dtype=float)[keep_idx]
    if not len(snap_row):
        return empty
    display_row = np.empty(len(order), dtype=np.int64)
    display_row[order] = np.arange(len(order))
    t0 = float(start.min())
    waited_for = []
    for s in np.unique(step):
        at_b = (step == s) & (phase == "wait_b")
        if at_b.sum() >= 2:
            arrivals = start[at_b]
            last = int(np.argmax(arrivals))
            waited_for.append({"step": int(s), "sphere": int(snap_row[at_b][last]),
                               "label": labels[int(snap_row[at_b][last])],
                               "ms": round(1e3 * float(arrivals.max() - arrivals.min()), 1)})
    phase_index = np.searchsorted(PHASE_NAMES_SORTED, phase)
    return {"rows": order, "labels": [labels[i] for i in order], "t0": t0,
            "row": display_row[snap_row],
            "phase": np.where(PHASE_NAMES_SORTED[np.minimum(phase_index, len(PHASES) - 1)] == phase,
                              PHASE_OF_SORTED[np.minimum(phase_index, len(PHASES) - 1)], 0),
            "step": step, "start_ms": 1e3 * (start - t0), "end_ms": 1e3 * (end - t0),
            "waited_for": waited_for}
