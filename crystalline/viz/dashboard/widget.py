"""The live dashboard: an anywidget whose ES module (dashboard.js) draws in the browser.

    dash = Dashboard(trainer)                 # in-process: the buttons control the trainer
    dash = Dashboard("runs/small-20261130")   # a run folder: watch it live, or replay it
    dash                                      # show it (starts the monitor thread)
    dash.refresh(); dash.view("status")       # one pull, and the data the status line draws
    dash.cpu_s, dash.period                   # CPU seconds spent pulling; the period now
    dash.close()                              # stop the monitor (training goes on)

The monitor of a run folder ends by itself after the pull that sees the run's process gone.

One monitor thread pulls from the source at most `refresh_hz` times a second (stats snapshot,
new history records, the phase timeline once per step), hands the pull to each panel
(panels.py) and sets the traits whose data changed, in one message; the browser draws them.
Nothing is rendered in this process. The thread measures its own CPU time per pull
(time.thread_time) and waits longer between pulls when they cost more than `cpu_budget` of
one core: in the training process it competes with the spheres for the GIL. A panel that raises is logged and named in the error line; training and the
other panels go on. Button clicks arrive as messages from the browser and act on the source
(sources.py): the Trainer itself, or a live CLI run's control file.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import anywidget
import traitlets

from crystalline.errors import ConfigError
from crystalline.viz.dashboard.panels import (STREAM_RECORD, TREE_RECORD, CurvesPanel,
                                              GroupLoadPanel, StatusPanel, TaskStreamPanel,
                                              TimeSplitPanel, TreePanel, unpack)
from crystalline.viz.dashboard.sources import as_source
from crystalline.viz.style import PHASES, browser_palette

logger = logging.getLogger(__name__)
HERE = Path(__file__).parent
CPU_BUDGET = 0.01      # of one core: the monitor pulls less often when its pulls cost more
MAX_PERIOD_S = 2.0     # but at least this often (a soft budget: a pull reads every new step record)


class Dashboard(anywidget.AnyWidget):
    """A live view of a Trainer or a run folder, drawn by the browser."""

    _esm = HERE / "dashboard.js"
    _css = HERE / "dashboard.css"
    # Each view's data travels as one JSON text: ipywidgets then sends a string as it is,
    # instead of walking list items in Python on every update (view(name) reads it). Per-sphere
    # and per-interval columns travel as binary buffers (panels.TREE_RECORD, STREAM_RECORD).
    palette = traitlets.Dict().tag(sync=True)
    status = traitlets.Unicode("{}").tag(sync=True)
    groups = traitlets.Unicode("{}").tag(sync=True)
    curves = traitlets.Unicode("{}").tag(sync=True)
    curves_recent = traitlets.Unicode("{}").tag(sync=True)
    split = traitlets.Unicode("{}").tag(sync=True)
    tree_layout = traitlets.Unicode("{}").tag(sync=True)
    tree = traitlets.Unicode("{}").tag(sync=True)
    tree_values = traitlets.Bytes(b"").tag(sync=True)
    stream = traitlets.Unicode("{}").tag(sync=True)
    stream_intervals = traitlets.Bytes(b"").tag(sync=True)
    actions = traitlets.List().tag(sync=True)
    message = traitlets.Dict().tag(sync=True)
    errors = traitlets.Dict().tag(sync=True)

    def __init__(self, source, refresh_hz: float = 3.0, stream_steps: int = 5,
                 cpu_budget: float = CPU_BUDGET):
        if not 0 < refresh_hz <= 10:
            raise ConfigError(f"refresh_hz={refresh_hz!r} is invalid: use 0 < refresh_hz <= 10 "
                              "(2 to 5 is plenty)")
        if not 0 < cpu_budget <= 1:
            raise ConfigError(f"cpu_budget={cpu_budget!r} is invalid: it is a fraction of one core, "
                              "0 < cpu_budget <= 1 (0.01 is the default)")
        if not 1 <= stream_steps <= 50:
            raise ConfigError(f"stream_steps={stream_steps!r} is invalid: use 1 to 50")
        self.source = as_source(source)
        super().__init__(palette=browser_palette(), message={"text": "", "error": False})
        self.shortest_period = self.period = 1.0 / refresh_hz
        self.cpu_budget = cpu_budget
        self.cpu_s = 0.0                      # thread CPU seconds spent in refresh()
        self._cost = 0.0                      # recent CPU seconds per refresh (moving average)
        self.stream_steps = stream_steps
        self.panels = {"status": StatusPanel(self.source.describe), "groups": GroupLoadPanel(),
                       "curves": CurvesPanel(), "split": TimeSplitPanel(), "tree": TreePanel(),
                       "stream": TaskStreamPanel(stream_steps)}
        self.refreshes = 0
        self._errors: dict[str, str] = {}     # panel name -> its last error, until it recovers
        self._sent: dict[str, str] = {}       # trait -> the JSON text last sent
        self._cursor = None               # the source's: where the next records start
        self._refresh_lock = threading.Lock()
        self._stop_monitor = threading.Event()
        self._monitor: threading.Thread | None = None
        self.on_msg(self._on_browser_message)
        self.refresh()
        self._cost = 0.0                      # the first pull (imports, the layout) sets no pace
        self.period = self.shortest_period

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs):
        self.start_monitor()
        return super()._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ controls
    def _on_browser_message(self, _widget, content, _buffers):
        if isinstance(content, dict) and "action" in content:
            self.act(str(content["action"]), content.get("workers"))

    def act(self, action: str, workers=None) -> bool:
        """Do what a button asks (start / pause / resume / stop / resize with `workers`); the
        outcome or the error goes to the message line. True when it acted."""
        try:
            text = self.source.act(action, workers)
        except Exception as exc:      # noqa: BLE001 - a click must not raise into the kernel
            if not isinstance(exc, ConfigError):
                logger.exception("dashboard action %s failed", action)
            self.message = {"text": str(exc), "error": True}
            return False
        self.message = {"text": text, "error": False}
        if action == "stop" and self.source.kind == "in-process":
            self.close_monitor()          # stopped now; a run folder's monitor sees it end
        elif action in ("start", "resume"):
            self.start_monitor()
        self.refresh()
        return True

    def pause(self):
        return self.act("pause")

    def resume(self):
        return self.act("resume")

    def resize(self, workers):
        return self.act("resize", workers)

    def stop(self):
        """Stop training (or ask the run to stop) and the monitor thread; draw the end state."""
        return self.act("stop")

    # ------------------------------------------------------------------ monitor thread
    def start_monitor(self) -> None:
        if self.monitoring:
            return
        self._stop_monitor.clear()
        self._monitor = threading.Thread(target=self._watch, daemon=True,
                                         name="crystalline-dashboard")
        self._monitor.start()

    @property
    def monitoring(self) -> bool:
        return self._monitor is not None and self._monitor.is_alive()

    def _watch(self):
        """Pull every period until closed, or until a watched run has ended (one last pull)."""
        while not self._stop_monitor.wait(self.period):
            ended = self.source.ended
            try:
                self.refresh()
            except Exception:         # noqa: BLE001 - the monitor must outlive any one pull
                logger.exception("dashboard refresh failed")
            if ended:
                break

    def close_monitor(self) -> None:
        """Stop the monitor thread and wait for it; training is left as it is."""
        monitor = getattr(self, "_monitor", None)    # none either when __init__ refused its arguments
        if monitor is None:
            return
        self._stop_monitor.set()
        if monitor is not threading.current_thread():
            monitor.join(timeout=30)
        self._monitor = None

    def close(self) -> None:
        """Stop the monitor, then close the widget."""
        self.close_monitor()
        super().close()

    # ------------------------------------------------------------------ one pull
    def refresh(self) -> None:
        """Pull once and send what changed (one message); account its CPU time and set the
        period to keep the monitor under cpu_budget of a core (never faster than refresh_hz)."""
        with self._refresh_lock:
            started = time.thread_time()
            try:
                self._refresh()
            finally:
                cost = time.thread_time() - started
                self.cpu_s += cost
                self._cost = 0.8 * self._cost + 0.2 * cost if self._cost else cost
                self.period = min(MAX_PERIOD_S, max(self.shortest_period, self._cost / self.cpu_budget))

    def _refresh(self) -> None:
        try:
            pull = self.source.pull(self._cursor, self.stream_steps)
        except Exception as exc:   # noqa: BLE001 - e.g. a run folder mid-rewrite: next pull
            self._failed("source", exc)
            self.errors = dict(self._errors_now())
            return
        self._cursor = pull.cursor
        self._errors.pop("source", None)
        outputs = {}
        for name, panel in self.panels.items():
            try:
                if panel.update(pull) or not self._sent.get(name):
                    outputs[name] = panel.data
                outputs.update(panel.extra)
                self._errors.pop(name, None)
            except Exception as exc:   # noqa: BLE001 - logged, never raised into training
                self._failed(name, exc)
        with self.hold_sync():         # one message with the traits whose value changed
            for trait, data in outputs.items():
                text = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":"))
                if text != self._sent.get(trait):
                    self._sent[trait] = text
                    setattr(self, trait, text)
            actions = self.source.actions()
            if actions != self.actions:
                self.actions = actions
            errors = self._errors_now()
            if errors != self.errors:
                self.errors = errors
        self.refreshes += 1

    def view(self, name: str) -> dict:
        """The data the browser draws for `name` (status, groups, curves, curves_recent, split,
        tree_layout, tree, stream), as last sent; tree and stream with their binary columns
        unpacked (lists; the tree's phase as names)."""
        data = json.loads(getattr(self, name))
        if name == "tree":
            data.update(unpack(TREE_RECORD, self.tree_values))
            data["phase"] = [PHASES[p] for p in data["phase"]]
        elif name == "stream":
            data.update(unpack(STREAM_RECORD, self.stream_intervals))
        return data

    def _errors_now(self) -> dict:
        return dict(sorted(self._errors.items()))

    def _failed(self, name: str, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if self._errors.get(name) != text:       # log each new failure once, with traceback
            logger.error("dashboard panel %r failed", name, exc_info=exc)
        self._errors[name] = text

    def __repr__(self):
        return (f"Dashboard({self.source.kind}, refresh every {self.period:.2f} s, "
                f"monitor {'running' if self.monitoring else 'stopped'})")
