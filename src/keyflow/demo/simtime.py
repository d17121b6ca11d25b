"""Simulated time for the demo: virtual (deterministic, as fast as possible) or scaled.

* :class:`VirtualTime` moves only when everything that can happen now has happened:
  its driver waits until every busy worker is asleep in simulated time and no trigger
  is in flight, then jumps to the next timer. Same seed, same story, every time.
* :class:`ScaledTime` follows the wall clock, ``speed`` times faster: what the live
  demo (and its dashboard) runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from ..clock import Clock, TimerHandle, VirtualClock
from ..scheduler import Keyflow


class SimTime(ABC):
    """Simulated seconds: what the jobs sleep in and the events are scheduled at."""

    clock: Clock
    """The clock keyflow itself runs on (delays, backoffs)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()
        self._timers: set[TimerHandle] = set()
        self._closed = False

    def now(self) -> float:
        """Simulated time now."""
        return self.clock.now()

    @abstractmethod
    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass."""

    def at(self, when: float, action: Callable[[], Awaitable[Any]]) -> TimerHandle | None:
        """Run ``action()`` (a coroutine) at simulated time ``when`` (not once closed)."""
        if self._closed:
            return None

        def fire() -> None:
            self._timers.discard(handle)
            if not self._closed:
                self._spawn(action())

        handle = self.clock.call_at(when, fire)
        self._timers.add(handle)
        return handle

    def close(self) -> None:
        """End the world's events: no timer fires and no event goes on from now.

        Called before the scheduler stops, so no crawl is triggered into a stopping
        scheduler (which would refuse it). Idempotent.
        """
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # surfaces in the loop's handler

    @abstractmethod
    async def run(self, kf: Keyflow, until: float, stop: asyncio.Event) -> None:
        """Let the simulation play until ``until`` (or ``stop``), then let runs finish."""


class VirtualTime(SimTime):
    """Deterministic simulated time on a :class:`~keyflow.testing.VirtualClock`."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.clock = self.virtual = VirtualClock(start)
        self.sleeping = 0

    async def sleep(self, seconds: float) -> None:
        """Wait for the driver to move the clock ``seconds`` on."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.virtual.call_at(self.now() + seconds, lambda: _resolve(future))
        self.sleeping += 1
        try:
            await future
        finally:
            self.sleeping -= 1

    async def settle(self, kf: Keyflow) -> None:
        """Return once nothing can happen without time passing."""
        quiet = 0
        spins = 0
        while quiet < 3:
            spins += 1
            # Real I/O (a SQLite write in its thread) needs real time, not just turns.
            await asyncio.sleep(0 if spins < 200 else 0.001)
            stats = kf.statistics()
            busy = stats.workers_busy
            waiting = stats.unfinished["pending"] and busy < stats.workers
            settled = busy == self.sleeping and not waiting and not self._tasks
            quiet = quiet + 1 if settled else 0

    async def run(self, kf: Keyflow, until: float, stop: asyncio.Event) -> None:
        """Jump from timer to timer until ``until``; then until every run has finished."""
        while not stop.is_set():
            await self.settle(kf)
            when = self.virtual.next_timer()
            if when is None:
                return
            if when > until and not any(kf.statistics().unfinished.values()):
                return  # the story is over and every run has ended
            self.virtual.jump()


class ScaledTime(SimTime):
    """Wall-clock time, ``speed`` times faster, from simulated time ``start``."""

    def __init__(self, start: float, speed: float) -> None:
        super().__init__()
        self.clock = _ScaledClock(start, speed)
        self.speed = speed

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds / speed`` real seconds."""
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    async def run(self, kf: Keyflow, until: float, stop: asyncio.Event) -> None:
        """Wait (in real time) for ``until`` or ``stop``."""
        remaining = (until - self.now()) / self.speed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), remaining if remaining < 1e9 else None)


class _ScaledClock(Clock):
    def __init__(self, start: float, speed: float) -> None:
        self._start = start
        self._speed = speed
        self._real = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._real) * self._speed

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        delay = max(0.0, (when - self.now()) / self._speed)
        return asyncio.get_running_loop().call_later(delay, callback)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
