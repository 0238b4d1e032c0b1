"""``python -m loadtest``: the same as ``fmn loadtest``."""

from loadtest.cli import main

raise SystemExit(main())
