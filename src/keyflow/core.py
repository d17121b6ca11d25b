"""The scheduler's in-memory core: one process's coordinator of runs.

``Core`` is built in layers, one concept per module:

* :mod:`keyflow.live` — the live state (unfinished runs, lanes, ready queue, timers)
  and the bookkeeping of every change;
* :mod:`keyflow.runtime` — execution transitions (start, complete, fail, retry,
  cancel, interrupt) and pauses;
* :mod:`keyflow.admission` — triggers: decide (``state.plan_trigger``), apply, settle
  or roll back;
* this module — reads: lane snapshots and what ``run_until_idle`` asks.

Everything is synchronous and runs on the event loop thread; the commit pipeline
(:mod:`keyflow.commit`) writes behind it. See docs/architecture.md.
"""

from __future__ import annotations

from .admission import Admission
from .live import Counters
from .state import PENDING, RUNNING, SCHEDULED
from .stats import LaneSnapshot

__all__ = ["Core", "Counters"]


class Core(Admission):
    """Owns lanes and unfinished runs; decides, applies, settles and rolls back."""

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

    def lane_snapshot(self, key: str) -> LaneSnapshot:
        """The lane of ``key`` now (idle if it has no unfinished run)."""
        coalesced = self.key_coalesced.get(key, 0)
        lane = self.lanes.get(key)
        paused = key in self.paused_keys
        if lane is None:
            return LaneSnapshot(
                key, "idle", self.limit_of(key, strict=False), (), (), (), coalesced, paused
            )
        members = lane.members.values()
        return LaneSnapshot(
            key=key,
            state=lane.state,
            limit=lane.limit,
            running=tuple(r.id for r in members if r.holds_slot),
            waiting=tuple(r.id for r in lane.waiting),
            scheduled=tuple(r.id for r in members if r.status is SCHEDULED and not r.holds_slot),
            coalesced=coalesced,
            paused=paused,
        )
