"""`crystalline watch RUN_DIR`: the live dashboard of a run folder, in the browser.

    crystalline watch runs/small-20261130-1015              # Voila page: live, or a replay
    crystalline watch runs/small-20261130-1015 --port 8870 --no-browser
    crystalline watch runs/small-20261130-1015 --lab        # a JupyterLab notebook instead

The run may be training in another process (`crystalline train`, an MPI job) or finished. A
tiny notebook (`Dashboard(RUN_DIR)`) is written to a temporary folder and served by Voila
(the page shows only the dashboard) or, with --lab, opened in JupyterLab (run its cell). A
live CLI run can be paused, resized and stopped from the page: the dashboard writes the
run's control file, which the trainer reads between steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from crystalline.io import atomic_write_text

NOTEBOOK = "watch.ipynb"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("watch", help="open the live dashboard of a run folder",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="the run folder (written by crystalline train)")
    p.add_argument("--port", type=int, default=None, help="port to serve on (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--lab", action="store_true", help="open it in JupyterLab instead of Voila")
    p.set_defaults(func=run)


def watch_notebook(run_dir: Path) -> dict:
    """The notebook that shows the dashboard of `run_dir` (nbformat 4, python3 kernel)."""
    source = ("from crystalline.viz.dashboard import Dashboard\n"
              f"Dashboard({str(run_dir)!r})")
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                        "name": "python3"},
                         "language_info": {"name": "python"}},
            "cells": [{"cell_type": "code", "id": "dashboard", "metadata": {},
                       "execution_count": None, "outputs": [], "source": source}]}


def server_command(folder: Path, port: int | None, no_browser: bool, lab: bool) -> list[str]:
    """Voila serving the notebook, or JupyterLab opening it (--allow-root when run as root:
    Jupyter refuses root otherwise)."""
    if lab:
        command = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={folder}",
                   f"--LabApp.default_url=/lab/tree/{NOTEBOOK}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
    else:
        command = [sys.executable, "-m", "voila", str(folder / NOTEBOOK), "--Voila.ip=127.0.0.1"]
    if port is not None:
        command.append(f"--port={port}")
    if no_browser:
        command.append("--no-browser")
    return command


def check_run_dir(run_dir: Path) -> Path:
    """The resolved run folder, or a ConfigError naming what is wrong and the fix."""
    from crystalline.errors import ConfigError
    if not run_dir.exists():
        raise ConfigError(f"{run_dir} does not exist; pass a run folder written by "
                          "`crystalline train` (e.g. runs/<name>)")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder; pass the folder that holds "
                          "its metrics.jsonl (e.g. runs/<name>)")
    from crystalline.runs import open_run
    open_run(run_dir)            # raises naming the path and what is wrong (not a run, ...)
    return run_dir.resolve()


def run(args) -> int:
    import json

    from crystalline.errors import ConfigError
    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is invalid: use 1 to 65535")
    run_dir = check_run_dir(args.run_dir)
    server = "jupyterlab" if args.lab else "voila"
    if importlib.util.find_spec(server) is None:
        other = "" if args.lab else " (or use --lab to open it in JupyterLab)"
        raise ConfigError(f"{server} is not installed in this environment; run "
                          f"`pip install {server}`{other}")
    with tempfile.TemporaryDirectory(prefix="crystalline-watch-") as folder:
        folder = Path(folder)
        atomic_write_text(folder / NOTEBOOK, json.dumps(watch_notebook(run_dir), indent=1))
        print(f"crystalline: watching {run_dir} (Ctrl-C ends the server)", file=sys.stderr)
        try:
            return subprocess.call(server_command(folder, args.port, args.no_browser, args.lab),
                                   cwd=folder)
        except KeyboardInterrupt:
            return 130
