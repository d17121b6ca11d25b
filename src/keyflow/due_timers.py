"""The timers of scheduled runs: one heap of due times, one clock timer at its head.

A timer per delayed run costs a handle in the event loop's own heap, and its setting
and cancelling, on every trigger with a delay and every retry backoff (about a sixth of
a delayed trigger's time on the loop). Here a run's timer is an entry in a heap; the
clock holds one timer, at the earliest due time. A run disarmed (cancelled, re-armed
for another time) leaves its entry behind, skipped when it comes up; the heap is
rebuilt when such entries outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from .clock import Clock, TimerHandle

_REBUILD_ABOVE = 64
"""Stale entries are cleared out only past this many entries in all."""


class DueTimers:
    """Calls ``fire(run_id)`` once each armed run's due time has come.

    Runs due at the same time fire in the order they were armed.
    """

    __slots__ = ("_armed", "_clock", "_fire", "_handle", "_handle_at", "_heap", "_seq")

    def __init__(self, clock: Clock, fire: Callable[[str], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._armed: dict[str, float] = {}
        """The due time of each armed run: an entry of the heap is live iff it matches."""
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._handle: TimerHandle | None = None
        self._handle_at = 0.0

    def __len__(self) -> int:
        """How many runs are armed."""
        return len(self._armed)

    def __contains__(self, run_id: object) -> bool:
        """True if ``run_id`` is armed."""
        return run_id in self._armed

    def due_at(self, run_id: str) -> float | None:
        """When ``run_id`` fires (None if it is not armed)."""
        return self._armed.get(run_id)

    def arm(self, run_id: str, when: float) -> None:
        """Fire ``run_id`` at ``when`` (replacing the time it was armed for, if any)."""
        self._armed[run_id] = when
        heapq.heappush(self._heap, (when, next(self._seq), run_id))
        self._compact()
        self._wake_by(when)

    def disarm(self, run_id: str) -> None:
        """Do not fire ``run_id`` (nothing if it is not armed)."""
        if self._armed.pop(run_id, None) is not None:
            self._compact()

    def clear(self) -> None:
        """Disarm every run."""
        self._armed.clear()
        self._heap.clear()
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _wake_by(self, when: float) -> None:
        """Have the clock's timer fire at ``when``, unless it fires earlier already."""
        handle = self._handle
        if handle is None or when < self._handle_at:
            if handle is not None:
                handle.cancel()
            self._handle_at = when
            self._handle = self._clock.call_at(when, self._on_time)

    def _on_time(self) -> None:
        self._handle = None
        try:
            self._fire_due()
        finally:
            # At the head now (a run armed by ``fire`` may have set the timer past it).
            if self._heap:
                self._wake_by(self._heap[0][0])

    def _fire_due(self) -> None:
        # Everything due by the clock's timer fires (as a timer per run would have),
        # and whatever the wall clock says is due by now.
        limit = max(self._handle_at, self._clock.now())
        heap, armed = self._heap, self._armed
        while heap and heap[0][0] <= limit:
            when, _, run_id = heapq.heappop(heap)
            if armed.get(run_id) == when:
                del armed[run_id]
                self._fire(run_id)

    def _compact(self) -> None:
        heap = self._heap
        if len(heap) > _REBUILD_ABOVE and len(heap) > 2 * len(self._armed):
            armed = self._armed
            heap[:] = [e for e in heap if armed.get(e[2]) == e[0]]
            heapq.heapify(heap)
