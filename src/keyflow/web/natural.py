"""Natural order of keys: ``repo4`` before ``repo10``, as a person counts."""

from __future__ import annotations

import re
from collections.abc import Iterable

_DIGITS = re.compile(r"(\d+)")

NaturalKey = tuple[tuple[str | int, ...], str]


def natural_key(text: str) -> NaturalKey:
    """The sort key of ``text``: runs of digits compare as numbers.

    ``re.split`` with a group alternates text and digits, so every key has text at even
    positions and numbers at odd ones, and tuples of two keys always compare like with
    like. The text itself breaks ties (``"a07"`` vs ``"a7"``).
    """
    parts = _DIGITS.split(text)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text


class NaturalOrder:
    """Sorts keys naturally, remembering each key's sort key (keys repeat poll to poll)."""

    def __init__(self, remember: int = 200_000) -> None:
        self._keys: dict[str, NaturalKey] = {}
        self._remember = remember

    def key(self, text: str) -> NaturalKey:
        """The (cached) natural sort key of ``text``."""
        found = self._keys.get(text)
        if found is None:
            if len(self._keys) >= self._remember:
                self._keys.clear()
            found = self._keys[text] = natural_key(text)
        return found

    def sorted(self, texts: Iterable[str]) -> list[str]:
        """``texts`` in natural order."""
        return sorted(texts, key=self.key)
