"""Recovery at start: the scheduler's memory rebuilt from what storage kept.

Runs come back in creation order. A run found ``running`` (or whose start mark is ahead
of its row: see :meth:`~keyflow.storage_backends.base.StorageBackend.mark_start`) was cut
short by a crash: it
goes back to the head of its lane as a new attempt (a crash uses up no retry), fails once
crashes have cut it short :data:`MAX_CRASHES` times (a poison pill), and is cancelled if
a cancel had been asked for. Delays and retry backoffs keep their due times; queued runs
keep their order (by due time, then creation).

Two things may have changed since the runs were stored:

* a job may no longer be registered (a release renamed it): its runs fail at once with
  an ``UnknownJob`` error instead of blocking their lanes forever;
* ``lane_limit`` may be lower: runs holding slots beyond the new limit give them back and
  wait at the head of their lane (:meth:`~keyflow.state.Lane.enforce_limit`).

This module works on the :class:`~keyflow.core.Core`'s own structures, through the same
steps the core uses at run time (promotion, dispatch, finishing), so recovery changes
nothing a live run could not.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Container, Mapping
from typing import TYPE_CHECKING

from .records import RunRecord
from .runs import AttemptError
from .state import FAIL, PENDING, QUEUED, RUNNING, SCHEDULED, Lane

if TYPE_CHECKING:
    from .core import Core

logger = logging.getLogger("keyflow.recovery")

MAX_CRASHES = 3
"""A run cut short by this many crashes fails instead of running again (a poison pill)."""


def restore(
    core: Core,
    unfinished: list[RunRecord],
    jobs: Container[str],
    started: Mapping[str, int] | None = None,
) -> None:
    """Rebuild lanes, timers and the ready queue of ``core``, before workers start.

    Runs of a job not in ``jobs`` fail (see the module docstring). ``started`` holds the
    start marks the dead process left (run id → handler starts).
    """
    if started:
        for record in unfinished:
            marked = started.get(record.id, 0)
            if marked > record.starts and record.status is not RUNNING:
                _started_unrecorded(record, marked)
    counts = core.status_counts
    queued: list[tuple[float, int, RunRecord]] = []
    crashed: list[RunRecord] = []
    unknown: list[RunRecord] = []
    cancelled: list[RunRecord] = []
    for index, record in enumerate(unfinished):
        core.records[record.id] = record
        counts[record.status.ordinal] += 1
        if record.idempotency_key is not None:
            core.idempotency[record.job, record.idempotency_key] = record
        if record.key is not None:
            lane = core.lanes.get(record.key)
            if lane is None:
                lane = core.lanes[record.key] = core.new_lane(record.key, strict=False)
            lane.restore(record)
        status = record.status
        if record.job not in jobs:
            unknown.append(record)
        elif status is QUEUED:
            queued.append((record.due_at, index, record))
        elif status is RUNNING:
            crashed.append(record)
        elif status is PENDING:
            if record.cancel_requested:  # a stop cut it short after a cancel was asked
                cancelled.append(record)
            else:
                core.ready.append(record)
        elif status is SCHEDULED:
            core.arm(record)
    for _due, _index, record in sorted(queued, key=lambda item: item[:2]):
        if record.key is None:
            core.promote_keyless(record)  # keyless runs never wait
        else:
            core.lanes[record.key].restore_waiting(record)
    for record in unknown:
        if record.status is QUEUED and record.key is not None:
            core.lanes[record.key].restore_waiting(record)  # so that finishing finds it
    for record in reversed(crashed):  # each goes to the head: reversed keeps their order
        _recover_crashed(core, record)
    _reject_unknown(core, unknown)
    for record in cancelled:
        core.cancel(record)
    for lane in list(core.lanes.values()):
        _enforce_limit(core, lane)
    for lane in list(core.lanes.values()):
        core.dispatch(lane.promote())


def _reject_unknown(core: Core, unknown: list[RunRecord]) -> None:
    if not unknown:
        return
    for job, count in sorted(Counter(record.job for record in unknown).items()):
        logger.warning(
            "%d stored unfinished run(s) of job %r, which this process does not register, "
            "are failed (error type UnknownJob); register the job and retrigger them",
            count,
            job,
        )
    for record in unknown:
        core.reject(record, f"job {record.job!r} is not registered in this process")


def _enforce_limit(core: Core, lane: Lane) -> None:
    requeued = lane.enforce_limit()
    if not requeued:
        return
    logger.warning(
        "lane %r holds %d more runs than its limit of %d allows (a lower lane_limit since "
        "they were stored, or a crash before a run's end was written while the next had "
        "started): they wait again at the head of the lane",
        lane.key,
        len(requeued),
        lane.limit,
    )
    for record in requeued:
        assert isinstance(record, RunRecord)
        core.requeued(record)
    # They were ready to start: take them out again (the workers have not started).
    ready = [record for record in core.ready if record.status is PENDING]
    core.ready.clear()
    core.ready.extend(ready)


def _started_unrecorded(record: RunRecord, marked: int) -> None:
    # A worker marked the start, and the process died before the row said so: it was
    # running (what Core.start would have changed, done on the stored row).
    record.status = RUNNING
    record.starts = marked
    if record.stop_interrupted:
        record.stop_interrupted = False
    else:
        record.attempt += 1


def count_crash(record: RunRecord, at: float, cause: str) -> bool:
    """A crash cut ``record``'s attempt short: count it; True if it is a poison pill now.

    A poison pill (:data:`MAX_CRASHES` crashes) gets its ``Crashed`` error here; the
    caller fails it. Otherwise the caller puts it back at the head of its lane. Both
    are logged, with ``cause`` saying what happened ("the process died", ...).
    """
    record.crashes += 1
    if record.crashes < MAX_CRASHES:
        logger.warning(
            "run %s (job %r, key %r): %s while it ran (crash %d of %d): it runs again, as a "
            "new attempt",
            record.id,
            record.job,
            record.key,
            cause,
            record.crashes,
            MAX_CRASHES,
        )
        return False
    logger.error(
        "run %s (job %r, key %r): %s while it ran, %d times: it is failed as a poison pill",
        record.id,
        record.job,
        record.key,
        cause,
        record.crashes,
    )
    record.add_error(
        AttemptError(
            attempt=record.attempt,
            type="Crashed",
            message=f"{cause} while the run was running, {record.crashes} times: it is "
            "failed as a poison pill",
            traceback="",
            at=at,
        )
    )
    return True


def _recover_crashed(core: Core, record: RunRecord) -> None:
    if record.cancel_requested:
        core.cancelled(record)
        return
    if count_crash(record, core.clock.now(), "the process died"):
        core.counters.failed += 1
        core.finish(record, FAIL, RUNNING)
        return
    core.interrupt(record, crashed=True)
