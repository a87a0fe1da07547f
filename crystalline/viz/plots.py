"""Line, bar and heat-map plots of measured data: loss curves, throughput, sync modes, time
split, memory and group load. Each function takes plain sequences and returns a Figure.

    from crystalline.viz.plots import plot_throughput
    fig = plot_throughput([1, 2, 4], [900, 1700, 1750], ideal=[900, 1800, 1800], cores=2)
    fig.savefig("throughput.png")

Object API only (Figure + Agg canvas, never pyplot), so plots draw from any thread. Every
drawn series carries a gid naming it (e.g. "loss-12"), so tests can compare it with its data.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, StrMethodFormatter

from crystalline.viz.style import (GROUP_COLORS, PHASE_COLORS, TIME_COLUMN_LABELS, TIME_COLUMNS,
                                   group_color, plural)

# Parts of a step, in the order they happen, and their colours (the phases' colours).
TIME_PARTS = {column: (TIME_COLUMN_LABELS[column], PHASE_COLORS[phase])
              for column, phase in TIME_COLUMNS.items()}
SYNC_COLORS = {"lock_free": "#4c72b0", "model_lock": "#c44e52"}
LOSS_STYLES = ({"lw": 5.0, "alpha": 0.35}, {"lw": 2.0, "ls": "--"}, {"lw": 1.0, "ls": ":"},
               {"lw": 1.0, "ls": "-."})


def _figure(size=(7.5, 4.6), rows=1, **grid) -> tuple[Figure, list]:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, squeeze=False, **grid)[:, 0]
    return fig, list(axes)


def _worker_axis(ax, workers) -> None:
    """Log-2 worker axis with a tick at each measured count."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(workers)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(w) for w in workers])
    ax.set_xlabel("worker spheres")


def _mib(values) -> np.ndarray:
    return np.asarray(values, dtype=float) / 2**20


def plot_loss_curves(steps, losses: dict, title: str | None = None) -> Figure:
    """Loss against step for each worker count (they should coincide) and, below, the
    |difference| of each from the first count's curve, with its maximum in the legend."""
    fig, (top, bottom) = _figure((7.5, 5.6), rows=2, sharex=True, height_ratios=(3, 1.4))
    steps = np.asarray(steps)
    names = list(losses)
    reference = np.asarray(losses[names[0]], dtype=float)
    for k, name in enumerate(names):
        top.plot(steps, losses[name], color=f"C{k}", label=plural(name, "worker"),
                 gid=f"loss-{name}", **LOSS_STYLES[k % len(LOSS_STYLES)])
    top.set_ylabel("training loss (nats / token)")
    top.legend(title="same run on", frameon=False)
    top.grid(alpha=0.3)
    top.set_title(title or "Loss curves on different worker counts")
    identical = []
    for k, name in enumerate(names[1:], start=1):
        diff = np.abs(np.asarray(losses[name], dtype=float) - reference)
        identical.append(f"{name}: {int((diff == 0).sum())}/{len(diff)}")
        bottom.plot(steps, np.where(diff > 0, diff, np.nan), color=f"C{k}", lw=1.2, marker=".",
                    ms=3, label=f"{name} vs {names[0]}: max {diff.max():.2e}", gid=f"diff-{name}")
    eps = np.finfo(np.float32).eps * float(np.abs(reference).max())
    bottom.axhline(eps, color="#777777", lw=0.8, ls="--", label="float32 eps x loss")
    largest = max([eps] + [np.nanmax(line.get_ydata()) for line in bottom.lines[:-1]])
    smallest = min([eps] + [np.nanmin(line.get_ydata()) for line in bottom.lines[:-1]])
    bottom.set_ylim(smallest / 3, largest * 3e3)              # room for the legend on top
    bottom.set_yscale("log")
    bottom.set_ylabel("|difference|\n(nats / token)")
    bottom.text(0.99, 0.04, "steps with identical loss (gaps): " + ", ".join(identical),
                transform=bottom.transAxes, ha="right", fontsize=8, color="#444444")
    bottom.set_xlabel("step")
    bottom.legend(frameon=False, fontsize=8, ncol=3, loc="upper left")
    bottom.grid(alpha=0.3)
    return fig


def _others_note(ax, others) -> None:
    """Small print of the share of the machine's CPU that other processes used while the steps
    were timed; in red above 10 %, where the numbers say as much about them as about us."""
    others = [v for v in others if np.isfinite(v)]
    if others:
        busy = max(others) > 0.10
        note = f"other processes used up to {max(others):.0%} of the CPU while timing"
        ax.text(0.01, 0.98, note + (": the figures are disturbed" if busy else ""),
                transform=ax.transAxes, fontsize=8, va="top",
                color="#b03a2e" if busy else "#555555", gid="others-note")


def plot_throughput(workers, tokens_per_s, ideal, cores: int, title: str | None = None,
                    median=None, others=None) -> Figure:
    """Measured tokens/s against worker count with the ideal line for `cores` cores.

    tokens_per_s: the fastest timed step per count; median: optional median step, drawn as
    hollow markers; others: optional share of the CPU other processes used, noted in small print.
    """
    fig, (ax,) = _figure()
    ax.plot(workers, ideal, color="#888888", ls="--", lw=1.5, gid="ideal",
            label=f"ideal: 1-worker x min(workers, {cores} cores)")
    ax.plot(workers, tokens_per_s, color=SYNC_COLORS["lock_free"], marker="o", lw=2,
            gid="measured", label="measured, lock-free: fastest step (labels: % of ideal)")
    if median is not None:
        ax.plot(workers, median, linestyle="", marker="o", mfc="none", ms=7,
                color=SYNC_COLORS["lock_free"], gid="median", label="median step")
    for w, t, i in zip(workers, tokens_per_s, ideal):
        ax.annotate(f"{t / i:.0%}", (w, t), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=8, color="#333333")
    _worker_axis(ax, workers)
    ax.set_ylim(0, max(max(ideal), max(tokens_per_s)) * 1.2)
    if others is not None:
        _others_note(ax, others)
    ax.set_ylabel("throughput (tokens / s)")
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_title(title or "Throughput against worker count")
    ax.legend(frameon=False, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def plot_sync_modes(workers, lock_free, model_lock, title: str | None = None,
                    others=None) -> Figure:
    """A bar pair per worker count: lock-free tokens/s beside model_lock tokens/s; others:
    optional share of the CPU other processes used while measuring, noted in small print."""
    fig, (ax,) = _figure((6.5, 4.4))
    x = np.arange(len(workers))
    width = 0.38
    for offset, name, values in ((-width / 2, "lock_free", lock_free),
                                 (width / 2, "model_lock", model_lock)):
        bars = ax.bar(x + offset, values, width, color=SYNC_COLORS[name], label=name,
                      gid=f"bars-{name}")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8, padding=2)
    for xi, free, lock in zip(x, lock_free, model_lock):
        ax.text(xi, max(free, lock) * 1.12, f"lock-free / model_lock = {free / lock:.2f}x",
                ha="center", fontsize=9, fontweight="bold")
    ax.set_xticks(x, [f"{w} workers" for w in workers])
    ax.set_ylim(0, max(max(lock_free), max(model_lock)) * 1.3)
    if others is not None:
        _others_note(ax, others)
    ax.set_ylabel("throughput (tokens / s)")
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_title(title or "Lock-free spheres against one global model lock")
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_time_split(sphere_ids, parts: dict, groups, roles, title: str | None = None) -> Figure:
    """Stacked bars per sphere of seconds per step in each part (keys of TIME_PARTS); a strip
    under the bars gives each sphere's symmetry group colour (Node Zero grey)."""
    fig, (ax,) = _figure((10, 4.8))
    x = np.arange(len(sphere_ids))
    bottom = np.zeros(len(x))
    for key, (label, colour) in TIME_PARTS.items():
        values = np.asarray(parts[key], dtype=float) * 1e3
        ax.bar(x, values, 0.85, bottom=bottom, color=colour, label=label, gid=f"bars-{key}",
               linewidth=0)
        bottom += values
    top = float(bottom.max()) or 1.0
    strip = [group_color(g) for g in groups]
    ax.bar(x, top * 0.03, 0.85, bottom=-top * 0.045, color=strip, linewidth=0, gid="group-strip")
    ax.set_ylim(-top * 0.06, top * 1.2)
    roles = list(roles)
    n_controls = sum(r == "control" for r in roles)
    if n_controls:
        ax.axvline(n_controls + 0.5, color="#555555", lw=0.8, ls="--")
    ax.text(0, top * 1.1, "Node Zero", fontsize=8, ha="left", va="center")
    if n_controls:
        ax.text((n_controls + 1) / 2, top * 1.03, "controls", fontsize=8, ha="center")
    ax.text((n_controls + 1 + len(x)) / 2, top * 1.1, f"{len(x) - n_controls - 1} workers "
            "(strip below: symmetry group)", fontsize=8, ha="center", va="center")
    ax.set_xlim(-0.7, len(x) - 0.3)
    ticks = x[:: max(1, len(x) // 19)]
    ax.set_xticks(ticks, [str(sphere_ids[i]) for i in ticks])
    ax.set_xlabel("sphere id (breadth-first)")
    ax.set_ylabel("time per step (ms)")
    ax.set_title(title or "Where each sphere's step time goes")
    ax.legend(frameon=False, ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    ax.grid(axis="y", alpha=0.3)
    return fig


MEMORY_PARTS = {"baseline_rss_bytes": ("process before the trainer", "#d9d9d9"),
                "params_bytes": ("parameters", "#4c72b0"),
                "adamw_bytes": ("AdamW moments", "#8172b3"),
                "grads_bytes": ("gradient segments", "#dd8452"),
                "workspaces_bytes": ("activation workspaces", "#55a868"),
                "batches_bytes": ("batch inputs + targets", "#c44e52")}


def plot_memory(workers, peak_rss, parts: dict, title: str | None = None) -> Figure:
    """Stacked bars of the design's bytes by component on the process baseline, with the
    measured peak RSS of each configuration as a line (MiB)."""
    fig, (ax,) = _figure((8.5, 4.6))
    x = np.arange(len(workers))
    bottom = np.zeros(len(x))
    for key, (label, colour) in MEMORY_PARTS.items():
        values = _mib(parts[key])
        ax.bar(x, values, 0.6, bottom=bottom, color=colour, label=label, gid=f"bars-{key}")
        bottom += values
    peak = _mib(peak_rss)
    ax.plot(x, peak, color="black", marker="D", lw=1.5, gid="peak-rss", label="measured peak RSS")
    for xi, p in zip(x, peak):
        ax.annotate(f"{p:,.0f}", (xi, p), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set_xticks(x, [str(w) for w in workers])
    ax.set_xlabel("worker spheres")
    ax.set_ylabel("memory (MiB)")
    ax.set_ylim(0, max(np.nanmax(peak), bottom.max()) * 1.18)
    ax.set_title(title or "Peak RSS against the design's bytes")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], frameon=False, fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_group_load(steps, loads, workers_per_group, title: str | None = None) -> Figure:
    """Heat map: one row per top-level symmetry group (tick labels in the group's colour),
    one column per step, colour = tokens/s summed over the group's workers."""
    fig, (ax,) = _figure((9, 4.6))
    loads = np.asarray(loads, dtype=float)          # (12, steps)
    steps = np.asarray(steps)
    half = (steps[1] - steps[0]) / 2 if len(steps) > 1 else 0.5
    image = ax.imshow(loads, aspect="auto", cmap="viridis", interpolation="nearest",
                      extent=(steps[0] - half, steps[-1] + half, len(loads) - 0.5, -0.5),
                      gid="group-load")
    ax.set_yticks(range(len(loads)),
                  [f"group {g} ({n} w)" for g, n in enumerate(workers_per_group)])
    for g, label in enumerate(ax.get_yticklabels()):
        label.set_color(GROUP_COLORS[g])
        label.set_fontweight("bold")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_title(title or "Per-group load over time")
    fig.colorbar(image, ax=ax, pad=0.01, label="group throughput (tokens / s)")
    return fig

