"""The live stream behind each page: widget updates, throttled, as SSE events.

:func:`widget_updates` turns a source's change feed into ``(widget, html)`` pairs: a
change marks the widgets it concerns dirty, and a dirty widget is rendered again at
most once per ``min_interval`` however many changes arrive (so a burst of 100k events
costs each widget ~4 renders a second). Widgets in ``periodic`` are also refreshed
every ``period`` seconds (rates move even when nothing happens). Cancelling the
consumer (a client that went away) stops everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

from ..watch import Changes

Render = Callable[[str], Awaitable[str]]
Wants = Callable[[str, Changes], bool]


async def widget_updates(
    changes: AsyncIterator[Changes],
    widgets: Sequence[str],
    render: Render,
    wants: Wants,
    *,
    min_interval: float = 0.25,
    periodic: Sequence[str] = (),
    period: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncGenerator[tuple[str, str], None]:
    """Yield ``(widget, html)`` whenever a widget changed, at most every ``min_interval``."""
    dirty: set[str] = set()
    wake = asyncio.Event()

    async def pump() -> None:
        async for feed in changes:
            for widget in widgets:
                if widget not in dirty and wants(widget, feed):
                    dirty.add(widget)
            wake.set()

    async def tick() -> None:
        while True:
            await asyncio.sleep(period)  # a refresh period, not a synchronisation
            dirty.update(periodic)
            wake.set()

    tasks = [asyncio.ensure_future(pump())]
    if periodic:
        tasks.append(asyncio.ensure_future(tick()))
    last = dict.fromkeys(widgets, float("-inf"))
    try:
        while True:
            wake.clear()
            now = clock()
            for widget in widgets:
                if widget in dirty and now - last[widget] >= min_interval:
                    dirty.discard(widget)
                    last[widget] = now
                    yield widget, await render(widget)
            if tasks[0].done():
                tasks[0].result()  # the feed ended (or failed): so does the stream
                return
            waits = [last[w] + min_interval - clock() for w in dirty]
            if not waits:
                await wake.wait()
            elif min(waits) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(waits))
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
