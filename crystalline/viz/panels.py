"""The components of the live dashboard: each pulls, computes the data it would draw, then draws.

    panel = GroupLoadPanel()
    panel.update(snapshot, new_records)   # snapshot: the trainer's stats.snapshot() plus the
    panel.data                            #   Dashboard's "generation" and "hierarchy" entries
    panel.widget                          # the ipywidgets view, set by render()

`update` always refreshes `data` (cheap NumPy); `render` runs only when the data changed and at
most once every `min_interval` seconds (and at most a fifth of the time), so the matplotlib
figures (crystalline.viz.figure_panels) redraw about once a second while the bars and labels
here keep up with the monitor thread. Panels never change the trainer and never raise into it:
the Dashboard logs what a panel raises and carries on with the others.
"""

from __future__ import annotations

import html
import math
import time

import ipywidgets as widgets
import numpy as np

from crystalline.engine.stats import group_tokens_per_s, slowest_group
from crystalline.viz.geometry import GROUP_COLORS, NODE_ZERO_COLOR

LOAD_STYLE = {"ok": "success", "low": "warning", "straggler": "danger", "idle": "", "waiting": ""}
LOW, STRAGGLER = 0.9, 0.75     # a group's share / fair share below these: orange, then red


def human(x: float, unit: str = "") -> str:
    """12345 -> '12.3k': short numbers for labels."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def sphere_order(snap: dict) -> np.ndarray:
    """Sphere ids for a per-sphere axis: Node Zero, the controls by id, the workers by index."""
    is_worker = snap["role"] == "worker"
    return np.lexsort((snap["worker_index"], snap["sphere_id"] * ~is_worker, is_worker))


def sphere_labels(snap: dict) -> list[str]:
    """N0, c<id> for controls, w<worker_index> for workers (as Hierarchy.label)."""
    return ["N0" if r == "node_zero" else f"w{w}" if r == "worker" else f"c{i}"
            for i, (r, w) in enumerate(zip(snap["role"], snap["worker_index"]))]


def sphere_colors(snap: dict) -> list[str]:
    return [NODE_ZERO_COLOR if g < 0 else GROUP_COLORS[g % 12] for g in snap["group"]]


class Panel:
    """A component: `update(snapshot, records)` computes `data`, then `render` draws it."""

    name = "panel"
    min_interval = 0.0     # seconds between renders, and at least 4x the last render took
                           # (drawing takes at most a fifth of the time); 0: every change

    def __init__(self):
        self.data: dict = {}
        self.renders = 0
        self._dirty = True
        self._last_render = -math.inf
        self.render_seconds = 0.0

    def update(self, snapshot: dict, records: list[dict]) -> None:
        """Compute, then render if due: `ingest` followed by `draw_if_due`."""
        self.ingest(snapshot, records)
        self.draw_if_due()

    def ingest(self, snapshot: dict, records: list[dict]) -> None:
        if self.compute(snapshot, records):
            self._dirty = True

    @property
    def due(self) -> bool:
        """The data changed since the last render and min_interval has passed."""
        wait = self.min_interval and max(self.min_interval, 4 * self.render_seconds)
        return self._dirty and time.monotonic() - self._last_render >= wait

    @property
    def last_render(self) -> float:
        return self._last_render

    def draw_if_due(self, force: bool = False) -> bool:
        """Render if due (force: if the data changed at all); True when it rendered."""
        if not (self._dirty if force else self.due):
            return False
        self._dirty = False
        self._last_render = time.monotonic()
        self.render()
        self.render_seconds = time.monotonic() - self._last_render
        self.renders += 1
        return True

    def compute(self, snapshot: dict, records: list[dict]) -> bool:
        """Refresh self.data from the new pull; True when something it draws changed."""
        raise NotImplementedError

    def render(self) -> None:
        raise NotImplementedError


class GroupLoadPanel(Panel):
    """12 bars: each top-level group's share of tokens/s, coloured against the fair share.

    data: tokens_per_s (12,), share (12, sums to 1 once a step ran), fair_share (1 / active
    groups), active (12, bool: the group has workers), level (12: ok / low / straggler / idle /
    waiting), slowest (group, -1 before any step). A bar is full at twice the fair share.
    """

    name = "group load"

    def __init__(self):
        super().__init__()
        self.bars, self.values, rows = [], [], []
        for g in range(12):
            swatch = widgets.HTML(
                f'<span style="display:inline-block;width:11px;height:11px;border-radius:6px;'
                f'background:{GROUP_COLORS[g]};margin-right:5px;vertical-align:middle"></span>'
                f'<span style="font-family:monospace">g{g}</span>',
                layout=widgets.Layout(width="56px"))
            bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0,
                                        layout=widgets.Layout(width="170px", height="18px"))
            value = widgets.HTML("", layout=widgets.Layout(width="150px"))
            self.bars.append(bar)
            self.values.append(value)
            rows.append(widgets.HBox([swatch, bar, value], layout=widgets.Layout(height="24px")))
        self.data = dict(tokens_per_s=np.zeros(12), share=np.zeros(12), fair_share=1.0,
                         active=np.zeros(12, dtype=bool), level=["idle"] * 12, slowest=-1)
        self.caption = widgets.HTML("")
        title = widgets.HTML("<div style='font-size:14px;font-weight:bold;color:#333'>Load per "
                             "symmetry group</div><div style='color:#777;font-size:90%;"
                             "line-height:1.3'>share of tokens/s; a bar is half full at the fair "
                             "share</div>")
        self.widget = widgets.VBox([title, *rows, self.caption],
                                   layout=widgets.Layout(width="380px", padding="0 10px 0 0"))

    def compute(self, snapshot, records) -> bool:
        tokens_per_s = group_tokens_per_s(snapshot)
        workers = snapshot["role"] == "worker"
        active = np.bincount(snapshot["group"][workers], minlength=12)[:12] > 0
        total = tokens_per_s.sum()
        share = tokens_per_s / total if total > 0 else np.zeros(12)
        fair = 1.0 / max(1, active.sum())
        level = []
        for g in range(12):
            if not active[g]:
                level.append("idle")
            elif total <= 0:
                level.append("waiting")
            else:
                ratio = share[g] / fair
                level.append("ok" if ratio >= LOW else "low" if ratio >= STRAGGLER else "straggler")
        candidates = np.flatnonzero(active & (tokens_per_s > 0))
        slowest = int(candidates[np.argmin(tokens_per_s[candidates])]) if total > 0 else -1
        old = self.data
        self.data = dict(tokens_per_s=tokens_per_s, share=share, fair_share=fair, active=active,
                         level=level, slowest=slowest)
        return self.renders == 0 or not (np.array_equal(old["tokens_per_s"], tokens_per_s)
                                         and np.array_equal(old["active"], active))

    def render(self) -> None:
        d = self.data
        top = 2.0 * d["fair_share"]
        for g in range(12):
            bar, level = self.bars[g], d["level"][g]
            bar.max = top
            bar.value = float(min(d["share"][g], top))
            bar.bar_style = LOAD_STYLE[level]
            if level == "idle":
                text = "<span style='color:#aaa'>no workers</span>"
            elif level == "waiting":
                text = "<span style='color:#aaa'>waiting</span>"
            else:
                color = {"ok": "#2e7d32", "low": "#e65100", "straggler": "#c62828"}[level]
                text = (f"<span style='color:{color};font-family:monospace'>"
                        f"{100 * d['share'][g]:4.1f}%</span> "
                        f"<span style='color:#555'>{human(d['tokens_per_s'][g])} tok/s</span>")
            self.values[g].value = text
        self.caption.value = (
            f"<div style='color:#666;font-size:90%;line-height:1.4'>fair share "
            f"{100 * d['fair_share']:.1f}% &middot; <span style='color:#2e7d32'>&#9632;</span> "
            f"&ge;90% of it &middot; <span style='color:#e65100'>&#9632;</span> 75&ndash;90% "
            f"&middot; <span style='color:#c62828'>&#9632;</span> &lt;75%</div>")


class StatusPanel(Panel):
    """One line: state, step, loss, tokens/s, workers, slowest group, and any driver error.

    It holds the trainer (to read its state, never to change it). data: state, step, loss,
    tokens_per_s, workers, slowest, error.
    """

    name = "status"
    COLORS = {"running": "#2e7d32", "paused": "#e65100", "stopped": "#616161",
              "idle": "#616161", "failed": "#c62828"}

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer
        self.widget = widgets.HTML("")
        self.widget.add_class("crystalline-status")
        self.data = {"state": None}
        self._last = None

    def compute(self, snapshot, records) -> bool:
        if records:
            self._last = records[-1]
        tr = self.trainer
        error = tr.driver_error
        data = {"state": tr.state, "step": tr.steps_done,
                "loss": None if self._last is None else self._last["loss"],
                "tokens_per_s": None if self._last is None else self._last["tokens_per_s"],
                "workers": tr.workers, "slowest": slowest_group(snapshot),
                "error": None if error is None else f"{type(error).__name__}: {error}"}
        changed = data != self.data
        self.data = data
        return changed

    def render(self) -> None:
        d = self.data
        color = self.COLORS[d["state"]]
        parts = [f"<span style='color:{color};font-weight:bold'>&#9679; {d['state']}</span>",
                 f"step <b>{d['step']:,}</b>"]
        if d["loss"] is not None:
            parts += [f"loss <b>{d['loss']:.4f}</b>", f"<b>{human(d['tokens_per_s'])}</b> tokens/s"]
        parts.append(f"<b>{d['workers']}</b> workers")
        if d["slowest"] >= 0:
            parts.append(f"slowest group <b style='color:{GROUP_COLORS[d['slowest']]}'>"
                         f"g{d['slowest']}</b>")
        text = " &nbsp;&middot;&nbsp; ".join(parts)
        if d["error"]:
            text += (f"<div style='color:#c62828'>training stopped on an error: "
                     f"{html.escape(d['error'])}</div>")
        self.widget.value = f"<div style='font-size:14px;line-height:1.6'>{text}</div>"
