"""The components of the live dashboard: each pulls, computes the data it would draw, then draws.

    panel = GroupLoadPanel()
    panel.update(snapshot, new_records)   # snapshot: the trainer's stats.snapshot() plus the
    panel.data                            #   Dashboard's "generation" and "hierarchy" entries
    panel.widget                          # the ipywidgets view, set by render()

`update` always refreshes `data` (cheap NumPy); `render` runs only when the data changed and at
most once every `min_interval` seconds, so the matplotlib figures (object API, Agg, PNG bytes
into an `ipywidgets.Image`) redraw about once a second while bars and labels keep up with the
monitor thread. Panels never touch the trainer's training state and never raise into it: the
Dashboard logs what a panel raises and carries on with the others.
"""

from __future__ import annotations

import html
import io
import math
import time
from collections import deque

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from crystalline.engine.stats import group_tokens_per_s
from crystalline.viz.geometry import GROUP_COLORS, NODE_ZERO_COLOR

TIME_FIELDS = ("compute_s", "wait_a_s", "wait_b_s", "reduce_s")
TIME_LABELS = ("compute", "wait at A", "wait at B", "reduce")
TIME_COLORS = ("#4c72b0", "#c7c7c7", "#8c8c8c", "#dd8452")
LOAD_STYLE = {"ok": "success", "low": "warning", "straggler": "danger", "idle": "", "waiting": ""}
LOW, STRAGGLER = 0.9, 0.75     # a group's share / fair share below these: orange, then red
DPI = 100


def figure_png(fig: Figure, dpi: float = DPI) -> bytes:
    """The figure as PNG bytes (Agg canvas; safe off the main thread)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


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


def _style(ax, title: str, xlabel: str | None = None, ylabel: str | None = None):
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold", color="#333333")
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8.5)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8.5)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _waiting(ax, text="waiting for the first step"):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            color="#999999", fontsize=9)


class Panel:
    """A component: `update(snapshot, records)` computes `data`, then `render` draws it."""

    name = "panel"
    min_interval = 0.0     # seconds between renders

    def __init__(self):
        self.data: dict = {}
        self.renders = 0
        self._dirty = True
        self._last_render = -math.inf

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
        return self._dirty and time.monotonic() - self._last_render >= self.min_interval

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
        self.renders += 1
        return True

    def compute(self, snapshot: dict, records: list[dict]) -> bool:
        """Refresh self.data from the new pull; True when something it draws changed."""
        raise NotImplementedError

    def render(self) -> None:
        raise NotImplementedError


class FigurePanel(Panel):
    """A panel drawn as a matplotlib figure into an ipywidgets.Image."""

    min_interval = 1.0
    size = (6.0, 3.0)     # inches
    dpi = DPI

    def __init__(self, width: str = "100%"):
        super().__init__()
        self.widget = widgets.Image(format="png", layout=widgets.Layout(width=width, height="auto"))

    def render(self) -> None:
        fig = Figure(figsize=self.size, layout="constrained")
        self.draw(fig)
        self.widget.value = figure_png(fig, self.dpi)

    def draw(self, fig: Figure) -> None:
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


class CurvesPanel(FigurePanel):
    """Loss (with validation points), tokens/s and process memory (RSS) over steps.

    data: step, loss, tokens_per_s, rss_mib (one point per step, the last `history` steps),
    val_step, val_loss.
    """

    name = "curves"
    size = (12.0, 2.9)
    KEYS = ("step", "loss", "tokens_per_s", "rss_mib")

    def __init__(self, history: int = 5000, width: str = "1200px"):
        super().__init__(width)
        self._columns = {k: deque(maxlen=history) for k in self.KEYS}
        self._val = {k: deque(maxlen=history) for k in ("val_step", "val_loss")}
        self.data = self._arrays()

    def _arrays(self) -> dict:
        return {k: np.array(v, dtype=float) for k, v in {**self._columns, **self._val}.items()}

    def compute(self, snapshot, records) -> bool:
        for r in records:
            for key, value in zip(self.KEYS, (r["step"], r["loss"], r["tokens_per_s"],
                                              r["rss"] / 2**20)):
                self._columns[key].append(value)
            if "val_loss" in r:
                self._val["val_step"].append(r["step"])
                self._val["val_loss"].append(r["val_loss"])
        if records:
            self.data = self._arrays()
        return bool(records)

    def draw(self, fig):
        d = self.data
        axes = fig.subplots(1, 3)
        titles = (("Loss", "cross-entropy (nats/token)"), ("Throughput", "tokens/s"),
                  ("Process memory", "RSS (MiB)"))
        for ax, (title, ylabel) in zip(axes, titles):
            _style(ax, title, "step", ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not len(d["step"]):
            for ax in axes:
                _waiting(ax)
            return
        step = d["step"]
        axes[0].plot(step, d["loss"], color="#1f77b4", linewidth=1.2, label="train")
        if len(d["val_step"]):
            axes[0].plot(d["val_step"], d["val_loss"], "o-", color="#d62728", markersize=4,
                         linewidth=1, label="validation")
            axes[0].legend(fontsize=8, frameon=False)
        tps = d["tokens_per_s"]
        axes[1].plot(step, tps, color="#2ca02c", alpha=0.3, linewidth=0.8)
        window = max(1, min(25, len(tps) // 10))
        smooth = np.convolve(tps, np.ones(window) / window, mode="valid")
        axes[1].plot(step[window - 1:], smooth, color="#2ca02c", linewidth=1.6,
                     label=f"mean of {window}")
        axes[1].set_ylim(bottom=0)
        axes[1].yaxis.set_major_formatter(lambda v, _: human(v))
        axes[2].plot(step, d["rss_mib"], color="#9467bd", linewidth=1.4)
        low, high = d["rss_mib"].min(), d["rss_mib"].max()
        pad = max(5.0, 0.1 * (high - low))
        axes[2].set_ylim(low - pad, high + pad)


class ThroughputPanel(FigurePanel):
    """Per-worker tokens/s over steps (one line per worker, its group's colour) and the bytes
    each sphere owns.

    data: workers {worker_index: (steps array, tokens/s array)} sampled at each pull that saw a
    new step; labels, bytes, colors per sphere (the current tree).
    """

    name = "spheres"
    size = (12.0, 2.9)

    def __init__(self, history: int = 600, width: str = "1200px"):
        super().__init__(width)
        self._history = history
        self._series: dict[int, deque] = {}
        self._last_step = None
        self.data = {"workers": {}, "labels": [], "bytes": np.zeros(0), "colors": [],
                     "order": np.zeros(0, dtype=int)}

    def compute(self, snapshot, records) -> bool:
        step = snapshot["step"]
        changed = False
        if step != self._last_step and np.any(snapshot["tokens_per_s"] > 0):
            self._last_step = step
            for w, tps in zip(snapshot["worker_index"], snapshot["tokens_per_s"]):
                if w >= 0:
                    self._series.setdefault(int(w), deque(maxlen=self._history)).append((step, tps))
            changed = True
        labels = sphere_labels(snapshot)
        if changed or labels != self.data["labels"] \
                or not np.array_equal(self.data["bytes"], snapshot["bytes"]):
            self.data = {"workers": {w: tuple(np.array(c, dtype=float) for c in zip(*s))
                                     for w, s in sorted(self._series.items())},
                         "labels": labels, "bytes": snapshot["bytes"].copy(),
                         "colors": sphere_colors(snapshot), "order": sphere_order(snapshot)}
            changed = True
        return changed

    def draw(self, fig):
        d = self.data
        left, right = fig.subplots(1, 2, width_ratios=(2.1, 1))
        _style(left, "Tokens/s per worker", "step", "tokens/s")
        _style(right, "Bytes owned per sphere", None, "MiB")
        if not d["workers"]:
            _waiting(left)
        for w, (steps, tps) in d["workers"].items():
            left.plot(steps, tps, color=GROUP_COLORS[w % 12], linewidth=1.0, alpha=0.85,
                      marker="o" if len(steps) < 20 else None, markersize=3)
        left.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.yaxis.set_major_formatter(lambda v, _: human(v))
        left.set_ylim(bottom=0)
        n, order = len(d["labels"]), d["order"]
        if n:
            right.bar(np.arange(n), d["bytes"][order] / 2**20, edgecolor="#555555",
                      color=[d["colors"][i] for i in order], linewidth=0.4 if n < 40 else 0)
            _sphere_ticks(right, [d["labels"][i] for i in order])


def _sphere_ticks(ax, labels):
    n = len(labels)
    every = max(1, math.ceil(n / 16))
    ticks = list(range(0, n, every))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90 if n > 8 else 0, fontsize=7.5)
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(False, axis="x")


class TimeSplitPanel(FigurePanel):
    """Per sphere, where its time went since the previous pull that saw a step complete:
    compute, wait at Point A, wait at Point B, reduce, stacked, in milliseconds per step.

    data: labels, seconds (spheres, 4) = the stats' cumulative columns minus those of the
    previous pull (a new tree, after resize, starts from zero), steps (history records in the
    window), ms_per_step (spheres, 4).
    """

    name = "time split"
    size = (4.3, 4.0)

    def __init__(self, width: str = "430px"):
        super().__init__(width)
        self._baseline = None
        self._generation = None
        self._steps = 0
        self.data = {"labels": [], "seconds": np.zeros((0, 4)), "steps": 0,
                     "ms_per_step": np.zeros((0, 4)), "order": np.zeros(0, dtype=int)}

    def compute(self, snapshot, records) -> bool:
        now = np.stack([snapshot[f] for f in TIME_FIELDS], axis=1)   # (spheres, 4)
        generation = snapshot.get("generation")
        if generation != self._generation or self._baseline is None \
                or self._baseline.shape != now.shape:
            self._generation = generation
            self._baseline = np.zeros_like(now)
            self._steps = 0
        self._steps += len(records)
        if not self._steps:       # no step completed: keep the last split (and the baseline, so
            return False          # writes that land after a step count in the next window)
        seconds = now - self._baseline
        self._baseline = now
        steps, self._steps = self._steps, 0
        self.data = {"labels": sphere_labels(snapshot), "seconds": seconds, "steps": steps,
                     "ms_per_step": 1e3 * seconds / steps, "order": sphere_order(snapshot)}
        return True

    def draw(self, fig):
        d = self.data
        ax = fig.subplots()
        _style(ax, "Time split per sphere", None, "ms per step")
        n = len(d["labels"])
        if not n:
            _waiting(ax)
            return
        order = d["order"]
        ms, bottom = d["ms_per_step"][order], np.zeros(n)
        for k in range(4):
            ax.bar(np.arange(n), ms[:, k], bottom=bottom, color=TIME_COLORS[k],
                   label=TIME_LABELS[k], width=0.8, linewidth=0)
            bottom += ms[:, k]
        _sphere_ticks(ax, [d["labels"][i] for i in order])
        ax.legend(fontsize=7.5, frameon=False, ncol=4, loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), handlelength=1.0, columnspacing=0.8)
        ax.set_title(f"Time split per sphere (last {d['steps']} steps)", fontsize=10, loc="left",
                     fontweight="bold", color="#333333", pad=18)


class HierarchyPanel(FigurePanel):
    """The sphere tree drawn radially, workers coloured by their last step's tokens/s.

    data: values {worker sphere id: tokens/s}, hierarchy (the tree they belong to).
    """

    name = "hierarchy"
    min_interval = 2.0
    size = (5.4, 5.1)
    dpi = 85

    def __init__(self, width: str = "430px"):
        super().__init__(width)
        self.data = {"values": {}, "hierarchy": None}

    def compute(self, snapshot, records) -> bool:
        h = snapshot.get("hierarchy")
        if h is None or len(h) != len(snapshot["role"]):
            return False          # caught mid-resize: the next pull sees the new tree
        workers = snapshot["role"] == "worker"
        tps = snapshot["tokens_per_s"]
        values = {int(i): float(tps[i]) for i in np.flatnonzero(workers) if tps[i] > 0}
        changed = h is not self.data["hierarchy"] or values != self.data["values"]
        self.data = {"values": values, "hierarchy": h}
        return changed

    def draw(self, fig):
        from crystalline.viz.graph import draw_hierarchy
        h = self.data["hierarchy"]
        ax = fig.add_subplot()
        if h is None:
            ax.set_axis_off()
            _waiting(ax, "no tree yet")
            return
        draw_hierarchy(h, ax=ax, color_by="throughput", values=self.data["values"],
                       title=f"{len(h.workers)} workers, {len(h)} spheres: tokens/s")
        ax.title.set_fontsize(10)
        ax.title.set_fontweight("bold")


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
        self.data = {"state": None}
        self._last = None

    def compute(self, snapshot, records) -> bool:
        if records:
            self._last = records[-1]
        tr = self.trainer
        error = tr.driver_error
        data = {"state": trainer_state(tr), "step": tr.steps_done,
                "loss": None if self._last is None else self._last["loss"],
                "tokens_per_s": None if self._last is None else self._last["tokens_per_s"],
                "workers": tr.workers, "slowest": _slowest_group(snapshot),
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


def _slowest_group(snapshot) -> int:
    """As Trainer.slowest_group, from the snapshot already pulled."""
    per_group = group_tokens_per_s(snapshot)
    active = np.flatnonzero(per_group > 0)
    return int(active[np.argmin(per_group[active])]) if len(active) else -1


def trainer_state(tr) -> str:
    """running / paused / stopped / idle (never trained) / failed (the driver raised).

    The Trainer has no public paused flag: paused = its background driver is alive but not
    running.
    """
    if tr.driver_error is not None:
        return "failed"
    driver = getattr(tr, "_driver", None)
    if driver is not None and driver.is_alive():
        return "running" if tr.running else "paused"
    return "stopped" if tr.steps_done else "idle"
