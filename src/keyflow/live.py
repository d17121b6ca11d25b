"""The core's live state: unfinished runs, lanes, the ready queue and timers.

The ground the core's layers share (:mod:`keyflow.runtime` moves runs on,
:mod:`keyflow.admission` takes triggers, :mod:`keyflow.core` reads): the in-memory
truth of one process, and the bookkeeping every change goes through (status counts,
the ready queue, timers, waking workers and waiters). Everything here is synchronous
and runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .commit import CommitPipeline
from .due_timers import DueTimers
from .errors import ConfigurationError
from .hub import EventHub
from .records import RunIds, RunRecord
from .runs import RunStatus
from .state import BECOME_DUE, PENDING, PROMOTE, QUEUED, RESUME, SCHEDULED, Lane
from .txn import Txn
from .waiters import Waiters

if TYPE_CHECKING:
    from .clock import Clock
    from .jobs import Job
    from .port import RemoteTriggers
    from .storage_backends.base import StorageBackend

logger = logging.getLogger("keyflow.core")

_PENDING: Final = PENDING.ordinal
_QUEUED: Final = QUEUED.ordinal
MAX_TRACKED_KEYS: Final = 10_000
"""Idle keys remembered for ``keys()`` (with their coalesced counts), newest kept."""


@dataclass(slots=True)
class Counters:
    """Mutable totals since start."""

    created: int = 0
    queued: int = 0
    coalesced: int = 0
    idempotent: int = 0
    started: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    interrupted: int = 0


class LiveState:
    """The unfinished runs of one process and the bookkeeping of their changes."""

    def __init__(
        self,
        *,
        backend: StorageBackend,
        jobs: Mapping[str, Job],
        clock: Clock,
        hub: EventHub,
        lane_limit: Callable[[str], int],
        on_cancel_running: Callable[[RunRecord], None],
        refuse: Callable[[], None],
    ) -> None:
        self.jobs = jobs
        """The registered jobs by name (the scheduler's own dict: jobs added later count)."""
        self.backend = backend
        self.clock = clock
        self.now: Callable[[], float] = clock.now
        """The clock's ``now``, bound once: read on every run change."""
        self.hub = hub
        self.lane_limit = lane_limit
        self.idle_workers: list[asyncio.Future[None]] = []
        """Futures of workers waiting for a pending run; the pool adds them, one is woken
        per run that becomes pending."""
        self._on_cancel_running = on_cancel_running
        self._refuse = refuse
        self.accepting = False
        """True while the scheduler takes triggers; else :meth:`accept` calls ``refuse``,
        which raises."""
        self.accepting_chained = False
        """True while triggers from running handlers (``ctx.trigger``) are taken: also
        during a stop's grace, since a chained trigger is part of its run's work."""
        self.ids = RunIds()
        self.records: dict[str, RunRecord] = {}
        """Unfinished runs by id."""
        self.lanes: dict[str, Lane] = {}
        """Non-empty lanes by key."""
        self.idempotency: dict[tuple[str, str], RunRecord] = {}
        """Idempotency keys of unfinished runs (finished ones are asked of storage)."""
        self.idempotency_lookups: dict[tuple[str, str], int] = {}
        """Keys being looked up in storage now (how many lookups of each)."""
        self.idempotency_ended: dict[tuple[str, str], str] = {}
        """Runs that ended (left :attr:`idempotency`) while their key was being looked up:
        a lookup begun before the run was stored misses it, and memory forgets it."""
        self.ready: deque[RunRecord] = deque()
        """Pending runs, in the order workers should take them."""
        self.timers = DueTimers(clock, self._due)
        """The timers of scheduled runs (delays, retry backoffs)."""
        self.key_coalesced: OrderedDict[str, int] = OrderedDict()
        """Coalesced triggers per key, least recently active first (bounded)."""
        self.status_counts: list[int] = [0] * len(RunStatus)
        """Unfinished runs by status ordinal."""
        self.counters = Counters()
        self.paused_jobs: set[str] = set()
        self.paused_keys: set[str] = set()
        self.parked: dict[str, RunRecord] = {}
        """Pending runs a pause holds back (in the order workers met them); they keep
        their lane slots, so the lane's order and exclusion hold."""
        self.waiters = Waiters()
        self.remote: RemoteTriggers | None = None
        """Shared storage: triggers are decided in the database (see ``Core.commit``)."""
        self.pipeline = CommitPipeline(backend, settle=self.settle, roll_back=self.roll_back)
        self._write_new = backend.write_new_sync
        # A backend holding our records needs to hear only of new and finished runs.
        self._touch_all = not backend.shares_records

    def settle(self, txn: Txn) -> None:
        """``txn`` is durable (the commit pipeline calls it): see the admission layer."""
        raise NotImplementedError

    def roll_back(self, txn: Txn) -> None:
        """``txn`` will never be durable (the commit pipeline calls it): see admission."""
        raise NotImplementedError

    # -- lanes -------------------------------------------------------------------

    def new_lane(self, key: str, *, strict: bool = True) -> Lane:
        """A lane for ``key`` with its limit (not registered yet).

        With ``strict=False`` (restoring stored runs, showing a lane), a ``lane_limit``
        function that fails gives the safest limit, 1, with a warning: a bad function
        must not keep keyflow from starting.

        Raises:
            ConfigurationError: the ``lane_limit`` function failed or returned a bad value.
        """
        return Lane(key, self.limit_of(key, strict=strict))

    def limit_of(self, key: str, *, strict: bool = True) -> int:
        """The lane limit of ``key`` (see :meth:`new_lane` for ``strict``)."""
        try:
            return self.lane_limit(key)
        except ConfigurationError as exc:
            if strict:
                raise
            logger.warning("%s; lane %r runs one at a time meanwhile", exc, key)
            return 1

    # -- the ready queue ---------------------------------------------------------

    def claim(self) -> RunRecord | None:
        """The next pending run for a worker to start, or None if there is none now.

        Runs cancelled while they waited in the queue are passed over.
        """
        ready = self.ready
        while ready:
            record = ready.popleft()
            if record.status is PENDING:
                return record
        return None

    def dispatch(self, promoted: list[Any], reported: RunRecord | None = None) -> None:
        """Hand runs that just became pending to the workers.

        They all came from ``queued`` except ``reported``, whose move the caller reported.
        """
        ready = self.ready
        counts = self.status_counts
        for record in promoted:
            if record is not reported:
                # _moved(record, QUEUED), inlined: this runs once per run.
                counts[_QUEUED] -= 1
                counts[_PENDING] += 1
                if self._touch_all:
                    self.pipeline.touch(record)
                if self.hub.active:
                    self.hub.run_changed(record, QUEUED, self.now())
            ready.append(record)
            if self.idle_workers:
                self._wake_worker()
        if self.waiters.changes:
            self.waiters.changed()

    def adopt(self, record: RunRecord) -> None:
        """Execute a pending run leased from shared storage (it holds its slot there).

        Its local lane only mirrors the runs this process leases: the database keeps
        each lane's limit and order, and the local lane never holds a run back (a run
        restored into it takes a slot whatever the limit).
        """
        self.records[record.id] = record
        self.status_counts[_PENDING] += 1
        key = record.key
        if key is not None:
            lane = self.lanes.get(key)
            if lane is None:
                lane = self.lanes[key] = self.new_lane(key, strict=False)
            lane.restore(record)
        if self.waiters.changes:
            self.waiters.changed()
        self._dispatch_one(record)

    def promote_keyless(self, record: RunRecord) -> None:
        """A new due run without a key has no lane to wait in: it is pending at once."""
        record.apply(PROMOTE)
        self._moved(record, QUEUED)
        self._dispatch_one(record)

    def ready_again(self, record: RunRecord) -> None:
        """A pending run that was held back (a crash suspect) is ready: first in line."""
        self.ready.appendleft(record)
        if self.idle_workers:
            self._wake_worker()

    def _dispatch_one(self, record: RunRecord) -> None:
        self.ready.append(record)
        if self.idle_workers:
            self._wake_worker()

    def _wake_worker(self) -> None:
        idle = self.idle_workers
        while idle:
            waiter = idle.pop()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- timers ------------------------------------------------------------------

    def arm(self, record: RunRecord) -> None:
        """Set (or reset) the timer of a scheduled run at its due time."""
        self.timers.arm(record.id, record.due_at)

    def _due(self, run_id: str) -> None:
        self.timers.disarm(run_id)
        record = self.records.get(run_id)
        if record is None or record.status is not SCHEDULED:
            return
        if record.key is not None:
            promoted = self.lanes[record.key].become_due(record)
        else:
            if record.attempt == 0:
                record.apply(BECOME_DUE)
                record.apply(PROMOTE)
            else:
                record.apply(RESUME)
            promoted = [record]
        self._moved(record, SCHEDULED)
        self.dispatch(promoted, reported=record)

    # -- bookkeeping -------------------------------------------------------------

    def _moved(self, record: RunRecord, previous: RunStatus) -> None:
        counts = self.status_counts
        counts[previous.ordinal] -= 1
        status = record.status
        if not status.is_terminal:
            counts[status.ordinal] += 1
            if self._touch_all:
                self.pipeline.touch(record)
        else:
            self.pipeline.touch(record)
        if self.hub.active:
            self.hub.run_changed(record, previous, self.now())
        if self.waiters.changes:
            self.waiters.changed()

    def _count_key_coalesced(self, key: str, add: int = 1) -> None:
        # Bounded by evicting the key that went idle (or was first seen) longest ago.
        # An OrderedDict: a plain dict's first key is found by skipping every deleted
        # slot before it, which turns eviction quadratic under many keys.
        tracked = self.key_coalesced
        tracked[key] = tracked.get(key, 0) + add
        tracked.move_to_end(key)  # now the most recent
        if len(tracked) > MAX_TRACKED_KEYS:
            tracked.popitem(last=False)
