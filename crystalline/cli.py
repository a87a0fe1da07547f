"""The `crystalline` command: argparse subcommands, each defined in `crystalline.commands.<name>`.

Each command module has `add_parser(subparsers)` (which sets `func`) and keeps its imports
inside the function it runs, so `crystalline --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["data", "train", "sample", "export", "figures", "lab", "trace", "watch"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crystalline",
        description="Train small GPT models with a hierarchical, barrier-synchronised thread trainer.")
    from crystalline import __version__
    parser.add_argument("--version", action="version", version=f"crystalline {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"crystalline.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from crystalline import signals
    previous = None
    try:
        previous = signals.install()     # before any heavy import: Ctrl-C / SIGTERM give no traceback
        args = build_parser().parse_args(argv)
        from crystalline.errors import CrystallineError
        try:
            return args.func(args) or 0
        except CrystallineError as e:
            print(f"crystalline: error: {e}", file=sys.stderr)
            return 2
    except Exception as e:
        interrupt = _interrupt_behind(e)
        if interrupt is None:
            raise
        return _interrupted(interrupt)
    except KeyboardInterrupt as e:
        return _interrupted(e)
    finally:
        signals.restore(previous)


def _interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that caused `error`, if any: a signal raised inside a C extension's
    initialisation comes back as ImportError("initialization failed") caused by it."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _interrupted(e: KeyboardInterrupt) -> int:
    signum = getattr(e, "signum", 2)
    print(f"crystalline: interrupted ({'SIGTERM' if signum == 15 else 'SIGINT'})", file=sys.stderr)
    return 128 + signum
