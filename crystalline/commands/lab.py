"""`crystalline lab`: open JupyterLab on the repository's notebooks/ folder.

    crystalline lab                          # JupyterLab in a browser tab
    crystalline lab --port 8890 --no-browser # e.g. on a remote machine, then open the URL it prints
    crystalline lab --allow-root             # as root (a container): JupyterLab refuses root otherwise
    crystalline lab -- --ServerApp.ip=0.0.0.0    # anything after -- goes to JupyterLab as it is

The notebooks live in the source checkout (notebooks/ next to crystalline/), so this command
needs an editable install (`pip install -e .` from the repository) or --notebook-dir.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("lab", help="open JupyterLab on the notebooks", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=None, help="port to serve on (default: JupyterLab's)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--notebook-dir", type=Path, default=None,
                   help="folder to open (default: the repository's notebooks/)")
    p.add_argument("--allow-root", action="store_true",
                   help="run JupyterLab as root (it refuses to otherwise)")
    p.add_argument("jupyter_args", nargs=argparse.REMAINDER, metavar="-- JUPYTER_ARGS",
                   help="arguments after -- are passed to JupyterLab unchanged")
    p.set_defaults(func=run)


def notebooks_dir() -> Path:
    """notebooks/ of the source checkout this package was imported from."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def jupyter_command(folder: Path, port: int | None = None, no_browser: bool = False,
                    allow_root: bool = False, extra: list[str] = ()) -> list[str]:
    command = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={folder}"]
    if port is not None:
        command.append(f"--port={port}")
    if no_browser:
        command.append("--no-browser")
    if allow_root:
        command.append("--allow-root")
    return command + list(extra)


def run(args) -> int:
    import importlib.util

    from crystalline.errors import ConfigError
    folder = (args.notebook_dir or notebooks_dir()).resolve()
    if not folder.is_dir():
        if args.notebook_dir is not None:
            raise ConfigError(f"--notebook-dir {args.notebook_dir} is not a folder; "
                              "pass an existing folder of notebooks")
        raise ConfigError(f"no notebooks folder at {folder}: the notebooks ship with the source "
                          "checkout, not the installed package; clone the repository and run "
                          "`pip install -e .` there, or pass --notebook-dir PATH")
    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is invalid: use 1 to 65535")
    extra = args.jupyter_args
    if extra and extra[0] != "--":
        raise ConfigError(f"unrecognised argument {extra[0]!r}; put JupyterLab's own arguments "
                          "after --, e.g. crystalline lab -- --ServerApp.ip=0.0.0.0")
    if os.geteuid() == 0 and not args.allow_root:
        raise ConfigError("crystalline lab is running as root, which JupyterLab refuses; pass "
                          "--allow-root (e.g. in a container), or run it as an ordinary user")
    if importlib.util.find_spec("jupyterlab") is None:
        raise ConfigError("JupyterLab is not installed in this environment; "
                          "run `pip install jupyterlab` (or `pip install -e .`)")
    try:
        return subprocess.call(jupyter_command(folder, args.port, args.no_browser, args.allow_root,
                                               extra[1:]))
    except KeyboardInterrupt:
        return 130
