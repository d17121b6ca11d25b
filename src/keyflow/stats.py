"""Read-only views of the scheduler: lane snapshots and statistics (frozen dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .state import LaneState


@dataclass(frozen=True, slots=True)
class LaneSnapshot:
    """One concurrency key's lane at a moment."""

    key: str
    """The concurrency key."""
    state: LaneState
    """``idle``, ``running`` or ``running+queued``."""
    limit: int
    """How many runs of the key may execute at once."""
    running: tuple[str, ...]
    """Runs holding a slot: running, about to run, or in a retry backoff."""
    waiting: tuple[str, ...]
    """Queued runs, in the order they will start."""
    scheduled: tuple[str, ...]
    """Delayed runs not due yet (they enter the queue when due)."""
    coalesced: int
    """Triggers coalesced into runs of this key since keyflow started."""
    paused: bool = False
    """The lane is paused (``Keyflow.pause(key=...)``): none of its runs starts."""


@dataclass(frozen=True, slots=True)
class TriggerCounts:
    """Triggers by disposition since start."""

    created: int
    queued: int
    coalesced: int
    idempotent: int

    @property
    def total(self) -> int:
        """All accepted triggers."""
        return self.created + self.queued + self.coalesced + self.idempotent


@dataclass(frozen=True, slots=True)
class Statistics:
    """Counters and gauges of a running scheduler."""

    triggers: TriggerCounts
    """Accepted triggers by disposition."""
    unfinished: Mapping[str, int]
    """Unfinished runs by status (scheduled, queued, pending, running)."""
    started: int
    """Attempts started."""
    completed: int
    """Runs completed."""
    failed: int
    """Runs failed."""
    cancelled: int
    """Runs cancelled."""
    retried: int
    """Attempts that failed and were retried."""
    interrupted: int
    """Attempts interrupted by a stop."""
    lanes: int
    """Keys with unfinished runs."""
    lanes_busy: int
    """Keys whose lane holds a slot."""
    workers: int
    """Worker count."""
    workers_busy: int
    """Workers executing a run."""
    events_published: int
    """Events published."""
    events_dropped: int
    """Events dropped by slow subscribers (live subscriptions)."""
    storage_batches: int
    """Batches written to storage."""
    storage_error: str | None
    """The latest storage write failure, if any."""
    paused: Paused = field(default_factory=lambda: Paused(frozenset(), frozenset()))
    """What is paused."""


@dataclass(frozen=True, slots=True)
class Paused:
    """The jobs and lanes paused now (see ``Keyflow.pause``)."""

    jobs: frozenset[str]
    """Jobs none of whose runs start."""
    keys: frozenset[str]
    """Lanes none of whose runs start."""
