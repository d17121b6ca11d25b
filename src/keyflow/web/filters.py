"""Jinja filters: pretty JSON, ages and durations, short ids.

Text only: escaping is the templates' (autoescape) job.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jinja2

NONE = "\u2013"
"""Shown for a missing time (an en dash)."""


def pretty(value: Any) -> str:
    """Indented JSON."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def ago(at: float | None, now: float) -> str:
    """How long ago: ``"3.0s ago"``, ``"2m05s ago"``."""
    if at is None:
        return NONE
    return f"{duration(now - at)} ago"


def duration(seconds: float | None) -> str:
    """A short human duration."""
    if seconds is None:
        return NONE
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def clock(at: float | None) -> str:
    """``HH:MM:SS`` UTC."""
    if at is None:
        return NONE
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def num(value: float | int | None) -> str:
    """A number as a person writes it: ``8`` not ``8.0``, ``2.5``, thousands separated."""
    if value is None:
        return NONE
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{int(value):,}"


def percent(fraction: float | None) -> str:
    """``0.123`` as ``12.3%``."""
    if fraction is None:
        return NONE
    return f"{fraction * 100:.1f}%"


SHORT_PREFIX = 4
"""Hex digits of a run id's per-process prefix that its short form keeps."""


def short(run_id: str) -> str:
    """A run id, short but still telling runs apart across restarts.

    A run id is ``<12-hex prefix>-<8-hex counter>``; the prefix is new each time a
    scheduler starts, the counter starts again at 1. The counter alone would repeat
    after a restart ("process 8" twice), so the short form keeps the prefix's start:
    ``6ab318108b6f-0000002b`` is ``6ab3-2b``. An id of another shape is shown whole.

    Example:
        >>> short("6ab318108b6f-0000002b")
        '6ab3-2b'
    """
    prefix, dash, counter = run_id.rpartition("-")
    if not dash or not prefix:
        return run_id
    return f"{prefix[:SHORT_PREFIX]}-{counter.lstrip('0') or '0'}"


def install(environment: jinja2.Environment) -> None:
    """Register the filters on ``environment``."""
    environment.filters.update(
        pretty=pretty,
        ago=ago,
        duration=duration,
        clock=clock,
        short=short,
        num=num,
        percent=percent,
    )
