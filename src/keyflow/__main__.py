"""``python -m keyflow``: the ``keyflow`` command."""

from .cli import main

raise SystemExit(main())
