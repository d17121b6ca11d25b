"""Who watches runs change: notices name the changed runs only while some process does.

A process watches while it has ``events()`` subscriptions or ``changes()`` watches (a
dashboard too), and while it waits for runs other processes execute (``wait``,
``cancel``, ``run_until_idle``). It says so in ``keyflow_watchers``: one row per
watching process, with an expiry it renews with its heartbeat, and a notice when it
begins. Every process keeps :attr:`~keyflow.shared.database.SharedDatabase.watched`: set
by such a notice, and read from the table again by its keeper. While nobody watches,
a start or an end notifies nobody: on a busy schema that is two notices per run fewer,
each of which wakes every listening process.

A wait that begins just as another process ends the run it waits for may miss that
end's notice (the other process did not know of the watcher yet): the wait's slow poll
still sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from ..errors import StorageError
from .database import Notice

if TYPE_CHECKING:
    from ..hub import EventHub
    from .coordinator import SharedCoordinator

logger = logging.getLogger("keyflow.shared")

WATCH: Final = (
    "WITH w AS (INSERT INTO keyflow_watchers (owner, until) "
    "VALUES ($1, clock_timestamp() + make_interval(secs => $2)) "
    "ON CONFLICT (owner) DO UPDATE SET until = EXCLUDED.until RETURNING owner) "
    "SELECT pg_notify($3, $4) FROM w"
)
"""Watch (or go on watching) until a while from now, and tell the others."""

UNWATCH: Final = (
    "DELETE FROM keyflow_watchers WHERE owner = $1 OR until < clock_timestamp() - interval '1 day'"
)
"""Watch no more (and forget processes that died long ago)."""

WATCHED: Final = "SELECT EXISTS (SELECT 1 FROM keyflow_watchers WHERE until > clock_timestamp())"


class Watching:
    """This process's watch of runs' changes (see the module)."""

    def __init__(self, coordinator: SharedCoordinator, hub: EventHub) -> None:
        self._coordinator = coordinator
        self._hub = hub
        self._waits = 0
        self._until = 0.0
        """The event loop's time until which the last announcement holds (a margin
        before its expiry in the database)."""
        self._announcing: asyncio.Task[None] | None = None

    def wanted(self) -> bool:
        """This process listens for changes now (also the coordinator's ``watching``)."""
        return self._waits > 0 or self._hub.active

    @contextlib.asynccontextmanager
    async def waiting(self) -> AsyncIterator[None]:
        """Watch while the body waits for runs other processes execute."""
        self._waits += 1
        try:
            await self.ensure()
            yield
        finally:
            self._waits -= 1

    def hub_changed(self) -> None:
        """Someone began listening to this process's events: announce it now.

        Outside the event loop (a subscription made before it runs), the keeper's next
        pass announces it.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.wanted() and (self._announcing is None or self._announcing.done()):
            self._announcing = loop.create_task(self.ensure())

    async def ensure(self) -> None:
        """Announce this process's watch unless a recent announcement still holds.

        A failure is logged: waits still poll, and the heartbeat tries again.
        """
        loop = asyncio.get_running_loop()
        if not self.wanted() or loop.time() < self._until:
            return
        coordinator = self._coordinator
        ttl = coordinator.lease_seconds
        try:
            await coordinator.fetch(
                WATCH, coordinator.owner, ttl, coordinator.channel, Notice(watch=True).encode()
            )
        except StorageError as exc:
            logger.warning("announcing a watch of runs' changes failed: %s", exc)
            return
        self._until = loop.time() + ttl / 2

    async def renew(self) -> None:
        """The heartbeat: keep announcing while this process watches."""
        if self.wanted():
            self._until = 0.0
            await self.ensure()

    async def refresh(self) -> None:
        """Read whether any process watches now (the keeper's periodic look).

        Raises:
            StorageError: the database failed (the flag is left as it was).
        """
        coordinator = self._coordinator
        coordinator.watched = bool(await coordinator.fetchval(WATCHED)) or self.wanted()

    async def close(self) -> None:
        """Watch no more (quietly: a row left behind expires)."""
        task, self._announcing = self._announcing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(StorageError):
            await self._coordinator.execute(UNWATCH, self._coordinator.owner)
