"""The scheduler's in-memory core: lanes, unfinished runs, timers and the ready queue.

Everything here is synchronous and runs on the event loop thread. Every status change
goes through :mod:`keyflow.state`; every change is handed to the commit pipeline and, when
someone listens, published as an event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from .coalesce import Coalesce
from .commit import CommitPipeline, Txn
from .errors import ConfigurationError, InvalidInputError
from .hub import EventHub
from .jsonvalue import NotJSONError, check_size, copy_json_dict, json_object_copy, may_be_large
from .lane_view import lane_snapshot
from .records import MAX_COALESCED_KEPT, Coalescence, RunIds, RunRecord
from .runs import (
    AttemptError,
    Disposition,
    JSONObject,
    LogEntry,
    Progress,
    Run,
    RunStatus,
    TriggerResult,
)
from .state import (
    BECOME_DUE,
    CANCEL,
    COMPLETE,
    FAIL,
    INTERRUPT,
    PENDING,
    PROMOTE,
    QUEUED,
    REJECT,
    RESUME,
    RETRY,
    RUNNING,
    SCHEDULED,
    START,
    Action,
    Lane,
    join_target,
    new_run_disposition,
    plan_trigger,
)
from .stats import LaneSnapshot
from .triggers import PreparedTrigger, prepare_trigger

if TYPE_CHECKING:
    from .clock import Clock, TimerHandle
    from .jobs import Job
    from .storage_backends.base import StorageBackend

logger = logging.getLogger("keyflow.core")

S = RunStatus
_result: Final = partial(tuple.__new__, TriggerResult)
"""Builds a TriggerResult from a tuple without NamedTuple's slower Python __new__."""
_PENDING: Final = PENDING.ordinal
_RUNNING: Final = RUNNING.ordinal
_QUEUED: Final = QUEUED.ordinal
_SCHEDULED: Final = SCHEDULED.ordinal
D_COALESCED: Final = Disposition.COALESCED
D_CREATED: Final = Disposition.CREATED
D_IDEMPOTENT: Final = Disposition.IDEMPOTENT
D_QUEUED: Final = Disposition.QUEUED
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


class Core:
    """Owns lanes and unfinished runs; decides, applies, settles and rolls back."""

    def __init__(
        self,
        *,
        backend: StorageBackend,
        clock: Clock,
        hub: EventHub,
        lane_limit: Callable[[str], int],
        on_cancel_running: Callable[[RunRecord], None],
        refuse: Callable[[], None],
    ) -> None:
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
        self.ready: deque[RunRecord] = deque()
        """Pending runs, in the order workers should take them."""
        self.timers: dict[str, TimerHandle] = {}
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
        self._run_waiters: dict[str, list[asyncio.Future[Run]]] = {}
        self._change_waiters: list[asyncio.Future[None]] = []
        self.pipeline = CommitPipeline(backend, settle=self.settle, roll_back=self.roll_back)
        self._write_new = backend.write_new_sync
        # A backend holding our records needs to hear only of new and finished runs.
        self._touch_all = not backend.shares_records

    # -- triggers ----------------------------------------------------------------

    def accept(
        self,
        jobs: Mapping[str, Job],
        job: object,
        input: object,
        concurrency_key: object,
        coalesce: object,
        idempotency_key: object,
        labels: object,
        delay: object,
        parent_run_id: object,
        chained: bool = False,
    ) -> TriggerResult | PreparedTrigger:
        """Check one trigger (see ``Keyflow.trigger``); decide it at once if storage allows.

        Returns the result, or the prepared trigger for the scheduler to commit.

        Raises:
            SchedulerNotRunningError: not accepting triggers (from ``refuse``).
            TriggerError: bad arguments; nothing changed.
            StorageError: the write of a new run failed; nothing changed.
        """
        if not self.accepting and not (chained and self.accepting_chained):
            self._refuse()
        prepared = prepare_trigger(
            jobs,
            job,
            input,
            concurrency_key,
            coalesce,
            idempotency_key,
            labels,
            delay,
            parent_run_id,
        )
        fast = self.trigger_now(prepared)
        return prepared if fast is None else fast

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
                result = TriggerResult(existing.id, D_IDEMPOTENT, job.name, existing.key)
                txn.results.append(result)
                if txn.covered is not None:
                    txn.covered.append(existing)
                return result
        lane = self.lanes.get(key) if key is not None else None
        coalesce = trig.coalesce
        plan = plan_trigger(lane, job.name, coalesce)  # the one decision (state.py)
        target = plan.target
        victims = plan.victims
        now = self.now()
        if target is not None:
            assert coalesce is not None
            record = self.records[target.id]
            old_input = record.input
            kept = record.coalesced
            evicted = kept[0] if kept is not None and len(kept) == MAX_COALESCED_KEPT else None
            old_due, entry = self._join(record, trig, coalesce, now)
            record.unsettled += 1
            txn.joined.append((record, old_input, old_due, evicted, entry))
            disposition = D_COALESCED
        else:
            due = trig.delay <= 0
            disposition = new_run_disposition(lane, victims, due=due)
            if key is not None and lane is None:
                lane = self.lanes[key] = self.new_lane(key)  # may raise: nothing changed yet
            record = self._new_record(trig, now, due, durable=False)
            self.records[record.id] = record
            self.status_counts[record.status.ordinal] += 1
            if lane is not None:
                lane.add(record)  # not durable yet: it waits for settle() to take a slot
            txn.created.append(record)
            if victims:
                txn.victims.extend(self.records[v.id] for v in victims)
        if trig.idempotency_key is not None:
            self.idempotency[job.name, trig.idempotency_key] = record
            txn.idempotency.append((job.name, trig.idempotency_key, record))
        result = _result((record.id, disposition, job.name, key))
        txn.results.append(result)
        if txn.covered is not None:
            txn.covered.append(record)
        return result

    def _join(
        self, target: RunRecord, trig: PreparedTrigger, coalesce: Coalesce, now: float
    ) -> tuple[float, Coalescence]:
        """Join ``target`` in memory; return its old due time and the stored entry."""
        old_input = target.input
        if target.attempt == 0:  # a run that started keeps its input
            policy = coalesce.input
            if policy == "latest":
                target.input = trig.input
            elif policy != "first":
                target.input = _merge(policy, old_input, trig.input, trig.job.name)
        entry = (now, trig.input, trig.parent_run_id)
        kept = target.coalesced
        if kept is None:
            kept = target.coalesced = deque(maxlen=MAX_COALESCED_KEPT)
        kept.append(entry)
        target.trigger_count += 1
        old_due = target.due_at
        due_at = now + trig.delay
        if due_at < old_due and target.status is SCHEDULED and target.attempt == 0:
            target.due_at = due_at  # the run covers this trigger no later than it asked
        return old_due, entry

    def settle(self, txn: Txn) -> None:
        """``txn`` is durable: let its runs start, arm timers, publish events."""
        publish = self.hub.active
        counters = self.counters
        for result in txn.results:
            disposition = result[1]
            if disposition is D_CREATED:
                counters.created += 1
            elif disposition is D_QUEUED:
                counters.queued += 1
            elif disposition is D_IDEMPOTENT:
                counters.idempotent += 1
        created = txn.created
        for record in created:
            record.durable = True
        for record in created:
            if publish:
                self.hub.run_changed(record, None, record.created_at)
            if record.status is SCHEDULED:
                self.arm(record)
            elif record.key is None:
                self.promote_keyless(record)
            else:
                lane = self.lanes.get(record.key)
                if lane is not None:
                    self.dispatch(lane.promote())
        for run, _old_input, old_due_at, _evicted, entry in txn.joined:
            run.unsettled -= 1
            self._joined(run, old_due_at, entry)
        if txn.covered is not None:
            # Before any worker can take these runs: a waiter made now hears of the end.
            txn.waiters = [self.covering_waiter(record) for record in txn.covered]
        if txn.victims:
            for victim in txn.victims:
                if not victim.status.is_terminal:
                    self.cancel(victim)
        if self._change_waiters:
            self._wake_change_waiters()

    def _joined(self, run: RunRecord, old_due_at: float, entry: Coalescence) -> None:
        # A join is durable: count it, re-arm a timer it pulled forward, publish it.
        self.counters.coalesced += 1
        key = run.key
        if key is not None:
            tracked = self.key_coalesced
            if key in tracked:  # counted in place; recency is refreshed when the lane idles
                tracked[key] += 1
            else:
                self._count_key_coalesced(key)
        if run.due_at < old_due_at and run.status is SCHEDULED:
            self.arm(run)
        if self.hub.active:
            self.hub.trigger_coalesced(run, entry)

    def _new_record(
        self, trig: PreparedTrigger, now: float, due: bool, *, durable: bool
    ) -> RunRecord:
        coalesce = trig.coalesce
        return RunRecord(
            self.ids.next(),
            trig.job.name,
            trig.key,
            QUEUED if due else SCHEDULED,
            trig.input,
            now,
            now + trig.delay,
            trig.job.retries + 1,
            trig.labels,
            trig.idempotency_key,
            trig.parent_run_id,
            coalesce is not None and coalesce.strategy == "queue",
            durable,
        )

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

    def trigger_now(self, trig: PreparedTrigger) -> TriggerResult | None:
        """The fast path of a single trigger, when storage needs nothing awaited.

        Taken when the backend holds our records and writes synchronously and nothing
        is pending (the in-memory backend): a join needs no write at all, a new run one
        synchronous write before anything changes in memory. Returns None when the
        general path must decide (idempotency keys, ``"cancel"``, durable storage).

        Raises:
            StorageError: the write of a new run failed; nothing changed.
            InvalidInputError: a merge function failed; nothing changed.
        """
        if trig.idempotency_key is not None or not self.pipeline.settles_joins_now:
            return None
        key = trig.key
        lane = self.lanes.get(key) if key is not None else None
        coalesce = trig.coalesce
        job = trig.job.name
        if coalesce is not None and lane is not None:
            if coalesce.strategy == "cancel":
                return None  # cancels runs: the general path, with its transaction
            # plan_trigger's JOIN, without building the plan: the hot path of coalescing.
            target = join_target(lane, job, coalesce)
            if target is not None:
                record = self.records[target.id]
                old_due_at, entry = self._join(record, trig, coalesce, self.now())
                self._joined(record, old_due_at, entry)
                if self._change_waiters:
                    self._wake_change_waiters()
                return _result((record.id, D_COALESCED, job, key))
        if key is not None and lane is None:
            lane = self.new_lane(key)  # may raise: nothing has changed yet
            created_lane = True
        else:
            created_lane = False
        now = self.now()
        due = trig.delay <= 0
        record = self._new_record(trig, now, due, durable=True)
        try:
            self._write_new(record)  # the backend's own write: one call on the hot path
        except Exception as exc:
            raise self.pipeline.write_new_failed(exc) from exc
        self.pipeline.batches_written += 1
        self.records[record.id] = record
        self.status_counts[_QUEUED if due else _SCHEDULED] += 1
        if created_lane:
            assert key is not None
            assert lane is not None
            self.lanes[key] = lane
        disposition = new_run_disposition(lane, due=due)
        if disposition is D_QUEUED:
            self.counters.queued += 1
        else:
            self.counters.created += 1
        if self.hub.active:
            self.hub.run_changed(record, None, now)
        if not due:
            if lane is not None:
                lane.add(record)
            self.arm(record)
        elif lane is None:
            self.promote_keyless(record)
        else:
            promoted = lane.add(record)
            if promoted:
                self.dispatch(promoted)
        if self._change_waiters:
            self._wake_change_waiters()
        return _result((record.id, disposition, job, key))

    def roll_back(self, txn: Txn) -> None:
        """``txn`` will never be durable: undo it in memory, newest change first."""
        for job, idem, record in reversed(txn.idempotency):
            if self.idempotency.get((job, idem)) is record:
                del self.idempotency[job, idem]
        for run, old_input, old_due_at, evicted, _entry in reversed(txn.joined):
            run.input = old_input
            run.trigger_count -= 1
            run.due_at = old_due_at
            run.remove_coalesced(evicted)
            run.unsettled -= 1
        for record in reversed(txn.created):
            if self.records.pop(record.id, None) is None:
                continue
            self.status_counts[record.status.ordinal] -= 1
            if record.key is not None:
                lane = self.lanes.get(record.key)
                if lane is not None:
                    self.dispatch(lane.remove_new(record))
                    if lane.is_empty:
                        del self.lanes[record.key]

    # -- execution ---------------------------------------------------------------

    def start(self, record: RunRecord) -> None:
        """A worker starts an attempt of ``record`` (the same one again after a stop)."""
        record.apply(START)
        record.starts += 1
        if record.stop_interrupted:  # a stop cut it short: it is that attempt again
            record.stop_interrupted = False
        else:
            record.attempt += 1
        record.started_at = self.now()
        self.counters.started += 1
        # _moved(record, PENDING), inlined: this runs once per attempt.
        counts = self.status_counts
        counts[_PENDING] -= 1
        counts[_RUNNING] += 1
        if self._touch_all:
            self.pipeline.touch(record)
        if self.hub.active:
            self.hub.run_changed(record, PENDING, record.started_at)
        if self._change_waiters:
            self._wake_change_waiters()

    def complete(self, record: RunRecord, output: Any) -> None:
        """The handler returned ``output``."""
        record.output = output
        self.counters.completed += 1
        self.finish(record, COMPLETE, RUNNING)

    def fail(self, record: RunRecord, retry_delay: float | None) -> None:
        """The attempt failed (its error is recorded); retry after ``retry_delay`` if allowed.

        ``retry_delay`` is None when no retry is wanted or none is left.
        """
        if retry_delay is None or record.retries_used + 1 >= record.max_attempts:
            self.counters.failed += 1
            self.finish(record, FAIL, RUNNING)
            return
        record.retries_used += 1
        self.counters.retried += 1
        record.apply(RETRY)
        record.due_at = self.now() + retry_delay
        self._moved(record, RUNNING)
        if retry_delay <= 0:
            self._due(record.id)
        else:
            self.arm(record)

    def interrupt(self, record: RunRecord, *, crashed: bool = False) -> None:
        """A stop (or a crash) cut the attempt short: back to its lane's head, slot kept.

        After a stop the next start is the same attempt again (no error recorded, no
        retry used); after a crash it is a new attempt.
        """
        record.apply(INTERRUPT)
        record.interruptions += 1
        if crashed:
            note = (
                f"interrupted by a crash of its process (crash {record.crashes}): it runs "
                "again, as a new attempt"
            )
        else:
            record.stop_interrupted = True
            note = "interrupted by stop: it runs again, as the same attempt, at the next start"
        record.add_log(LogEntry(self.now(), "warning", note, {}, record.attempt))
        self.counters.interrupted += 1
        self._moved(record, RUNNING)
        self.ready.appendleft(record)

    def cancel(self, record: RunRecord) -> bool:
        """Cancel ``record``; True if it is running and its task must be cancelled."""
        status = record.status
        if status.is_terminal:
            return False
        if status is RUNNING:
            if not record.cancel_requested:
                record.cancel_requested = True
                self.pipeline.touch(record)  # written: a restart honours it too
                self._on_cancel_running(record)
            return True
        timer = self.timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        self.counters.cancelled += 1
        self.finish(record, CANCEL, status)
        return False

    def reject(self, record: RunRecord, reason: str) -> None:
        """``record`` cannot execute here (e.g. its job is unknown): it fails unrun."""
        record.add_error(
            AttemptError(
                attempt=record.attempt,
                type="UnknownJob",
                message=f"{reason}, so the run failed (register the job, then retrigger the run)",
                traceback="",
                at=self.now(),
            )
        )
        timer = self.timers.pop(record.id, None)
        if timer is not None:
            timer.cancel()
        self.counters.failed += 1
        self.finish(record, REJECT, record.status)

    def requeued(self, record: RunRecord) -> None:
        """``record`` gave its slot back and waits again (see ``Lane.enforce_limit``)."""
        self._moved(record, PENDING)

    def cancelled(self, record: RunRecord) -> None:
        """A running run's task stopped after a cancel."""
        self.counters.cancelled += 1
        self.finish(record, CANCEL, RUNNING)

    def finish(self, record: RunRecord, action: Action, previous: RunStatus) -> None:
        """``record`` becomes terminal by ``action`` (from ``previous``); its slot is freed."""
        key = record.key
        if key is not None:
            lane = self.lanes[key]
            promoted = lane.finish(record, action)
            if not lane.members:
                del self.lanes[key]
                self._count_key_coalesced(key, 0)
        else:
            record.apply(action)
            promoted = None
        record.finished_at = self.now()
        del self.records[record.id]
        if record.idempotency_key is not None:
            self.idempotency.pop((record.job, record.idempotency_key), None)
        # _moved(record, previous), inlined: this runs once per run.
        self.status_counts[previous.ordinal] -= 1
        self.pipeline.touch(record)
        if self.hub.active:
            self.hub.run_changed(record, previous, record.finished_at)
        if self._change_waiters:
            self._wake_change_waiters()
        if self._run_waiters:
            self._wake_run_waiters(record)
        if promoted:
            self.dispatch(promoted)

    def _wake_run_waiters(self, record: RunRecord) -> None:
        waiters = self._run_waiters.pop(record.id, None)
        if waiters:
            run = record.snapshot()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(run)

    def report_progress(self, record: RunRecord, progress: Progress) -> None:
        """A handler reported progress."""
        record.progress = progress
        self.pipeline.touch(record)
        if self.hub.active:
            self.hub.progressed(record, progress, self.now())

    def report_log(self, record: RunRecord, entry: LogEntry) -> None:
        """A handler logged a line."""
        record.add_log(entry)
        self.pipeline.touch(record)
        if self.hub.active:
            self.hub.logged(record, entry)

    # -- timers ------------------------------------------------------------------

    def arm(self, record: RunRecord) -> None:
        """Set (or reset) the timer of a scheduled run at its due time."""
        old = self.timers.pop(record.id, None)
        if old is not None:
            old.cancel()
        self.timers[record.id] = self.clock.call_at(record.due_at, partial(self._due, record.id))

    def _due(self, run_id: str) -> None:
        self.timers.pop(run_id, None)
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
        if self._change_waiters:
            self._wake_change_waiters()

    def promote_keyless(self, record: RunRecord) -> None:
        """A new due run without a key has no lane to wait in: it is pending at once."""
        record.apply(PROMOTE)
        self._moved(record, QUEUED)
        self._dispatch_one(record)

    # -- pauses -----------------------------------------------------------------------

    def is_paused(self, record: RunRecord) -> bool:
        """Is the run's job or lane paused?"""
        return record.job in self.paused_jobs or (
            record.key is not None and record.key in self.paused_keys
        )

    def held_by_pause(self, record: RunRecord) -> bool:
        """Is the run waiting for a resume (nothing else can move it on)?

        Its job or lane is paused and it is due (a running run goes on; a delayed one
        becomes due first), or it waits in a lane whose head a pause holds.
        """
        status = record.status
        if status is RUNNING:
            return False
        if self.is_paused(record):
            return status is not SCHEDULED
        key = record.key
        return (
            status is QUEUED
            and key is not None
            and any(held.key == key for held in self.parked.values())
        )

    @property
    def only_paused_left(self) -> bool:
        """Every unfinished run waits for a resume (and there is at least one)."""
        if not (self.paused_jobs or self.paused_keys) or not self.records:
            return False
        return all(self.held_by_pause(r) for r in self.records.values())

    def park(self, record: RunRecord) -> None:
        """A worker met a pending run that a pause holds back: keep it aside."""
        self.parked[record.id] = record

    def set_paused(self, kind: str, name: str, paused: bool) -> None:
        """Pause (or resume) a job (``kind="job"``) or a lane (``"key"``); written."""
        target = self.paused_jobs if kind == "job" else self.paused_keys
        if paused:
            target.add(name)
        else:
            target.discard(name)
            free = [
                r for r in self.parked.values() if r.status is PENDING and not self.is_paused(r)
            ]
            for record in reversed(free):  # back first in line, in their order
                del self.parked[record.id]
                self.ready_again(record)
            for run_id in [i for i, r in self.parked.items() if r.status is not PENDING]:
                del self.parked[run_id]  # cancelled meanwhile
        self.pipeline.set_pause(kind, name, paused)
        self.hub.pause_changed(name if kind == "key" else None)
        if self._change_waiters:
            self._wake_change_waiters()

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
        if self._change_waiters:
            self._wake_change_waiters()

    def _count_key_coalesced(self, key: str, add: int = 1) -> None:
        # Bounded by evicting the key that went idle (or was first seen) longest ago.
        # An OrderedDict: a plain dict's first key is found by skipping every deleted
        # slot before it, which turns eviction quadratic under many keys.
        tracked = self.key_coalesced
        tracked[key] = tracked.get(key, 0) + add
        tracked.move_to_end(key)  # now the most recent
        if len(tracked) > MAX_TRACKED_KEYS:
            tracked.popitem(last=False)

    # -- waiting -----------------------------------------------------------------

    def run_waiter(self, run_id: str) -> asyncio.Future[Run]:
        """A future resolved with the run once it is terminal."""
        future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._run_waiters.setdefault(run_id, []).append(future)
        return future

    def covering_waiter(self, record: RunRecord | None) -> asyncio.Future[Run] | None:
        """A waiter for the end of ``record`` (None: a run known only to storage).

        Resolved at once if the run is already terminal.
        """
        if record is None:
            return None
        if record.status.is_terminal:
            future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
            future.set_result(record.snapshot())
            return future
        return self.run_waiter(record.id)

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
            counts[SCHEDULED.ordinal] > 0
            and counts[RUNNING.ordinal] == 0
            and counts[PENDING.ordinal] == 0
            and not self.ready
        )

    # -- reading -----------------------------------------------------------------

    def lane_snapshot(self, key: str) -> LaneSnapshot:
        """The lane of ``key`` now (idle if it has no unfinished run)."""
        coalesced = self.key_coalesced.get(key, 0)
        lane = self.lanes.get(key)
        paused = key in self.paused_keys
        if lane is None:
            limit = self.limit_of(key, strict=False)
            return lane_snapshot(key, limit, (), (), coalesced=coalesced, paused=paused)
        return lane_snapshot(
            key, lane.limit, lane.members.values(), lane.waiting, coalesced=coalesced, paused=paused
        )


def _merge(
    merge: Callable[[JSONObject, JSONObject], JSONObject],
    old: JSONObject,
    new: JSONObject,
    job: str,
) -> JSONObject:
    try:
        # Deep copies: a merge that changes its arguments in place must not reach the
        # stored input (which a rolled-back trigger would then leave changed).
        merged = json_object_copy(merge(copy_json_dict(old), copy_json_dict(new)))
        if may_be_large(merged):
            check_size(merged, "$")
        return merged
    except NotJSONError as exc:
        raise InvalidInputError(f"merge function of job {job!r} returned non-JSON: {exc}") from None
    except Exception as error:  # another name: a compiled build types `exc` as NotJSONError
        raise InvalidInputError(f"merge function of job {job!r} failed: {error!r}") from error
