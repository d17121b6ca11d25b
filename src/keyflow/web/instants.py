"""Moments typed into the runs filters: ISO dates and date-times, read as UTC.

The pages show times in UTC (``HH:MM:SS``), so a date-time without an offset is UTC
too; one with an offset (``+02:00``, ``Z``) is converted. A date alone is its midnight.
"""

from __future__ import annotations

from datetime import UTC, datetime

EXAMPLE = "2026-11-29 or 2026-11-29T14:30 (UTC)"
"""What the message of a value that is not a moment suggests instead."""


class NotAnInstantError(ValueError):
    """A filter value that is not an ISO date or date-time (the message says so)."""


def parse_instant(text: str, what: str) -> float:
    """``text`` (an ISO date or date-time) as epoch seconds.

    Args:
        text: e.g. ``"2026-11-29"``, ``"2026-11-29T14:30"``, ``"2026-11-29 14:30:05Z"``.
        what: the filter's name for the message (``"created after"``).

    Raises:
        NotAnInstantError: not a date or date-time (or beyond what a date can hold).

    Example:
        >>> parse_instant("1970-01-02", "created after")
        86400.0
    """
    try:
        moment = datetime.fromisoformat(text.strip())
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        at = moment.timestamp()
        datetime.fromtimestamp(at, UTC)  # 9999-12-31T23:59:59.9999995 rounds past the end
        return at
    except (ValueError, OverflowError):
        raise NotAnInstantError(
            f"{what}: {text!r} is not a date or time; write it like {EXAMPLE}"
        ) from None


def format_instant(at: float) -> str:
    """Epoch seconds as the shortest ISO text :func:`parse_instant` reads back (UTC).

    Example:
        >>> format_instant(86400.0), format_instant(86400.0 + 3600 + 30)
        ('1970-01-02', '1970-01-02T01:00:30')
    """
    moment = datetime.fromtimestamp(at, UTC).replace(tzinfo=None)
    if moment.microsecond:
        return moment.isoformat()
    if moment.second:
        return moment.isoformat(timespec="seconds")
    if moment.hour or moment.minute:
        return moment.isoformat(timespec="minutes")
    return moment.date().isoformat()  # (strftime's %Y drops the zeros of year 1)
