"""The dashboard's matplotlib panels: loss / tokens/s / memory curves, per-worker tokens/s and
bytes owned, each sphere's time split, and the sphere tree coloured by throughput.

Each draws a fresh Figure with the object API and the Agg canvas into PNG bytes for an
`ipywidgets.Image`, so it is safe from the dashboard's monitor thread (never pyplot there).

    panel = CurvesPanel()
    panel.update(snapshot, new_records); panel.data["loss"]; panel.widget.value   # PNG bytes
"""

from __future__ import annotations

import io
import math
from collections import deque

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from crystalline.viz.geometry import GROUP_COLORS
from crystalline.viz.panels import Panel, human, sphere_colors, sphere_labels, sphere_order

TIME_FIELDS = ("compute_s", "wait_a_s", "wait_b_s", "reduce_s")
TIME_LABELS = ("compute", "wait at A", "wait at B", "reduce")
TIME_COLORS = ("#4c72b0", "#c7c7c7", "#8c8c8c", "#dd8452")
DPI = 100


def figure_png(fig: Figure, dpi: float = DPI) -> bytes:
    """The figure as PNG bytes (Agg canvas; safe off the main thread)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


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
    size = (6.4, 6.2)
    dpi = 72

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
                       title=f"Sphere tree: {len(h.workers)} workers, {len(h)} spheres")
        ax.title.set(fontsize=12.5, fontweight="bold", color="#333333")
