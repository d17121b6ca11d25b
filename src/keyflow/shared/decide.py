"""A key's decisions made against its runs as a shared database holds them (pure).

A process deciding about a key in a shared database holds the key's lock, reads the
key's unfinished runs, and rebuilds their :class:`~keyflow.state.Lane` here; then the
same pure rules as the single-process core decide (:func:`keyflow.state.plan_trigger`,
``Lane.add`` / ``finish`` / ``promote`` / ``become_due``). Nothing here does I/O: the
caller writes back the runs each function reports changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from ..admission import join_run, new_record
from ..records import RunRecord
from ..runs import Disposition, TriggerResult
from ..state import (
    BECOME_DUE,
    CANCEL,
    PROMOTE,
    QUEUED,
    RESUME,
    RUNNING,
    SCHEDULED,
    Lane,
    new_run_disposition,
    plan_trigger,
)
from ..triggers import PreparedTrigger

Entered = Mapping[str, int]
"""When runs entered their lanes' queues (the database's ``entered``), by run id."""


def lane_from_runs(
    key: str, limit: int, runs: Iterable[RunRecord], entered: Entered
) -> tuple[Lane, list[RunRecord]]:
    """The lane of ``key`` rebuilt from its unfinished runs, in creation order.

    Queued runs wait in the order they entered the queue (``entered``: a run made queued
    joins its back, and so does a delayed run when it becomes queued, whatever its
    creation time; a run not in ``entered`` entered last). Returns the lane and the runs
    :meth:`Lane.enforce_limit` requeued (a lane holding more slots than ``limit``: a
    lower limit in this process).
    """
    lane = Lane(key, limit)
    queued: list[tuple[float, int, RunRecord]] = []
    last = float("inf")
    for index, run in enumerate(runs):
        lane.restore(run)
        if run.status is QUEUED:
            queued.append((entered.get(run.id, last), index, run))
    for _order, _index, run in sorted(queued, key=lambda item: item[:2]):
        lane.restore_waiting(run)
    requeued = [run for run in lane.enforce_limit() if isinstance(run, RunRecord)]
    return lane, requeued


class Decision(NamedTuple):
    """What a trigger did to its key's runs (see :func:`decide_trigger`)."""

    result: TriggerResult
    created: RunRecord | None
    """The new run, or None (the trigger joined one)."""
    changed: list[RunRecord]
    """Existing runs changed: joined, promoted, cancelled, or asked to cancel."""
    cancel_running: list[RunRecord]
    """Running runs the trigger cancels (``"cancel"``): their workers must stop them."""


def decide_trigger(
    trig: PreparedTrigger,
    runs: list[RunRecord],
    limit: int,
    new_id: Callable[[], str],
    now: float,
    entered: Entered,
) -> Decision:
    """Decide ``trig`` against its key's unfinished ``runs`` (creation order); apply it.

    The runs are changed in place; :class:`Decision` names those to write.

    Raises:
        InvalidInputError: a merge function failed; nothing is to be written.
    """
    key = trig.key
    job = trig.job.name
    lane: Lane | None = None
    changed: list[RunRecord] = []
    if key is not None:
        lane, requeued = lane_from_runs(key, limit, runs, entered)
        changed.extend(requeued)
    coalesce = trig.coalesce
    plan = plan_trigger(lane, job, coalesce)  # the one decision (state.py)
    if plan.target is not None:
        assert coalesce is not None
        target = plan.target
        assert isinstance(target, RunRecord)
        join_run(target, trig, coalesce, now)
        changed.append(target)
        return Decision(
            TriggerResult(target.id, Disposition.COALESCED, job, key), None, changed, []
        )
    due = trig.delay <= 0
    disposition = new_run_disposition(lane, plan.victims, due=due)
    record = new_record(new_id(), trig, now, durable=True)
    cancel_running: list[RunRecord] = []
    if lane is None:
        if due:
            record.apply(PROMOTE)  # a due run without a key never waits
    else:
        for victim in plan.victims:
            assert isinstance(victim, RunRecord)
            if victim.status is RUNNING:
                if not victim.cancel_requested:
                    victim.cancel_requested = True
                    changed.append(victim)
                    cancel_running.append(victim)
                continue
            _mark(changed, lane.finish(victim, CANCEL))
            victim.finished_at = now
            changed.append(victim)
        _mark(changed, lane.add(record), skip=record)
    return Decision(
        TriggerResult(record.id, disposition, job, key), record, changed, cancel_running
    )


def promote_after(key: str, limit: int, runs: list[RunRecord], entered: Entered) -> list[RunRecord]:
    """A key's runs after some of them ended: the runs that take the slots freed.

    ``runs`` are the key's unfinished runs, in creation order, the ended ones left out.
    Returns every run to write (requeued over a lower limit, or promoted).
    """
    lane, changed = lane_from_runs(key, limit, runs, entered)
    _mark(changed, lane.promote())
    return changed


def become_due(
    key: str | None,
    limit: int,
    runs: list[RunRecord],
    due: RunRecord,
    entered: Entered,
) -> list[RunRecord]:
    """``due``, a scheduled run among ``runs``, reached its due time; return runs to write."""
    if key is None:
        if due.attempt > 0:
            due.apply(RESUME)  # a retry backoff ended
        else:
            due.apply(BECOME_DUE)
            due.apply(PROMOTE)  # a due run without a key never waits
        return [due]
    lane, changed = lane_from_runs(key, limit, runs, entered)
    if due.status is not SCHEDULED:
        return changed
    moved = lane.become_due(due)
    if due not in moved:
        changed.append(due)
    _mark(changed, moved)
    return changed


def _mark(changed: list[RunRecord], runs: Iterable[object], skip: RunRecord | None = None) -> None:
    for run in runs:
        if run is not skip and isinstance(run, RunRecord) and run not in changed:
            changed.append(run)
