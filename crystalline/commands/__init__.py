"""CLI subcommands: one module per command, each with `add_parser(subparsers)` (see crystalline.cli)."""
