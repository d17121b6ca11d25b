"""Typed events, and the subscriptions that receive them.

Every run change and every coalesced trigger is published (by :mod:`keyflow.hub`).
Subscribers each get a bounded buffer: a slow one loses its oldest events (counted in
``dropped``) and never slows the scheduler, which only appends to a deque.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeAlias

from .inbox import Inbox
from .runs import JSONObject, LogEntry, Progress, Run, RunStatus

if TYPE_CHECKING:
    from .hub import EventHub


@dataclass(frozen=True, slots=True)
class RunChanged:
    """A run was created or changed status."""

    kind: ClassVar[str] = "run"
    run: Run
    """The run after the change."""
    previous: RunStatus | None
    """The status before; None for a new run."""
    at: float
    """When (epoch seconds)."""


@dataclass(frozen=True, slots=True)
class TriggerCoalesced:
    """A trigger joined an existing run instead of creating one."""

    kind: ClassVar[str] = "coalesced"
    run_id: str
    """The run it joined."""
    job: str
    """The job."""
    concurrency_key: str | None
    """The lane."""
    input: JSONObject
    """The trigger's own input."""
    trigger_count: int
    """The joined run's trigger count after this trigger."""
    parent_run_id: str | None
    """The run whose handler sent the trigger, if any."""
    at: float
    """When the trigger was accepted."""


@dataclass(frozen=True, slots=True)
class RunProgressed:
    """A handler reported progress."""

    kind: ClassVar[str] = "progress"
    run_id: str
    """The run."""
    concurrency_key: str | None
    """The lane."""
    progress: Progress
    """The new progress."""
    at: float
    """When."""


@dataclass(frozen=True, slots=True)
class RunLogged:
    """A handler logged a line."""

    kind: ClassVar[str] = "log"
    run_id: str
    """The run."""
    entry: LogEntry
    """The line."""


Event: TypeAlias = RunChanged | TriggerCoalesced | RunProgressed | RunLogged
"""Anything :meth:`keyflow.Keyflow.events` yields."""


class Subscription(Inbox[Event]):
    """An async iterator over events, with a bounded buffer.

    Use as ``async with kf.events() as events: async for event in events: ...``;
    leaving the block unsubscribes. Iteration ends when the scheduler stops.
    """

    def __init__(self, hub: EventHub, buffer: int) -> None:
        if buffer < 1:
            raise ValueError("buffer must be >= 1")
        super().__init__()
        self._hub = hub
        self._buffer: deque[Event] = deque()
        self._capacity = buffer
        self.dropped = 0
        """Events lost because the buffer was full (the oldest go first)."""

    def _push(self, event: Event) -> None:
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(event)
        self._wake()

    def _next_item(self) -> Event | None:
        return self._buffer.popleft() if self._buffer else None

    def _closing(self) -> None:
        self._hub.unsubscribe(self)

    def get_nowait(self) -> Event | None:
        """The next buffered event, or None."""
        return self._next_item()
