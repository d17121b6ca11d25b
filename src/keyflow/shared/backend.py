"""``postgresql://…`` in shared mode: the storage backend of one of many processes.

It reads like the single-writer PostgreSQL backend (the same tables and queries), but
takes no lock: any number of processes open the schema at once. A process restores
nothing at start (the runs belong to the database, not to it); what its workers change
is written through its :class:`~keyflow.shared.coordinator.SharedCoordinator`, fenced by
their leases; triggers never reach :meth:`write` (the scheduler decides them in the
database, see :meth:`keyflow.core.Core.commit`).
"""

from __future__ import annotations

from collections.abc import Hashable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import StorageError
from ..storage_backends.base import Refusals, StoredState, WriteBatch
from ..storage_backends.postgres import FAILURES, PostgreSQLBackend, advisory_key
from ..storage_backends.postgres_tls import SSLMode
from ..storage_backends.sql_runs import driver_reason, prune_finished
from .coordinator import SharedCoordinator
from .deciding import LimitOf

PRUNE_GRACE = 60.0
"""Seconds a finished run stays whatever ``retention`` says (other processes' waits)."""


class SharedPostgreSQLBackend(PostgreSQLBackend):
    """PostgreSQL shared by many processes (see the module)."""

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        retention: int = 10_000,
        connect_timeout: float = 10.0,
        lease_seconds: float = 30.0,
        pool_size: int = 10,
        application_name: str = "keyflow",
        sslmode: SSLMode | None = None,
    ) -> None:
        """A backend over the schema ``schema`` of the database at ``url``.

        Args:
            url: ``postgresql://user:password@host:port/database``.
            schema: the PostgreSQL schema that holds keyflow's tables.
            retention: finished runs kept; older ones are deleted.
            connect_timeout: seconds a connection may take before it fails.
            lease_seconds: how long a worker's lease on a run lasts unrenewed; a
                process that dies loses its runs to others after this long.
            pool_size: connections this process opens at most (plus one listening).
            application_name: how its sessions are named in ``pg_stat_activity``.
            sslmode: TLS to the server, by libpq's names (``require``, ``verify-full``…).

        Raises:
            ConfigurationError: the URL or the schema name is not valid.
        """
        super().__init__(
            url,
            schema=schema,
            retention=retention,
            connect_timeout=connect_timeout,
            sslmode=sslmode,
        )
        dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.coordinator = SharedCoordinator(
            dsn,
            schema,
            self.place,
            connect_timeout=connect_timeout,
            pool_size=pool_size,
            lease_seconds=lease_seconds,
        )
        """Decides, claims and writes in the database (see :mod:`keyflow.shared`)."""
        self.application_name = self.coordinator.application_name = application_name
        self.coordinator.sslmode = self.sslmode
        self.prune_key = advisory_key(f"{schema} (pruning)")
        """The advisory lock a pruning process holds (the others skip their turn)."""
        self.limit_of: LimitOf = lambda _key: 1
        """The lanes' limits: the scheduler sets its ``lane_limit`` here."""

    def __repr__(self) -> str:
        return f"<SharedPostgreSQLBackend {self.place}>"

    async def open(self) -> StoredState:
        """Connect, create or migrate the schema; restore nothing (see the module).

        Raises:
            StorageError: the database cannot be reached.
            StorageCorruptError: the schema's keyflow tables are of a newer keyflow.
        """
        state = await super().open()
        try:
            await self.coordinator.open_pool()
        except BaseException:
            await self.close()
            raise
        return StoredState(unfinished=[], paused=state.paused)

    async def _lock(self, conn: AsyncConnection) -> None:
        # No lock held while open: many processes write. Creating or migrating the
        # schema takes the lock for that moment only (see _create_or_migrate).
        self._locked = True

    async def _load(self, conn: AsyncConnection) -> StoredState:
        # Only the pauses: unfinished runs stay in the database, for any process.
        # Creating or migrating the schema is one process's at a time: a session lock,
        # taken before the transaction that looks (a transaction begun earlier could
        # go on seeing the schema as it was before it waited).
        await conn.execute(select(func.pg_advisory_lock(self.lock_key)))
        await conn.commit()
        try:
            async with conn.begin():
                version = await self._schema_version(conn)
                await self._create_or_migrate(conn, version)
                pauses = await conn.execute(
                    select(self.tables.pauses.c.kind, self.tables.pauses.c.name)
                )
                paused = frozenset((str(kind), str(name)) for kind, name in pauses)
        finally:
            await conn.execute(select(func.pg_advisory_unlock(self.lock_key)))
            await conn.commit()
        return StoredState(unfinished=[], paused=paused)

    async def prune(self, now: float) -> None:
        """Delete the oldest finished runs beyond ``retention`` (one process at a time).

        A run finished less than :data:`PRUNE_GRACE` seconds before ``now`` stays: other
        processes may be about to read it (a ``wait`` for it, say).

        Raises:
            StorageError: the database failed; nothing was deleted.
        """
        conn = self._writable()
        try:
            async with conn.begin():
                turn = select(func.pg_try_advisory_xact_lock(self.prune_key))
                if (await conn.execute(turn)).scalar():
                    self._finished = await prune_finished(
                        conn,
                        self.tables,
                        self.retention + self._prune_slack + 1,
                        self.retention,
                        self._prune_slack,
                        now - PRUNE_GRACE,
                    )
        except FAILURES as exc:
            raise StorageError(f"pruning {self.place} failed: {driver_reason(exc)}") from exc

    async def close(self) -> None:
        """Close the coordinator's connections, then the reading ones. Idempotent."""
        await self.coordinator.close_pool()
        await super().close()

    async def write(self, batch: WriteBatch) -> Refusals | None:
        """Write the workers' changes, fenced by their leases, and the pauses.

        A change to a run whose lease this process lost is dropped (and logged): the
        run is someone else's now.

        Raises:
            StorageError: nothing of the batch was stored.
        """
        await self.coordinator.save(batch, self.limit_of)
        for kind, name, paused in batch.pauses:
            if self.keeps_pause(kind, name):
                await self.coordinator.set_paused(kind, name, paused)
        return None

    async def change_token(self) -> Hashable:
        """What changes whenever a run does (from this process or any other)."""
        return self.coordinator.notices_heard, await super().change_token()
