"""A live ipywidgets dashboard over a Trainer training in the background.

    tr = Trainer(model_cfg, train_cfg, corpus, workers=12)
    tr.start()                          # background training
    dash = Dashboard(tr)                # widgets built here, on the main thread
    dash                                # (or dash.display()): shows them, starts the monitor
    dash.resize(6); dash.stop()         # what the "apply" and "stop" buttons do

Start / pause / stop buttons, a worker count applied between steps, per-group load bars,
the sphere tree coloured by throughput, loss / tokens/s / memory curves, per-worker tokens/s,
bytes owned and each sphere's time split. One monitor thread pulls `trainer.stats.snapshot()`
and `trainer.history.since(cursor)` `refresh_hz` times a second and hands both to each panel
(crystalline.viz.panels and .figure_panels); the trainer never calls the dashboard. The thread
only sets widget values (it never prints or displays: ipykernel 7 does not route a thread's
output to a cell).
A panel that raises is logged and shown in the error line; training and the other panels go on.
"""

from __future__ import annotations

import html
import logging
import threading

import ipywidgets as widgets

from crystalline.config import MAX_WORKERS
from crystalline.errors import ConfigError
from crystalline.viz.figure_panels import (CurvesPanel, FigurePanel, HierarchyPanel,
                                           ThroughputPanel, TimeSplitPanel)
from crystalline.viz.panels import GroupLoadPanel, StatusPanel

logger = logging.getLogger(__name__)


class Dashboard:
    """Widgets over one trainer; build and display on the main thread."""

    def __init__(self, trainer, refresh_hz: float = 3.0, history: int = 5000,
                 figure_interval: float = 1.0):
        if not 0 < refresh_hz <= 20:
            raise ConfigError(f"refresh_hz={refresh_hz!r} is invalid: use 0 < refresh_hz <= 20 "
                                   "(2 to 5 is plenty)")
        self.trainer = trainer
        self.period = 1.0 / refresh_hz
        self.status = StatusPanel(trainer)
        self.groups = GroupLoadPanel()
        self.hierarchy = HierarchyPanel()
        self.curves = CurvesPanel(history)
        self.throughput = ThroughputPanel()
        self.time_split = TimeSplitPanel()
        self.panels = [self.status, self.groups, self.hierarchy, self.curves, self.throughput,
                       self.time_split]
        for panel in (self.curves, self.throughput, self.time_split):
            panel.min_interval = figure_interval
        self.hierarchy.min_interval = 2 * figure_interval
        self.errors: dict[str, str] = {}       # panel name -> its last error, until it recovers
        self._cursor = 0
        self._stats = None
        self._generation = 0
        self._refresh_lock = threading.Lock()
        self._stop_monitor = threading.Event()
        self._monitor: threading.Thread | None = None
        self._build_widgets()

    # ------------------------------------------------------------------ widgets (main thread)
    def _build_widgets(self):
        button = dict(layout=widgets.Layout(width="92px"))
        self.start_button = widgets.Button(description="start", icon="play", button_style="success",
                                           tooltip="train in the background", **button)
        self.pause_button = widgets.Button(description="pause", icon="pause", button_style="warning",
                                           tooltip="finish the current step, then wait", **button)
        self.stop_button = widgets.Button(description="stop", icon="stop", button_style="danger",
                                          tooltip="stop training and this dashboard", **button)
        self.workers_input = widgets.BoundedIntText(
            value=self.trainer.workers, min=1, max=MAX_WORKERS, description="workers",
            layout=widgets.Layout(width="150px"), style={"description_width": "55px"})
        self.apply_button = widgets.Button(description="apply", icon="sitemap",
                                           tooltip="reshape the sphere tree between steps",
                                           layout=widgets.Layout(width="80px"))
        self.message = widgets.HTML("")
        self.error_line = widgets.HTML("")
        self.start_button.on_click(lambda _: self._guard(self.start))
        self.pause_button.on_click(lambda _: self._guard(self.toggle_pause))
        self.stop_button.on_click(lambda _: self._guard(self.stop))
        self.apply_button.on_click(lambda _: self._guard(self.resize, self.workers_input.value))
        tr = self.trainer
        title = widgets.HTML(
            f"<div style='font-size:17px;font-weight:bold;color:#222'>crystalline: live training"
            f"</div><div style='color:#666'>{tr.model.num_parameters:,} parameters &middot; "
            f"batch {tr.train_cfg.batch_size} &times; {tr.model_cfg.block_size} tokens</div>")
        spacer = widgets.HTML("", layout=widgets.Layout(width="24px"))
        controls = widgets.HBox([self.start_button, self.pause_button, self.stop_button, spacer,
                                 self.workers_input, self.apply_button, self.message],
                                layout=widgets.Layout(align_items="center", margin="4px 0"))
        top = widgets.HBox([self.groups.widget, self.hierarchy.widget, self.time_split.widget],
                           layout=widgets.Layout(align_items="flex-start"))
        self.widget = widgets.VBox(
            [title, self.status.widget, controls, self.error_line, top, self.curves.widget,
             self.throughput.widget],
            layout=widgets.Layout(padding="10px", border="1px solid #e0e0e0", width="1250px"))
        self.widget.add_class("crystalline-dashboard")

    def _guard(self, action, *args):
        """Button callbacks: show a failure in the message line instead of losing it."""
        try:
            action(*args)
        except Exception as exc:      # noqa: BLE001 - a click must not raise into the kernel
            logger.exception("dashboard action %s failed", getattr(action, "__name__", action))
            self._say(f"{type(exc).__name__}: {exc}", error=True)

    def _say(self, text: str, error: bool = False):
        color = "#c62828" if error else "#555555"
        self.message.value = f"<span style='color:{color};margin-left:12px'>{html.escape(text)}</span>"

    def display(self):
        """Show the widgets (main thread), draw them once, then start the monitor thread."""
        from IPython.display import display
        display(self.widget)
        self.refresh(all_figures=True)
        self.start_monitor()

    def _ipython_display_(self):
        self.display()

    # ------------------------------------------------------------------ controls
    def start(self, steps: int | None = None):
        """Resume if paused, else train in the background (`steps`, None: until stopped)."""
        state = self.trainer.state
        if state == "paused":
            self.trainer.resume()
        elif state != "running":
            self.trainer.start(steps)
        self._say("")
        self.start_monitor()

    def toggle_pause(self):
        if self.trainer.state == "paused":
            self.trainer.resume()
        else:
            self.trainer.pause()

    def resize(self, workers: int):
        """Reshape the tree to `workers` workers between steps; training, if running, goes on."""
        self.trainer.resize(workers=int(workers))
        self.workers_input.value = self.trainer.workers
        self._say(f"resized to {self.trainer.workers} workers")

    def stop(self):
        """Stop the trainer and the monitor thread, then draw the final state once."""
        self.trainer.stop()
        self.close()
        self.refresh(all_figures=True)

    # ------------------------------------------------------------------ monitor thread
    def start_monitor(self):
        if self._monitor is not None and self._monitor.is_alive():
            return
        self._stop_monitor.clear()
        self._monitor = threading.Thread(target=self._watch, daemon=True,
                                         name="crystalline-dashboard")
        self._monitor.start()

    @property
    def monitoring(self) -> bool:
        return self._monitor is not None and self._monitor.is_alive()

    def _watch(self):
        while not self._stop_monitor.wait(self.period):
            try:
                self.refresh()
            except Exception:         # noqa: BLE001 - the monitor must outlive any one pull
                logger.exception("dashboard refresh failed")

    def close(self):
        """Stop the monitor thread and wait for it; training is left as it is."""
        self._stop_monitor.set()
        monitor = self._monitor
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(timeout=30)
            if monitor.is_alive():
                logger.warning("the dashboard monitor thread did not end within 30 s")
        self._monitor = None

    def refresh(self, all_figures: bool = False):
        """One pull: the current stats and the history since the last pull, to every panel.

        Bars and labels redraw every pull; of the figures that are due only the one waiting
        longest does (a figure takes 0.1-1 s to draw while training competes for the GIL),
        unless all_figures.
        """
        with self._refresh_lock:
            stats = self.trainer.stats                 # replaced by resize: read it fresh
            if stats is not self._stats:
                self._stats = stats
                self._generation += 1
            snapshot = stats.snapshot()
            snapshot["generation"] = self._generation
            snapshot["hierarchy"] = self.trainer.hierarchy
            records, self._cursor = self.trainer.history.since(self._cursor)
            ok = [p for p in self.panels if self._attempt(p, p.ingest, snapshot, records)]
            labels = [p for p in ok if not isinstance(p, FigurePanel)]
            figures = [p for p in ok if isinstance(p, FigurePanel)]
            if not all_figures:
                figures = sorted((p for p in figures if p.due), key=lambda p: p.last_render)[:1]
            for panel in labels + figures:
                if self._attempt(panel, panel.draw_if_due, all_figures):
                    self.errors.pop(panel.name, None)
            self._sync_controls()

    def _attempt(self, panel, method, *args) -> bool:
        try:
            method(*args)
            return True
        except Exception as exc:   # noqa: BLE001 - logged, never raised into the trainer
            self._panel_failed(panel, exc)
            return False

    def _panel_failed(self, panel, exc):
        text = f"{type(exc).__name__}: {exc}"
        if self.errors.get(panel.name) != text:      # log each new failure once, with traceback
            logger.error("dashboard panel %r failed", panel.name, exc_info=exc)
        self.errors[panel.name] = text

    def _sync_controls(self):
        state = self.status.data.get("state") or self.trainer.state
        self.start_button.disabled = state == "running"
        self.pause_button.disabled = state not in ("running", "paused")
        self.pause_button.description = "resume" if state == "paused" else "pause"
        self.pause_button.icon = "play" if state == "paused" else "pause"
        errors = "".join(f"<div>panel {html.escape(name)} failed: {html.escape(text)}</div>"
                         for name, text in sorted(self.errors.items()))
        value = f"<div style='color:#c62828;font-size:90%'>{errors}</div>" if errors else ""
        if self.error_line.value != value:
            self.error_line.value = value

    def __repr__(self):
        return (f"Dashboard({self.trainer!r}, refresh every {self.period:.2f} s, "
                f"monitor {'running' if self.monitoring else 'stopped'})")
