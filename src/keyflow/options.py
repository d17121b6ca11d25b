"""Checking option values: durations in seconds and counts.

Every number a user gives keyflow (timeouts, delays, grace periods, backoffs, buffer
sizes) is checked where it is given, so a NaN, a string or an absurd size never reaches
a timer, an allocation or a stored run: asyncio's timers misbehave on NaN, and storage
cannot hold it.
"""

from __future__ import annotations

from .errors import ConfigurationError
from .jsonvalue import is_finite_number, safe_repr

MAX_SECONDS = 315_360_000
"""The longest duration keyflow takes (ten years): any longer is a mistake."""


def seconds(value: object, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite number of seconds, >= 0 (> 0 when ``positive``).

    Raises:
        ConfigurationError: naming ``name`` and the value.
    """
    number = float(value) if is_finite_number(value) else None
    if number is None or number < 0 or number > MAX_SECONDS or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, at most {MAX_SECONDS:,} "
            f"(ten years); got {safe_repr(value)[:100]}"
        )
    return number


def optional_seconds(value: object, name: str, *, positive: bool = False) -> float | None:
    """:func:`seconds`, or None for None."""
    return None if value is None else seconds(value, name, positive=positive)


def count(value: object, name: str, *, minimum: int, maximum: int = 10**9) -> int:
    """``value`` as an integer from ``minimum`` to ``maximum``.

    Raises:
        ConfigurationError: naming ``name`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigurationError(
            f"{name} must be an integer >= {minimum} (and at most {maximum:,}), "
            f"got {safe_repr(value)[:100]}"
        )
    return value
