"""The sphere hierarchy drawn radially: Node Zero in the middle, level k on the ring of radius k.

    from crystalline.viz.graph import radial_layout, draw_hierarchy
    pos = radial_layout(h)                                  # {sphere id: (x, y)}
    fig = draw_hierarchy(h)                                 # coloured by symmetry group
    fig = draw_hierarchy(h, color_by="throughput", values={sphere_id: tokens_per_s, ...})
    fig.savefig("hierarchy.png")

Each subtree owns an angular wedge proportional to its number of workers (leaves), children
split their parent's wedge in position order, clockwise from 12 o'clock, rotated so group 0
sits at the top. Object API only (Figure + Agg canvas, no pyplot): draws from any thread.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from crystalline.engine.hierarchy import Hierarchy
from crystalline.errors import ConfigError
from crystalline.viz.style import (NO_DATA_COLOR, ROLE_COLORS, ROLE_LABELS, group_color, plural,
                                   role_of, sphere_label)

COLOR_MODES = ("group", "throughput", "memory", "role")
MARKERS = {"node_zero": "*", "control": "h", "worker": "o"}
LEVEL_DIAMETER_PT = (34, 22, 13, 9, 7)   # marker size by level, before shrinking to fit a ring


def radial_wedges(h: Hierarchy) -> dict[int, tuple[float, float]]:
    """{sphere id: (start, stop)} in turns, clockwise from 12 o'clock; stop - start is the
    sphere's share of all workers. Node Zero owns one full turn."""
    leaves: dict[int, int] = {}
    for s in reversed(h.spheres):                        # children have larger ids
        leaves[s.id] = 1 if s.role == "worker" else sum(leaves[c.id] for c in s.children)
    first = min(h.node_zero.children, key=lambda c: c.position)
    offset = -0.5 * leaves[first.id] / leaves[0]         # centre group 0 on 12 o'clock
    wedges = {0: (offset, offset + 1.0)}
    for s in h.spheres:                                  # parents before children
        start, stop = wedges[s.id]
        span = stop - start
        for c in sorted(s.children, key=lambda c: c.position):
            width = span * leaves[c.id] / leaves[s.id]
            wedges[c.id] = (start, start + width)
            start += width
    return wedges


def radial_layout(h: Hierarchy) -> dict[int, tuple[float, float]]:
    """{sphere id: (x, y)}: level k on the circle of radius k, each sphere mid-wedge."""
    pos = {}
    for sphere_id, (start, stop) in radial_wedges(h).items():
        level = h.spheres[sphere_id].level
        turn = math.pi * (start + stop)                  # 2 pi * middle of the wedge
        pos[sphere_id] = (level * math.sin(turn), level * math.cos(turn))
    return pos


def _values_by_id(h: Hierarchy, values, color_by: str) -> dict[int, float]:
    if values is None:
        unit = "tokens/s" if color_by == "throughput" else "bytes"
        raise ConfigError(f"color_by={color_by!r} needs values: pass values={{sphere id: {unit}}} "
                          "(e.g. from the trainer's stats snapshot) or an array indexed by id")
    if not hasattr(values, "items"):
        array = np.asarray(values, dtype=float).ravel()
        if len(array) != len(h):
            raise ConfigError(f"values has {len(array)} entries but the hierarchy has {len(h)} "
                              "spheres; pass one per sphere id or a dict {sphere id: value}")
        values = dict(enumerate(array))
    unknown = sorted((k for k in values
                      if not (isinstance(k, (int, np.integer)) and 0 <= k < len(h))), key=str)
    if unknown:
        raise ConfigError(f"values has keys {unknown[:5]} that are not sphere ids 0..{len(h) - 1}")
    return {int(k): float(v) for k, v in values.items() if np.isfinite(v)}


def _memory_scale(largest: float) -> tuple[float, str]:
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if largest >= 1024 ** power:
            return 1024.0 ** power, unit
    return 1.0, "bytes"


def _ring_gap(pos: dict, ids: list[int]) -> float:
    """Smallest distance between neighbours on one ring (inf for a lone sphere)."""
    if len(ids) < 2:
        return math.inf
    angles = np.sort([math.atan2(*pos[i]) for i in ids])
    gaps = np.diff(np.append(angles, angles[0] + 2 * math.pi))
    return float(gaps.min()) * math.hypot(*pos[ids[0]])


def draw_hierarchy(h: Hierarchy, ax=None, color_by: str = "group", values=None,
                   title: str | None = None, labels=None) -> Figure:
    """Draw the tree radially; returns the Figure.

    color_by: "group" (the 12-colour palette shared with the kissing figure), "role", or
        "throughput" / "memory" with `values` ({sphere id: tokens/s or bytes}, or an array
        indexed by id; spheres without a finite value are grey) and a colorbar.
    labels: None = automatic (Node Zero, level 1, and the outer rings where text fits),
        True = also the crowded outer rings, False = none, or {sphere id: text}.
    Node Zero is a star, controls hexagons, workers circles; ax: an existing 2-D axes.
    """
    if color_by not in COLOR_MODES:
        raise ConfigError(f"color_by={color_by!r} is not known; use one of {COLOR_MODES}")
    if values is not None and color_by in ("group", "role"):
        raise ConfigError(f"values are drawn only with color_by='throughput' or 'memory', "
                          f"not {color_by!r}; pass one of those or drop values")
    if ax is None:
        fig = Figure(figsize=(8, 8.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    fig = ax.figure
    pos = radial_layout(h)
    extent = h.depth + 0.55
    ax.set(xlim=(-extent, extent), ylim=(-extent, extent), aspect="equal")
    ax.set_axis_off()

    # Marker sizes: shrink a level's markers until neighbours on its ring do not touch.
    width_pt = ax.get_position().width * fig.get_figwidth() * 72
    pt_per_unit = width_pt / (2 * extent) * (0.85 if color_by in ("throughput", "memory") else 1)
    by_level: dict[int, list[int]] = {}
    for s in h.spheres:
        by_level.setdefault(s.level, []).append(s.id)
    diameter = {level: min(LEVEL_DIAMETER_PT[min(level, len(LEVEL_DIAMETER_PT) - 1)],
                           0.8 * _ring_gap(pos, ids) * pt_per_unit)
                for level, ids in by_level.items()}

    # Colours.
    norm = cmap = None
    if color_by == "group":
        color = {s.id: group_color(s.group) for s in h}
    elif color_by == "role":
        color = {s.id: ROLE_COLORS[role_of(s)] for s in h}
    else:
        data = _values_by_id(h, values, color_by)
        if color_by == "throughput":
            scale, bar_label, cmap = 1.0, "throughput (tokens/s)", "viridis"
        else:
            scale, unit = _memory_scale(max(map(abs, data.values()), default=0.0))
            bar_label, cmap = f"memory ({unit})", "plasma"
        data = {k: v / scale for k, v in data.items()}
        # Anchored at 0: a 2% spread between spheres stays a 2% change of colour.
        low, high = min(0.0, *data.values()), max(0.0, *data.values())
        norm = Normalize(low, high if high > low else low + 1)
        colormap = colormaps[cmap]
        color = {s.id: colormap(norm(data[s.id])) if s.id in data else NO_DATA_COLOR for s in h}

    # Edges, then one scatter per role so markers differ; gid names what was drawn.
    # A ring too crowded for separate markers becomes a band of touching dots, without edges.
    crowded = {level for level, d in diameter.items() if d < 2.5}
    diameter.update({level: 2.5 for level in crowded})
    segments = [(pos[s.parent.id], pos[s.id]) for s in h
                if s.parent is not None and s.level not in crowded]
    dense = len(h) > 400
    ax.add_collection(LineCollection(segments, colors="#9a9a9a", alpha=0.3 if dense else 0.6,
                                     linewidths=0.4 if dense else 0.9, zorder=1))
    kinds = {"node_zero": [h.node_zero],
             "control": [s for s in h.controls if not s.is_node_zero], "worker": h.workers}
    for kind, spheres in kinds.items():
        if not spheres:
            continue
        xy = np.array([pos[s.id] for s in spheres])
        sizes = [(diameter[s.level] * (1.6 if kind == "node_zero" else 1.0)) ** 2 for s in spheres]
        ax.scatter(xy[:, 0], xy[:, 1], s=sizes, marker=MARKERS[kind],
                   c=[color[s.id] for s in spheres], edgecolors="#333333",
                   linewidths=[0.8 if diameter[s.level] >= 8 else 0.3 if diameter[s.level] >= 4
                               else 0.0 for s in spheres],
                   zorder=3 if kind == "worker" else 4, gid=f"spheres-{kind.replace('_', '-')}")

    _draw_labels(ax, h, pos, diameter, pt_per_unit, labels, color)
    if norm is not None:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, shrink=0.7, pad=0.02, label=bar_label)
    handles = [Line2D([], [], linestyle="", marker=MARKERS[role], markersize=ms,
                      color=ROLE_COLORS[role] if color_by == "role" else "#bbbbbb",
                      markeredgecolor="#333333", label=ROLE_LABELS[role])
               for role, ms in (("node_zero", 14), ("control", 10), ("worker", 8))]
    if norm is not None and len(data) < len(h):
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=8, color=NO_DATA_COLOR,
                              label="no data"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles),
              frameon=False, fontsize=9, handletextpad=0.3, columnspacing=1.2)
    if title is None:
        by = {"group": "coloured by symmetry group (position under Node Zero)",
              "role": "coloured by role", "throughput": "coloured by throughput",
              "memory": "coloured by memory"}[color_by]
        title = f"{plural(len(h.workers), 'worker')}, {len(h)} spheres, depth {h.depth}: {by}"
    ax.set_title(title, fontsize=11)
    return fig


def _text_color(background) -> str:
    """Black on light markers, white on dark ones (WCAG relative luminance)."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
               for c in to_rgb(background))
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.28 else "white"


def _draw_labels(ax, h: Hierarchy, pos, diameter, pt_per_unit, labels, color):
    if labels is False:
        return
    if labels is None or labels is True:
        texts = {0: "N0"}
        for s in h.node_zero.children:
            texts[s.id] = (sphere_label(role_of(s), s.id, s.worker_index) if s.is_worker
                           else f"g{s.group}")
        for s in h.workers:                              # outer rings: only where text fits
            gap_pt = diameter[s.level] / 0.8
            if s.level > 1 and (labels is True or gap_pt >= 9.5):
                texts[s.id] = str(s.worker_index)
    else:
        texts = {int(k): str(v) for k, v in labels.items()}
    for sphere_id, text in texts.items():
        s = h.spheres[sphere_id]
        x, y = pos[sphere_id]
        d = diameter[s.level]
        if s.level <= 1 and d >= 16:                     # on the marker
            ax.text(x, y, text, ha="center", va="center", fontsize=8 if s.level else 7,
                    fontweight="bold", color=_text_color(color[sphere_id]), zorder=5)
        else:                                            # just outside, reading outward
            angle = math.degrees(math.atan2(y, x))
            r = math.hypot(x, y) + 0.6 * d / pt_per_unit
            flip = 90 < angle % 360 < 270
            ax.text(r * math.cos(math.radians(angle)), r * math.sin(math.radians(angle)), text,
                    rotation=angle + 180 if flip else angle, rotation_mode="anchor",
                    ha="right" if flip else "left", va="center",
                    fontsize=float(np.clip(d / 1.25, 4.5, 8)), color="#222222", zorder=5)
