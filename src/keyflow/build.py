"""Which build of keyflow is running: the pure-Python sources or the compiled hot path."""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

HOT_PATH_MODULES = (
    "transitions",
    "state",
    "records",
    "due_timers",
    "live",
    "waiters",
    "runtime",
    "admission",
    "core",
    "triggers",
    "jsonvalue",
    "txn",
    "commit_batch",
    "commit",
    "worker",
    "storage_backends.memory",
    "hub",
)
"""The modules a compiled wheel carries as C extensions (hatch_build.py reads this list)."""


def compiled_modules() -> list[str]:
    """The keyflow modules running as compiled extensions in this process."""
    compiled = []
    for name in HOT_PATH_MODULES:
        path = importlib.import_module(f"keyflow.{name}").__file__ or ""
        if path.endswith(tuple(EXTENSION_SUFFIXES)):
            compiled.append(name)
    return compiled


def describe() -> str:
    """One line for benchmark reports: which build is measured."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python (the sources as they are)"
    return f"compiled with mypyc ({len(compiled)} of {len(HOT_PATH_MODULES)} hot-path modules)"
