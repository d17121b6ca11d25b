"""What the storage-backed benchmark commands share: a working directory and --strict."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

Main = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def run(parser: argparse.ArgumentParser, main: Main) -> None:
    """Add ``--dir`` and ``--strict`` to ``parser``, parse, run ``main``, exit with its code.

    ``args.dir`` is a :class:`~pathlib.Path` that exists (a new temporary directory unless
    given); ``main`` returns 1 when a target was missed under ``--strict``.
    """
    parser.add_argument("--dir", help="where to put the files (default: a temporary dir)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    args.dir = Path(args.dir or tempfile.mkdtemp(prefix="keyflow-bench-"))
    args.dir.mkdir(parents=True, exist_ok=True)
    raise SystemExit(asyncio.run(main(args)))
