"""One way to see a lane: a :class:`~keyflow.stats.LaneSnapshot` from a key's unfinished runs.

The scheduler's core builds the snapshots of its live lanes from its run records; the
storage dashboard (``keyflow dashboard --storage``) rebuilds lanes from the runs another
process stored. Both call :func:`lane_snapshot`, so "running", "waiting", "scheduled"
and the lane's state mean the same wherever a lane is shown; a coordinator over a shared
database will build its snapshots from rows the same way.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .runs import Run, RunStatus
from .state import lane_state, slot_held
from .stats import LaneSnapshot


class LaneMember(Protocol):
    """What a lane snapshot reads of a run: a live record or a stored :class:`~keyflow.Run`."""

    @property
    def id(self) -> str:
        """The run's id."""

    @property
    def status(self) -> RunStatus:
        """Its status (unfinished: scheduled, queued, pending or running)."""

    @property
    def attempt(self) -> int:
        """Attempts started so far (> 0: a scheduled run is in a retry backoff)."""


def lane_snapshot(
    key: str,
    limit: int,
    members: Iterable[LaneMember],
    waiting: Iterable[LaneMember],
    *,
    coalesced: int,
    paused: bool,
) -> LaneSnapshot:
    """The snapshot of the lane of ``key``.

    Args:
        key: the concurrency key.
        limit: how many of its runs may execute at once.
        members: its unfinished runs in creation order (the order ``running`` and
            ``scheduled`` list them in).
        waiting: its queued runs in the order they will start.
        coalesced: triggers coalesced into runs of the key.
        paused: the lane is paused.
    """
    running: list[str] = []
    scheduled: list[str] = []
    for run in members:
        status = run.status
        if slot_held(status, run.attempt):
            running.append(run.id)
        elif status is RunStatus.SCHEDULED:
            scheduled.append(run.id)
    queue = tuple(run.id for run in waiting)
    return LaneSnapshot(
        key=key,
        state=lane_state(len(running), len(queue)),
        limit=limit,
        running=tuple(running),
        waiting=queue,
        scheduled=tuple(scheduled),
        coalesced=coalesced,
        paused=paused,
    )


def stored_lane_limit(runs: Iterable[LaneMember]) -> int:
    """The limit a lane rebuilt from stored runs shows: how many of them hold a slot, >= 1.

    Storage keeps runs, not the writer's ``lane_limit`` (a number or a function of the
    key, known only to the process that writes): the lane's limit is at least the
    number of its runs holding slots now, and 1 when none does. A guess, and the best
    stored runs tell.
    """
    return max(1, sum(1 for run in runs if slot_held(run.status, run.attempt)))


def stored_lane_snapshot(
    key: str, runs: Iterable[Run], *, coalesced: int, paused: bool = False
) -> LaneSnapshot:
    """The lane of ``key`` rebuilt from its stored unfinished runs (in any order).

    Runs are ordered by creation (ties by id); the queued ones wait in the order they
    became due (ties by creation), as the writer's queue has them; the limit is
    :func:`stored_lane_limit`'s guess.
    """
    members = sorted(runs, key=lambda r: (r.created_at, r.id))
    queued = [r for r in members if r.status is RunStatus.QUEUED]
    waiting = sorted(queued, key=lambda r: (r.due_at, r.created_at))
    return lane_snapshot(
        key,
        stored_lane_limit(members),
        members,
        waiting,
        coalesced=coalesced,
        paused=paused,
    )
