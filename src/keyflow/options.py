"""Checking option values: durations in seconds and counts.

Every number a user gives keyflow (timeouts, delays, grace periods, backoffs, buffer
sizes) is checked where it is given, so a NaN or a string never reaches a timer or a
stored run: asyncio's timers misbehave on NaN, and storage cannot hold it.
"""

from __future__ import annotations

import math

from .errors import ConfigurationError
from .jsonvalue import safe_repr


def seconds(value: object, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite number of seconds, >= 0 (> 0 when ``positive``).

    Raises:
        ConfigurationError: naming ``name`` and the value.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, got {safe_repr(value)}"
        )
    return float(value)


def optional_seconds(value: object, name: str, *, positive: bool = False) -> float | None:
    """:func:`seconds`, or None for None."""
    return None if value is None else seconds(value, name, positive=positive)


def count(value: object, name: str, *, minimum: int) -> int:
    """``value`` as an integer >= ``minimum``.

    Raises:
        ConfigurationError: naming ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {safe_repr(value)}")
    return value
