"""Time sources: the system clock, and a virtual clock for tests and simulations.

The scheduler reads time and sets timers (delays, retry backoffs) only through a
:class:`Clock`, so a test can skip a ten-minute backoff instantly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    """Something that can be cancelled (asyncio's TimerHandle fits)."""

    def cancel(self) -> None:
        """Stop the timer from firing."""


class Clock(ABC):
    """Wall time in epoch seconds, and timers at wall times."""

    @abstractmethod
    def now(self) -> float:
        """The current time, in seconds since the epoch."""

    @abstractmethod
    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` (from the event loop) once ``now() >= when``."""

    def jump(self) -> bool:
        """Advance to the next timer, if this clock can; True if it did."""
        return False


class SystemClock(Clock):
    """Real time: ``time.time()`` and the running event loop's timers."""

    now = staticmethod(time.time)  # the C function itself: read on every run change

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule on the running loop."""
        delay = max(0.0, when - time.time())
        return asyncio.get_running_loop().call_later(delay, callback)


class _VirtualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock(Clock):
    """A clock that moves only when told to.

    :meth:`advance` moves time and fires the timers that came due, in order. The
    scheduler's ``run_until_idle()`` calls :meth:`jump` when nothing runs and only timers
    are left, so delays and backoffs take no real time in tests.

    Args:
        start: the initial time in epoch seconds.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _VirtualTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """The virtual time."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Register a timer; it fires when the clock reaches ``when``."""
        timer = _VirtualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers in order."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        self._advance_to(self._now + seconds)

    def _advance_to(self, target: float) -> None:
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
        self._now = max(self._now, target)

    def next_timer(self) -> float | None:
        """When the next live timer fires, or None."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def jump(self) -> bool:
        """Advance to the next live timer; False if there is none."""
        when = self.next_timer()
        if when is None:
            return False
        self._advance_to(when)
        return True
