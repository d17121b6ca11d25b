"""Recovery at start: the scheduler's memory rebuilt from what storage kept.

Runs come back in creation order. A run found ``running`` was cut short by a crash: it
goes back to the head of its lane as a new attempt (a crash uses up no retry), fails once
crashes have cut it short :data:`MAX_CRASHES` times (a poison pill), and is cancelled if
a cancel had been asked for. Delays and retry backoffs keep their due times; queued runs
keep their order (by due time, then creation).

This module works on the :class:`~keyflow.core.Core`'s own structures, through the same
steps the core uses at run time (promotion, dispatch, finishing), so recovery changes
nothing a live run could not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .records import RunRecord
from .runs import PENDING, QUEUED, RUNNING, SCHEDULED, AttemptError
from .state import FAIL, Lane

if TYPE_CHECKING:
    from .core import Core

MAX_CRASHES = 3
"""A run cut short by this many crashes fails instead of running again (a poison pill)."""


def restore(core: Core, unfinished: list[RunRecord]) -> None:
    """Rebuild lanes, timers and the ready queue of ``core``, before workers start."""
    counts = core.status_counts
    queued: list[tuple[float, int, RunRecord]] = []
    crashed: list[RunRecord] = []
    for index, record in enumerate(unfinished):
        core.records[record.id] = record
        counts[record.status.ordinal] += 1
        if record.idempotency_key is not None:
            core.idempotency[record.job, record.idempotency_key] = record
        if record.key is not None:
            lane = core.lanes.get(record.key)
            if lane is None:
                lane = core.lanes[record.key] = Lane(record.key, core.lane_limit(record.key))
            lane.restore(record)
        status = record.status
        if status is QUEUED:
            queued.append((record.due_at, index, record))
        elif status is RUNNING:
            crashed.append(record)
        elif status is PENDING:
            core.ready.append(record)
        elif status is SCHEDULED:
            core.arm(record)
    for _due, _index, record in sorted(queued, key=lambda item: item[:2]):
        if record.key is None:
            core.promote_keyless(record)  # keyless runs never wait
        else:
            core.lanes[record.key].restore_waiting(record)
    for record in reversed(crashed):  # each goes to the head: reversed keeps their order
        _recover_crashed(core, record)
    for lane in list(core.lanes.values()):
        core.dispatch(lane.promote())


def _recover_crashed(core: Core, record: RunRecord) -> None:
    if record.cancel_requested:
        core.cancelled(record)
        return
    record.crashes += 1
    if record.crashes >= MAX_CRASHES:
        record.add_error(
            AttemptError(
                attempt=record.attempt,
                type="Crashed",
                message=(
                    f"the process died while the run was running, {record.crashes} "
                    "times: it is failed as a poison pill"
                ),
                traceback="",
                at=core.clock.now(),
            )
        )
        core.counters.failed += 1
        core.finish(record, FAIL, RUNNING)
        return
    core.interrupt(record)
