"""The core's execution transitions: start, complete, fail, retry, cancel, pause.

Every status change goes through :mod:`keyflow.state`'s transition table (``apply``) and
a lane's own rules; every change is handed to the commit pipeline and, when someone
listens, published as an event. A change here is never rolled back: the pipeline
retries its write until storage takes it.
"""

from __future__ import annotations

from typing import Any, Final

from .live import _PENDING, LiveState
from .records import RunRecord
from .runs import AttemptError, LogEntry, Progress, RunStatus
from .state import (
    CANCEL,
    COMPLETE,
    FAIL,
    INTERRUPT,
    PENDING,
    QUEUED,
    REJECT,
    RETRY,
    RUNNING,
    SCHEDULED,
    Action,
)

_RUNNING: Final = RUNNING.ordinal


class Runtime(LiveState):
    """Moves runs through their execution: what workers, timeouts and pauses report."""

    # -- execution ---------------------------------------------------------------

    def start(self, record: RunRecord) -> None:
        """A worker starts an attempt of ``record`` (the same one again after a stop)."""
        now = self.now()
        record.begin_attempt(now)
        self.counters.started += 1
        # _moved(record, PENDING), inlined: this runs once per attempt.
        counts = self.status_counts
        counts[_PENDING] -= 1
        counts[_RUNNING] += 1
        if self._touch_all:
            self.pipeline.touch(record)
        if self.hub.active:
            self.hub.run_changed(record, PENDING, now)
        if self.waiters.changes:
            self.waiters.changed()

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
            note = "interrupted by stop: it runs again, as the same attempt, at its next start"
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
        self.timers.disarm(record.id)
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
        self.timers.disarm(record.id)
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
            idempotency = (record.job, record.idempotency_key)
            self.idempotency.pop(idempotency, None)
            if idempotency in self.idempotency_lookups:
                self.idempotency_ended[idempotency] = record.id
        # _moved(record, previous), inlined: this runs once per run.
        self.status_counts[previous.ordinal] -= 1
        self.pipeline.touch(record)
        if self.hub.active:
            self.hub.run_changed(record, previous, record.finished_at)
        if self.waiters.changes:
            self.waiters.changed()
        if self.waiters.runs:
            self.waiters.run_ended(record)
        if promoted:
            self.dispatch(promoted)

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

    # -- pauses ------------------------------------------------------------------

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

    def set_paused(self, kind: str, name: str, paused: bool, *, written: bool = True) -> None:
        """Pause (or resume) a job (``kind="job"``) or a lane (``"key"``); written.

        ``written=False``: only here (another process's pause, read from shared storage).
        """
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
        if written:
            self.pipeline.set_pause(kind, name, paused)
        self.hub.pause_changed(name if kind == "key" else None)
        if self.waiters.changes:
            self.waiters.changed()
