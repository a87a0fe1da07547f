"""The one vocabulary of everything crystalline draws: colours, phase names, roles, labels.

    from crystalline.viz.style import GROUP_COLORS, PHASE_COLORS, ROLE_COLORS, role_of, sphere_label
    role_of(sphere)                     # "node_zero" | "control" | "worker"
    sphere_label("worker", 14, 3)       # "w3"  (N0, c<id>, w<worker index>)
    PHASE_COLORS["wait_b"]              # the colour of waiting at Point B, in every view

The static figures (viz/plots.py, viz/graph.py, figures/), the browser dashboard (its ES module
receives `browser_palette()`), the cluster view (viz/cluster.py) and the task stream all take
their colours and names from here, so a phase or a group looks the same everywhere.
"""

from __future__ import annotations

# One colour per symmetry group 0..11: tab10 with its grey (kept for Node Zero) swapped for
# plum, plus indigo and gold from tab20b.
GROUP_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                "#e377c2", "#7b4173", "#bcbd22", "#17becf", "#393b79", "#e7ba52")

# Roles of the nodes drawn: the spheres, and above them (MPI) the ranks and the cluster.
ROLES = ("node_zero", "control", "worker")
ROLE_LABELS = {"cluster": "cluster", "rank": "MPI rank", "node_zero": "Node Zero",
               "control": "control sphere", "worker": "worker sphere"}
ROLE_COLORS = {"cluster": "#444444", "rank": "#7f3fbf", "node_zero": "#d9d9d9",
               "control": "#4c72b0", "worker": "#dd8452"}
NODE_ZERO_COLOR = ROLE_COLORS["node_zero"]      # also the central sphere of the kissing figure
NO_DATA_COLOR = "#d0d0d0"

# The phases of a step, in the order they happen (the phase timeline's names).
PHASES = ("idle", "wait_a", "compute", "wait_b", "reduce", "update")
PHASE_LABELS = {"idle": "idle", "wait_a": "wait at Point A", "compute": "compute (forward + backward)",
                "wait_b": "wait at Point B", "reduce": "reduce", "update": "update (Node Zero)"}
PHASE_COLORS = {"idle": "#eeeeee", "wait_a": "#f2b134", "compute": "#4c72b0",
                "wait_b": "#e45756", "reduce": "#54a24b", "update": "#8172b3"}

# The cumulative seconds columns of the stats rows and the phase each one counts.
TIME_COLUMNS = {"compute_s": "compute", "wait_a_s": "wait_a", "wait_b_s": "wait_b",
                "reduce_s": "reduce"}
TIME_COLUMN_LABELS = {"compute_s": "compute (forward + backward)", "wait_a_s": "wait at Point A",
                      "wait_b_s": "wait at Point B", "reduce_s": "reduce (+ update on Node Zero)"}

# Load of a symmetry group against its fair share: ok >= LOW, low >= STRAGGLER, else straggler.
LOAD_LOW, LOAD_STRAGGLER = 0.9, 0.75
LOAD_COLORS = {"ok": "#2e7d32", "low": "#e65100", "straggler": "#c62828", "idle": "#bdbdbd",
               "waiting": "#bdbdbd"}
STATE_COLORS = {"running": "#2e7d32", "paused": "#e65100", "stopped": "#616161", "idle": "#616161",
                "finished": "#1565c0", "failed": "#c62828"}
SLOWED_COLOR = "#c62828"        # outline of a sphere slowed on purpose (a `slowdown` column)
# A sphere's tokens/s over the fair share -> colour, anchored at the fair share (1.0): half of
# it or less is red, 1.5x or more blue; a 2% spread stays within one shade of green.
THROUGHPUT_STOPS = ((0.5, "#c62828"), (0.75, "#ef6c00"), (1.0, "#43a047"), (1.5, "#1e88e5"))


def role_of(sphere) -> str:
    """The role name of a Sphere: "node_zero", "control" or "worker"."""
    return sphere.role_name


def sphere_label(role: str, sphere_id: int, worker_index: int) -> str:
    """N0 for Node Zero, w<worker index> for workers, c<id> for control spheres."""
    return "N0" if role == "node_zero" else f"w{worker_index}" if role == "worker" else f"c{sphere_id}"


def group_color(group: int) -> str:
    """A sphere's colour by its top-level group; Node Zero (group -1) grey."""
    return NODE_ZERO_COLOR if group < 0 else GROUP_COLORS[group % 12]


def plural(n: int, word: str) -> str:
    """'1 worker', '2 workers'."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def browser_palette() -> dict:
    """The palette as the dashboard's ES module receives it (one source of truth)."""
    return {"groups": list(GROUP_COLORS), "roles": ROLE_COLORS, "role_labels": ROLE_LABELS,
            "phases": list(PHASES), "phase_labels": PHASE_LABELS, "phase_colors": PHASE_COLORS,
            "time_columns": list(TIME_COLUMNS.values()), "load": LOAD_COLORS,
            "states": STATE_COLORS, "slowed": SLOWED_COLOR, "no_data": NO_DATA_COLOR,
            "throughput_stops": [list(stop) for stop in THROUGHPUT_STOPS]}
