"""`python -m crystalline ...`: the same as the `crystalline` command."""

from crystalline.cli import main

raise SystemExit(main())
