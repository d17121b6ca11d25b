"""The scheduler's in-memory core: lanes, unfinished runs, timers and the ready queue.

Everything here is synchronous and runs on the event loop thread. Every status change
goes through :mod:`keyflow.state`; every change is handed to the commit pipeline and, when
someone listens, published as an event.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from .coalesce import Coalesce
from .commit import CommitPipeline, Join, Txn
from .errors import InvalidInputError
from .events import EventHub, RunChanged, RunLogged, RunProgressed, TriggerCoalesced
from .jsonvalue import NotJSONError, json_object_copy
from .records import RunIds, RunRecord
from .runs import (
    CoalescedTrigger,
    Disposition,
    JSONObject,
    LogEntry,
    Progress,
    Run,
    RunStatus,
    TriggerResult,
)
from .state import Action, Lane, PlanKind, new_run_disposition, plan_trigger
from .stats import LaneSnapshot

if TYPE_CHECKING:
    from .clock import Clock, TimerHandle
    from .storage_backends.base import StorageBackend
    from .triggers import PreparedTrigger

S = RunStatus
MAX_TRACKED_KEYS = 10_000
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


class Core:
    """Owns lanes and unfinished runs; decides, applies, settles and rolls back."""

    def __init__(
        self,
        *,
        backend: StorageBackend,
        clock: Clock,
        hub: EventHub,
        lane_limit: Callable[[str], int],
        on_ready: Callable[[], None],
        on_cancel_running: Callable[[RunRecord], None],
    ) -> None:
        self.clock = clock
        self.hub = hub
        self._lane_limit = lane_limit
        self._on_ready = on_ready
        self._on_cancel_running = on_cancel_running
        self.ids = RunIds()
        self.records: dict[str, RunRecord] = {}
        """Unfinished runs by id."""
        self.lanes: dict[str, Lane] = {}
        """Non-empty lanes by key."""
        self.idempotency: dict[tuple[str, str], RunRecord] = {}
        """Idempotency keys of unfinished runs (finished ones are asked of storage)."""
        self.ready: deque[RunRecord] = deque()
        """Pending runs, in the order workers should take them."""
        self.timers: dict[str, TimerHandle] = {}
        self.key_coalesced: OrderedDict[str, int] = OrderedDict()
        self.status_counts: list[int] = [0] * len(RunStatus)
        """Unfinished runs by status ordinal."""
        self.counters = Counters()
        self._run_waiters: dict[str, list[asyncio.Future[Run]]] = {}
        self._change_waiters: list[asyncio.Future[None]] = []
        self.pipeline = CommitPipeline(backend, settle=self.settle, roll_back=self.roll_back)
        # A backend holding our records needs to hear only of new and finished runs.
        self._touch_all = not backend.shares_records

    # -- triggers ----------------------------------------------------------------

    def apply_trigger(self, trig: PreparedTrigger, txn: Txn) -> TriggerResult:
        """Decide and apply one trigger in memory, recording how to undo it in ``txn``.

        Raises:
            InvalidInputError: a merge function failed; the caller rolls ``txn`` back.
        """
        job = trig.job
        key = trig.key
        if trig.idempotency_key is not None:
            existing = self.idempotency.get((job.name, trig.idempotency_key))
            if existing is not None:
                result = TriggerResult(existing.id, Disposition.IDEMPOTENT, job.name, existing.key)
                txn.results.append(result)
                return result
        lane = self.lanes.get(key) if key is not None else None
        plan = plan_trigger(lane, job.name, trig.coalesce)
        now = self.clock.now()
        due_at = now + trig.delay
        if plan.kind is PlanKind.JOIN:
            assert plan.target is not None
            assert trig.coalesce is not None
            target = self.records[plan.target.id]
            self._join(target, trig, trig.coalesce, txn, now, due_at)
            record = target
            disposition = Disposition.COALESCED
        else:
            due = trig.delay <= 0
            if lane is None or not due:
                disposition = Disposition.CREATED
            else:
                disposition = new_run_disposition(lane, plan, due=due)
            record = RunRecord(
                self.ids.next(),
                job.name,
                key,
                S.QUEUED if due else S.SCHEDULED,
                trig.input,
                now,
                due_at,
                job.retries + 1,
                trig.labels,
                trig.idempotency_key,
                trig.parent_run_id,
                plan.by_queue,
                False,
            )
            self.records[record.id] = record
            self.status_counts[record.status.ordinal] += 1
            if key is not None:
                if lane is None:
                    lane = self.lanes[key] = Lane(key, self._lane_limit(key))
                lane.add(record)  # not durable yet: it waits for settle() to take a slot
            txn.created.append(record)
            if plan.victims:
                txn.victims.extend(self.records[v.id] for v in plan.victims)
        if trig.idempotency_key is not None:
            self.idempotency[job.name, trig.idempotency_key] = record
            txn.idempotency.append((job.name, trig.idempotency_key, record))
        result = TriggerResult(record.id, disposition, job.name, key)
        txn.results.append(result)
        return result

    def _join(
        self,
        target: RunRecord,
        trig: PreparedTrigger,
        coalesce: Coalesce,
        txn: Txn,
        now: float,
        due_at: float,
    ) -> None:
        new_input = target.input
        if target.attempt == 0:
            policy = coalesce.input
            if policy == "latest":
                new_input = trig.input
            elif callable(policy):
                new_input = _merge(policy, target.input, trig.input, trig.job.name)
        entry = CoalescedTrigger(now, trig.input, trig.parent_run_id)
        txn.joined.append(
            Join(target, target.input, target.trigger_count, target.due_at, target.coalesced, entry)
        )
        target.input = new_input
        target.trigger_count += 1
        target.add_coalesced(entry)
        if target.status is S.SCHEDULED and target.attempt == 0 and due_at < target.due_at:
            target.due_at = due_at  # the run covers this trigger no later than it asked
        target.unsettled += 1

    def settle(self, txn: Txn) -> None:
        """``txn`` is durable: let its runs start, arm timers, publish events."""
        publish = self.hub.active
        counters = self.counters
        for result in txn.results:
            disposition = result.disposition
            if disposition is Disposition.CREATED:
                counters.created += 1
            elif disposition is Disposition.QUEUED:
                counters.queued += 1
            elif disposition is Disposition.IDEMPOTENT:
                counters.idempotent += 1
        for record in txn.created:
            record.durable = True
        for record in txn.created:
            if publish:
                self.hub.publish(RunChanged(record.snapshot(), None, record.created_at))
            if record.status is S.SCHEDULED:
                self._arm(record)
            elif record.key is None:
                record.apply(Action.PROMOTE)
                self._moved(record, S.QUEUED)
                self._dispatch_one(record)
            else:
                lane = self.lanes.get(record.key)
                if lane is not None:
                    self._dispatch(lane.promote())
        for join in txn.joined:
            run = join.run
            run.unsettled -= 1
            self.counters.coalesced += 1
            if run.key is not None:
                self._count_key_coalesced(run.key)
            if run.status is S.SCHEDULED and run.due_at < join.old_due_at:
                self._arm(run)
            if publish:
                self.hub.publish(
                    TriggerCoalesced(
                        run.id,
                        run.job,
                        run.key,
                        join.entry.input,
                        run.trigger_count,
                        join.entry.parent_run_id,
                        join.entry.at,
                    )
                )
        for victim in txn.victims:
            if not victim.status.is_terminal:
                self.cancel(victim)
        if self._change_waiters:
            self._wake_change_waiters()

    def roll_back(self, txn: Txn) -> None:
        """``txn`` will never be durable: undo it in memory, newest change first."""
        for job, idem, record in reversed(txn.idempotency):
            if self.idempotency.get((job, idem)) is record:
                del self.idempotency[job, idem]
        for join in reversed(txn.joined):
            run = join.run
            run.input = join.old_input
            run.trigger_count = join.old_trigger_count
            run.due_at = join.old_due_at
            run.coalesced = join.old_coalesced
            run.unsettled -= 1
        for record in reversed(txn.created):
            if self.records.pop(record.id, None) is None:
                continue
            self.status_counts[record.status.ordinal] -= 1
            if record.key is not None:
                lane = self.lanes.get(record.key)
                if lane is not None:
                    self._dispatch(lane.remove_new(record))
                    if lane.is_empty:
                        del self.lanes[record.key]

    # -- execution ---------------------------------------------------------------

    def take_ready(self) -> RunRecord | None:
        """The next pending run for a worker, or None."""
        ready = self.ready
        while ready:
            record = ready.popleft()
            if record.status is S.PENDING:
                return record
        return None

    def start(self, record: RunRecord) -> None:
        """A worker starts an attempt of ``record``."""
        record.apply(Action.START)
        record.attempt += 1
        record.started_at = self.clock.now()
        self.counters.started += 1
        self._moved(record, S.PENDING)

    def complete(self, record: RunRecord, output: Any) -> None:
        """The handler returned ``output``."""
        record.output = output
        self.counters.completed += 1
        self._finish(record, Action.COMPLETE, S.RUNNING)

    def fail(self, record: RunRecord, retry_delay: float | None) -> None:
        """The attempt failed (its error is recorded); retry after ``retry_delay`` if allowed.

        ``retry_delay`` is None when no retry is wanted or none is left.
        """
        if retry_delay is None or record.retries_used + 1 >= record.max_attempts:
            self.counters.failed += 1
            self._finish(record, Action.FAIL, S.RUNNING)
            return
        record.retries_used += 1
        self.counters.retried += 1
        record.apply(Action.RETRY)
        record.due_at = self.clock.now() + retry_delay
        self._moved(record, S.RUNNING)
        if retry_delay <= 0:
            self._due(record.id)
        else:
            self._arm(record)

    def interrupt(self, record: RunRecord) -> None:
        """A stop cut the attempt short: back to the head of its lane, slot kept."""
        record.apply(Action.INTERRUPT)
        record.interruptions += 1
        self.counters.interrupted += 1
        self._moved(record, S.RUNNING)
        self.ready.appendleft(record)

    def cancel(self, record: RunRecord) -> bool:
        """Cancel ``record``; True if it is running and its task must be cancelled."""
        status = record.status
        if status.is_terminal:
            return False
        if status is S.RUNNING:
            if not record.cancel_requested:
                record.cancel_requested = True
                self._on_cancel_running(record)
            return True
        timer = self.timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        self.counters.cancelled += 1
        self._finish(record, Action.CANCEL, status)
        return False

    def cancelled(self, record: RunRecord) -> None:
        """A running run's task stopped after a cancel."""
        self.counters.cancelled += 1
        self._finish(record, Action.CANCEL, S.RUNNING)

    def _finish(self, record: RunRecord, action: Action, previous: RunStatus) -> None:
        key = record.key
        if key is not None:
            lane = self.lanes[key]
            promoted = lane.finish(record, action)
            if lane.is_empty:
                del self.lanes[key]
                self._count_key_coalesced(key, 0)
        else:
            record.apply(action)
            promoted = []
        record.finished_at = self.clock.now()
        del self.records[record.id]
        if record.idempotency_key is not None:
            self.idempotency.pop((record.job, record.idempotency_key), None)
        self._moved(record, previous)
        waiters = self._run_waiters.pop(record.id, None)
        if waiters:
            run = record.snapshot()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(run)
        self._dispatch(promoted)

    def report_progress(self, record: RunRecord, progress: Progress) -> None:
        """A handler reported progress."""
        record.progress = progress
        self.pipeline.touch(record)
        if self.hub.active:
            self.hub.publish(RunProgressed(record.id, record.key, progress, self.clock.now()))

    def report_log(self, record: RunRecord, entry: LogEntry) -> None:
        """A handler logged a line."""
        record.add_log(entry)
        self.pipeline.touch(record)
        if self.hub.active:
            self.hub.publish(RunLogged(record.id, entry))

    # -- timers ------------------------------------------------------------------

    def _arm(self, record: RunRecord) -> None:
        old = self.timers.pop(record.id, None)
        if old is not None:
            old.cancel()
        self.timers[record.id] = self.clock.call_at(record.due_at, partial(self._due, record.id))

    def _due(self, run_id: str) -> None:
        self.timers.pop(run_id, None)
        record = self.records.get(run_id)
        if record is None or record.status is not S.SCHEDULED:
            return
        if record.key is not None:
            promoted = self.lanes[record.key].become_due(record)
        else:
            if record.attempt == 0:
                record.apply(Action.BECOME_DUE)
                record.apply(Action.PROMOTE)
            else:
                record.apply(Action.RESUME)
            promoted = [record]
        self._moved(record, S.SCHEDULED)
        self._dispatch(promoted, reported=record)

    # -- bookkeeping -------------------------------------------------------------

    def _dispatch(self, promoted: list[Any], reported: RunRecord | None = None) -> None:
        """Hand runs that just became pending to the workers.

        They all came from ``queued`` except ``reported``, whose move the caller reported.
        """
        for record in promoted:
            if record is not reported:
                self._moved(record, S.QUEUED)
            self._dispatch_one(record)

    def _dispatch_one(self, record: RunRecord) -> None:
        self.ready.append(record)
        self._on_ready()

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
            self.hub.publish(RunChanged(record.snapshot(), previous, self.clock.now()))
        if self._change_waiters:
            self._wake_change_waiters()

    def _count_key_coalesced(self, key: str, add: int = 1) -> None:
        tracked = self.key_coalesced
        tracked[key] = tracked.get(key, 0) + add
        tracked.move_to_end(key)
        if len(tracked) > MAX_TRACKED_KEYS:
            tracked.popitem(last=False)

    # -- waiting -----------------------------------------------------------------

    def run_waiter(self, run_id: str) -> asyncio.Future[Run]:
        """A future resolved with the run once it is terminal."""
        future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._run_waiters.setdefault(run_id, []).append(future)
        return future

    def forget_waiter(self, run_id: str, future: asyncio.Future[Run]) -> None:
        """Drop a waiter that gave up."""
        waiters = self._run_waiters.get(run_id)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._run_waiters[run_id]

    def change_waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next run change."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._change_waiters.append(future)
        return future

    def _wake_change_waiters(self) -> None:
        waiters, self._change_waiters = self._change_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def only_timers_left(self) -> bool:
        """True when nothing can progress until a timer fires (no run pending or running)."""
        counts = self.status_counts
        return (
            counts[S.SCHEDULED.ordinal] > 0
            and counts[S.RUNNING.ordinal] == 0
            and counts[S.PENDING.ordinal] == 0
            and not self.ready
        )

    # -- reading -----------------------------------------------------------------

    def lane_snapshot(self, key: str) -> LaneSnapshot:
        """The lane of ``key`` now (idle if it has no unfinished run)."""
        coalesced = self.key_coalesced.get(key, 0)
        lane = self.lanes.get(key)
        if lane is None:
            return LaneSnapshot(key, "idle", self._lane_limit(key), (), (), (), coalesced)
        members = lane.members.values()
        return LaneSnapshot(
            key=key,
            state=lane.state,
            limit=lane.limit,
            running=tuple(r.id for r in members if r.holds_slot),
            waiting=tuple(r.id for r in lane.waiting),
            scheduled=tuple(r.id for r in members if r.status is S.SCHEDULED and not r.holds_slot),
            coalesced=coalesced,
        )


def _merge(
    merge: Callable[[JSONObject, JSONObject], JSONObject],
    old: JSONObject,
    new: JSONObject,
    job: str,
) -> JSONObject:
    try:
        merged = merge(dict(old), dict(new))
        return json_object_copy(merged)
    except NotJSONError as exc:
        raise InvalidInputError(f"merge function of job {job!r} returned non-JSON: {exc}") from None
    except Exception as exc:
        raise InvalidInputError(f"merge function of job {job!r} failed: {exc!r}") from exc
