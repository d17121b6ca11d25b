"""One change watch on the scheduler, fanned out to every live stream of one app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..scheduler import Keyflow
from ..watch import Changes, ChangeWatch


class Broadcast:
    """Fans one :meth:`Keyflow.changes` watch out to any number of readers.

    The scheduler pays for one watch however many pages are open; the watch exists
    only while at least one reader listens.
    """

    def __init__(self, kf: Keyflow) -> None:
        self.kf = kf
        self.inboxes: list[ChangeWatch] = []
        self.task: asyncio.Task[None] | None = None

    async def listen(self) -> AsyncIterator[Changes]:
        """Batches of changes until the reader stops (or the scheduler does)."""
        inbox = ChangeWatch()
        self.inboxes.append(inbox)
        if self.task is None:
            self.task = asyncio.ensure_future(self._pump())
        try:
            async for changes in inbox:
                yield changes
        finally:
            self.inboxes.remove(inbox)
            if not self.inboxes and self.task is not None:
                self.task.cancel()
                self.task = None

    async def _pump(self) -> None:
        async with self.kf.changes() as watch:
            async for changes in watch:
                for inbox in self.inboxes:
                    inbox.absorb(changes)
        for inbox in self.inboxes:  # the scheduler stopped: so do the streams
            inbox.close()
