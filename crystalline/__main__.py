"""`python -m crystalline ...`: the same as the `crystalline` command."""

from crystalline import signals

signals.install()          # first of all: Ctrl-C while the rest is imported exits 130, no traceback
try:
    from crystalline.cli import main
except KeyboardInterrupt as e:
    raise SystemExit(128 + getattr(e, "signum", 2)) from None

raise SystemExit(main())
