"""The shared coordinator: one per process, deciding and leasing in PostgreSQL.

:class:`SharedCoordinator` is the whole of it: the connection and notices
(:mod:`~keyflow.shared.database`), decisions under lane locks
(:mod:`~keyflow.shared.deciding`), leases (:mod:`~keyflow.shared.leasing`), and pauses.
"""

from __future__ import annotations

from .database import Notice
from .leasing import Leasing

PAUSE = "INSERT INTO keyflow_pauses (kind, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"
RESUME = "DELETE FROM keyflow_pauses WHERE kind = $1 AND name = $2"


class SharedCoordinator(Leasing):
    """Decides, claims, writes, renews and reclaims for one process (see the package)."""

    notices_heard = 0
    """Notices heard so far (a change token for watchers)."""

    def deliver(self, notice: Notice) -> None:
        """Count the notice, then hand it on."""
        self.notices_heard += 1
        super().deliver(notice)

    async def set_paused(self, kind: str, name: str, paused: bool) -> None:
        """Pause (or resume) a job or a lane for every process.

        Raises:
            StorageError: the database failed; nothing changed.
        """
        async with self.transaction("a pause") as conn:
            await conn.execute(PAUSE if paused else RESUME, kind, name)
            await self.notify(conn, Notice(work=not paused, pauses=True))
