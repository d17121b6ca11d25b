"""The hub that fans run changes out to event subscriptions and change watches.

The scheduler's core calls it on every change while someone listens, so it is on the
hot path (and in the compiled build, see :mod:`keyflow.build`).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from .events import (
    Event,
    RunChanged,
    RunLogged,
    RunProgressed,
    Subscription,
    TriggerCoalesced,
)
from .jsonvalue import copy_json_dict
from .runs import JSONObject, LogEntry, Progress, RunStatus
from .watch import MAX_KEYS, Changes, ChangeWatch

if TYPE_CHECKING:
    from collections.abc import Callable

    from .records import RunRecord


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
        self._everything = False
        self._flush_scheduled = False
        self._full = False  # a subscription wants whole events
        self.active = False
        """True when someone listens (events or watches); kept as a plain attribute
        because the scheduler reads it on every change."""
        self.closed = False
        """True once the scheduler stopped: new subscriptions and watches end at once."""
        self.on_active: Callable[[], None] | None = None
        """Called when someone begins listening (the hub turns :attr:`active`)."""

    def _refresh(self) -> None:
        was = self.active
        self._full = bool(self._subscribers)
        self.active = self._full or bool(self._watches)
        if self.active and not was and self.on_active is not None:
            self.on_active()

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
            # A copy: the entry's input is the run's own (and, with "latest", its input).
            self.publish(
                TriggerCoalesced(
                    run.id, run.job, run.key, copy_json_dict(data), run.trigger_count, parent, at
                )
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
            self.publish(RunLogged(record.id, entry.copy() if entry.data else entry))
        if self._watches:
            self._changed_keys.add(record.key)
            if not self._flush_scheduled:
                self._schedule_flush()

    def pause_changed(self, key: str | None) -> None:
        """A lane (``key``) or a job (None: any lane may show it) was paused or resumed."""
        if self._watches:
            if key is None:
                self._everything = True
            else:
                self._changed_keys.add(key)
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
        everything, self._everything = self._everything, False
        if everything or len(keys) > MAX_KEYS:
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
        if self.closed:
            watch.close()
            return watch
        self._watches.append(watch)
        self._refresh()
        return watch

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop publishing to ``sub`` (its ``close()`` calls this)."""
        self._subscribers.discard(sub)
        self._refresh()

    def _unwatch(self, watch: ChangeWatch) -> None:
        if watch in self._watches:
            self._watches.remove(watch)
        self._refresh()

    def subscribe(self, buffer: int | None = None) -> Subscription:
        """A new subscription receiving every event from now on."""
        sub = Subscription(self, buffer or self.buffer)
        if self.closed:
            sub.close()
            return sub
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
        """End every subscription and watch, and those made from now on."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.close()
        for watch in list(self._watches):
            watch.close()
