"""Typed events and the hub that fans them out.

Every run change and every coalesced trigger is published. Subscribers each get a
bounded buffer: a slow one loses its oldest events (counted in ``dropped``) and never
slows the scheduler, which only appends to a deque.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, TypeAlias

from .runs import JSONObject, LogEntry, Progress, Run, RunStatus
from .watch import MAX_KEYS, Changes, ChangeWatch

if TYPE_CHECKING:
    from .records import RunRecord


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


class Subscription:
    """An async iterator over events, with a bounded buffer.

    Use as ``async with kf.events() as events: async for event in events: ...``;
    leaving the block unsubscribes. Iteration ends when the scheduler stops.
    """

    def __init__(self, hub: EventHub, buffer: int) -> None:
        if buffer < 1:
            raise ValueError("buffer must be >= 1")
        self._hub = hub
        self._buffer: deque[Event] = deque()
        self._capacity = buffer
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0
        """Events lost because the buffer was full (the oldest go first)."""

    def _push(self, event: Event) -> None:
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(event)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Unsubscribe; iteration ends once the buffered events are consumed."""
        self._closed = True
        self._hub._subscribers.discard(self)
        self._hub._refresh()
        self._wake()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._buffer.popleft()

    def get_nowait(self) -> Event | None:
        """The next buffered event, or None."""
        return self._buffer.popleft() if self._buffer else None

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventHub:
    """Publishes events to every live subscription."""

    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer
        # Weak: a subscription the caller dropped without closing simply goes away.
        self._subscribers: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self.published = 0
        """Events published so far."""
        self._watches: list[ChangeWatch] = []
        self._changed_keys: set[str | None] = set()  # since the last flush to the watches
        self._coalesced = False
        self._flush_scheduled = False
        self._full = False  # a subscription wants whole events
        self.active = False
        """True when someone listens (events or watches); kept as a plain attribute
        because the scheduler reads it on every change."""

    def _refresh(self) -> None:
        self._full = bool(self._subscribers)
        self.active = self._full or bool(self._watches)

    # -- what the scheduler calls when something happens (only while ``active``) --

    def run_changed(self, record: RunRecord, previous: RunStatus | None, at: float) -> None:
        """A run was created (``previous`` None) or changed status."""
        if self._full:
            self.publish(RunChanged(record.snapshot(), previous, at))
        if self._watches:
            self._changed_keys.add(record.key)
            if not self._flush_scheduled:
                self._schedule_flush()

    def trigger_coalesced(
        self, run: RunRecord, entry: tuple[float, JSONObject, str | None]
    ) -> None:
        """A trigger joined ``run``; ``entry`` is ``(at, input, parent_run_id)``."""
        if self._full:
            at, data, parent = entry
            self.publish(
                TriggerCoalesced(run.id, run.job, run.key, data, run.trigger_count, parent, at)
            )
        if self._watches:
            self._changed_keys.add(run.key)
            self._coalesced = True
            if not self._flush_scheduled:
                self._schedule_flush()

    def progressed(self, record: RunRecord, progress: Progress, at: float) -> None:
        """A handler reported progress."""
        if self._full:
            self.publish(RunProgressed(record.id, record.key, progress, at))
        if self._watches:
            self._changed_keys.add(record.key)
            if not self._flush_scheduled:
                self._schedule_flush()

    def logged(self, record: RunRecord, entry: LogEntry) -> None:
        """A handler logged a line."""
        if self._full:
            self.publish(RunLogged(record.id, entry))
        if self._watches:
            self._changed_keys.add(record.key)
            if not self._flush_scheduled:
                self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Watches hear of changes once per turn of the loop, not once per change.
        self._flush_scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        keys, self._changed_keys = self._changed_keys, set()
        keys.discard(None)
        changes = Changes(coalesced=self._coalesced)
        self._coalesced = False
        if len(keys) > MAX_KEYS:
            changes.everything = True
        else:
            changes.keys = keys  # type: ignore[assignment]  # None was discarded
        for watch in self._watches:
            watch.absorb(changes)

    def watch(self) -> ChangeWatch:
        """A :class:`~keyflow.watch.ChangeWatch` of every change from now on.

        Cheap: no events are built for it. ``close()`` it when done.
        """
        watch = ChangeWatch(on_close=self._unwatch)
        self._watches.append(watch)
        self._refresh()
        return watch

    def _unwatch(self, watch: ChangeWatch) -> None:
        if watch in self._watches:
            self._watches.remove(watch)
        self._refresh()

    def subscribe(self, buffer: int | None = None) -> Subscription:
        """A new subscription receiving every event from now on."""
        sub = Subscription(self, buffer or self.buffer)
        self._subscribers.add(sub)
        self._refresh()
        return sub

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber; never blocks."""
        self.published += 1
        subscribers = list(self._subscribers)
        if not subscribers:  # every subscription was garbage-collected
            self._refresh()
        for sub in subscribers:
            sub._push(event)

    @property
    def dropped(self) -> int:
        """Events dropped across the live subscriptions."""
        return sum(sub.dropped for sub in list(self._subscribers))

    def close(self) -> None:
        """End every subscription and watch."""
        for sub in list(self._subscribers):
            sub.close()
        for watch in list(self._watches):
            watch.close()
