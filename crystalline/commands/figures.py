"""`crystalline figures`: regenerate every figure, with the data behind it.

    crystalline figures --out figures/                 # full configs (about ten minutes)
    crystalline figures --out /tmp/figs --quick        # small configs (under two minutes)
    crystalline figures --only throughput memory --from-data    # redraw from saved data

Each figure NAME becomes NAME.png, NAME.svg, NAME.csv (the data drawn) and NAME.config.json
(config, package versions, machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    from crystalline.figures.catalog import FIGURES
    p = subparsers.add_parser("figures", help="regenerate every figure and the data behind it",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("figures"),
                   help="output folder (default: figures/; created if missing)")
    p.add_argument("--quick", action="store_true",
                   help="small fixed configs: under two minutes on two cores")
    p.add_argument("--from-data", action="store_true",
                   help="redraw PNG/SVG from the saved CSV and config JSON; measure nothing")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help=f"only these figures: {', '.join(FIGURES)}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from crystalline.errors import ConfigError
    from crystalline.figures import make_all
    if args.quick and args.from_data:
        raise ConfigError("--quick has no effect with --from-data (figures are redrawn from the "
                          "config they were made with); drop one of them")
    written = make_all(args.out, quick=args.quick, only=args.only, from_data=args.from_data,
                       progress=not args.no_progress)
    files = sum(len(paths) for paths in written.values())
    print(f"{len(written)} figure(s), {files} files in {args.out}")
    return 0
