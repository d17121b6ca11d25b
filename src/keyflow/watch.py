"""Change watches: "something changed, on these keys", without building events.

A dashboard only needs to know *that* a widget may show something new; building a full
:class:`~keyflow.events.RunChanged` (a snapshot of the run) for every change would
cost the scheduler more than the dashboard is worth. The hub adds each change's key to
one set (whatever the number of watches) and, once per turn of the event loop, hands
what gathered to every :class:`ChangeWatch`, which keeps it until read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .inbox import Inbox

MAX_KEYS = 1_000
"""More changed keys than this between two looks: report "everything" instead."""


@dataclass
class Changes:
    """What changed since the last look."""

    keys: set[str] = field(default_factory=set)
    """Concurrency keys of the runs that changed."""
    coalesced: bool = False
    """A trigger joined a run."""
    everything: bool = False
    """Too much to list, or the source cannot tell: assume anything changed."""

    def touches(self, key: str | None) -> bool:
        """May ``key`` (None: keyless runs, or "anything") have changed?"""
        return self.everything or key is None or key in self.keys

    def merge(self, other: Changes) -> None:
        """Add ``other``'s changes to these."""
        self.coalesced = self.coalesced or other.coalesced
        self.everything = self.everything or other.everything
        if not self.everything:
            self.keys |= other.keys
            if len(self.keys) > MAX_KEYS:
                self.everything, self.keys = True, set()


class ChangeWatch(Inbox[Changes]):
    """Accumulates changes until read; ``async for changes in watch`` waits for them."""

    def __init__(self, on_close: Callable[[ChangeWatch], None] | None = None) -> None:
        super().__init__()
        self._changes = Changes()
        self._pending = False
        self._on_close = on_close

    def absorb(self, changes: Changes) -> None:
        """Add changes gathered elsewhere (a fan-out of one watch to many readers)."""
        self._changes.merge(changes)
        if not self._pending:
            self._pending = True
            self._wake()

    def take(self) -> Changes | None:
        """What changed since the last take, or None if nothing did."""
        if not self._pending:
            return None
        changes, self._changes, self._pending = self._changes, Changes(), False
        return changes

    def _next_item(self) -> Changes | None:
        return self.take()

    def _closing(self) -> None:
        if self._on_close is not None:
            self._on_close(self)
