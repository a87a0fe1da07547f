"""The live dashboard, drawn in the browser (anywidget): `Dashboard(trainer or run folder)`.

    from crystalline.viz.dashboard import Dashboard
    Dashboard(tr)                         # a Trainer training in this kernel
    Dashboard("runs/small-20261130-1015") # a CLI / MPI run, live or finished

widget.py (the Dashboard and its monitor thread), sources.py (what it pulls from), panels.py
(the data of each view), data.py (pure functions shared with the static figures; importing it
does not import anywidget), dashboard.js / dashboard.css (the views, drawn with canvas and
HTML; no build step, no CDN).
"""

__all__ = ["Dashboard"]


def __getattr__(name):
    if name == "Dashboard":
        from crystalline.viz.dashboard.widget import Dashboard
        return Dashboard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
