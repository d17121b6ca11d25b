"""Natural order for names with numbers in them: ``repo2`` before ``repo10``."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that compares the runs of digits in ``name`` as numbers.

    Example:
        >>> sorted(["repo10", "repo4", "org2:repo1"], key=natural_key)
        ['org2:repo1', 'repo4', 'repo10']
    """
    # Tag each part so numbers and text never compare with each other (0: text, 1: number).
    return tuple(
        (1, int(part)) if part.isdigit() else (0, part) for part in _DIGITS.split(name) if part
    )
