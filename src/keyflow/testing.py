"""Helpers for testing code that uses keyflow.

``VirtualClock`` makes delays and retry backoffs instant under ``run_until_idle()``;
``MemoryBackend`` is the in-memory storage, with ``reset()``.
"""

from __future__ import annotations

from .clock import VirtualClock
from .storage_backends.memory import MemoryBackend

__all__ = ["MemoryBackend", "VirtualClock"]
