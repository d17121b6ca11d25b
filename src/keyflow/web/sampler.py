"""Background sampling of the counters behind the rate sparklines.

Rates are differences of counters between samples. Sampled only when someone looks,
an hour nobody watched would show as one spike; so once the dashboard has served a
request, a task samples every bucket (10 s) for as long as its source is alive (the
scheduler runs), whoever looks. It costs one ``statistics()`` call per bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from .charts import BUCKETS, WINDOW_SECONDS

PERIOD = WINDOW_SECONDS / BUCKETS
"""One sample per sparkline bucket."""

Sample = Callable[[], Awaitable[bool]]
"""Takes one sample; returns False when there is nothing more to sample."""
Sleep = Callable[[float], Awaitable[None]]


class RateSampler:
    """Runs ``sample`` every ``period`` seconds in one background task, started on demand.

    Args:
        sample: takes a sample; False ends the task (the source stopped).
        period: seconds between samples.
        sleep: how to wait (tests pass one they control).
    """

    def __init__(self, sample: Sample, period: float = PERIOD, sleep: Sleep = asyncio.sleep):
        self._sample = sample
        self._period = period
        self._sleep = sleep
        self.task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        """Start the task unless it runs (a new one after its source came back)."""
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while await self._sample():
            await self._sleep(self._period)  # the sampling period, not a synchronisation

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
