"""``postgresql://user@host:port/db``: runs in PostgreSQL, through SQLAlchemy Core + asyncpg.

The tables of ``postgres_schema.py``, in a PostgreSQL schema (``?schema=``, ``public``
by default; created if missing). One process writes: it holds a session advisory lock,
keyed by the schema's name, on its writer connection for as long as it is open; any
number may read (``?mode=ro``). Every write is one transaction; the commit pipeline
groups concurrent triggers into it.

PostgreSQL text cannot hold a NUL character, and an index entry has a size limit: a run
whose id, job, key, idempotency key or labels hold a NUL or are too long
(:mod:`~keyflow.storage_backends.postgres_text`) is refused
(:data:`~keyflow.storage_backends.base.Refusals`), and the rest of its batch is stored.
Run data is JSON, where a NUL is written escaped.

Several processes deciding about the same keys (row locks per key, leases, LISTEN/NOTIFY)
come later (issue 14); the schema leaves room for them (``seq``, a schema version).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any, Final

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import ConfigurationError, StorageCorruptError, StorageError, StorageLockedError
from ..records import RunRecord
from ..runs import Run
from . import postgres_schema as schema
from .base import Refusals, RunQuery, StoredState, WriteBatch
from .postgres_batch import BatchRows, write_one_statement, write_statements
from .postgres_text import NUL as _NUL
from .postgres_text import nul_field as nul_field
from .postgres_text import nul_in_query, refusal, run_refusal, shortened, text_problem, unstorable
from .postgres_tls import SSLMode, check_sslmode, ssl_args
from .rows import encode_row, loads_row, record_row, row_record
from .sql_runs import TERMINAL, SQLReads, count_finished, driver_reason, prune_due
from .sql_tables import migrate
from .summaries import RunTiming

logger = logging.getLogger("keyflow.storage")

DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""What asyncpg (and the network under it) raises, besides SQLAlchemy's errors.

(``InternalClientError``: the connection's protocol broke, e.g. the server ended the
session while a statement was on its way.)"""

FAILURES: tuple[type[BaseException], ...] = (SQLAlchemyError, *DRIVER_ERRORS)
"""Every error that means the database failed a request."""

_REFUSED = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)
"""A login refused (password, user, pg_hba) or no such database: trying again won't help."""

KEEPALIVE: Final[Mapping[str, str]] = MappingProxyType(
    {
        "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5",
        "tcp_keepalives_count": "3",
    }
)
"""The server probes our idle sessions: a writer whose machine died loses its session,
and so its lock, within about 25 s (not the system's default of hours). Over TCP only."""


class PostgreSQLBackend(SQLReads):
    """Runs in a PostgreSQL database (see the module)."""

    tables = schema.TABLES
    driver_errors = DRIVER_ERRORS

    def __init__(
        self,
        url: str | URL,
        *,
        schema: str = "public",
        retention: int = 10_000,
        read_only: bool = False,
        connect_timeout: float = 10.0,
        sslmode: SSLMode | None = None,
    ) -> None:
        """A backend over the database at ``url`` (SQLAlchemy's form, any driver named).

        Args:
            url: ``postgresql://user:password@host:port/database``.
            schema: the PostgreSQL schema that holds keyflow's tables.
            retention: finished runs kept; older ones are deleted.
            read_only: only read (no lock, no writes, no schema changes).
            connect_timeout: seconds a connection may take before it fails.
            sslmode: TLS to the server, by libpq's names (:mod:`.postgres_tls`).

        Raises:
            ConfigurationError: the URL or the schema name is not valid.
        """
        if retention < 0:
            raise ValueError("retention must be >= 0")
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigurationError(f"not a PostgreSQL URL: {exc}") from None
        if not schema or _NUL in schema or len(schema.encode()) > 63:
            raise ConfigurationError(
                f"schema must be a PostgreSQL name (1 to 63 bytes, no NUL), got {schema[:80]!r}"
            )
        if schema.startswith("pg_") or schema == "information_schema":
            raise ConfigurationError(  # keyflow's tables would go among the catalog's
                f"schema {schema!r} is one of PostgreSQL's own: name a schema of yours"
            )
        self.url = parsed.set(drivername="postgresql+asyncpg")
        self.schema = schema
        self._quoted = '"' + schema.replace('"', '""') + '"'  # the schema's name in SQL
        self.retention = retention
        self.read_only = read_only
        self.connect_timeout = connect_timeout
        self.sslmode = check_sslmode(sslmode)  # None: asyncpg's default
        self.application_name = "keyflow"
        """How its sessions are named in ``pg_stat_activity``."""
        self.lock_key = advisory_key(schema)
        """The advisory lock the writer holds (a 64-bit key made from the schema name)."""
        self._engine: AsyncEngine | None = None
        self._writer: AsyncConnection | None = None
        self._locked = False  # the writer's session holds the lock (a new session does not)
        self._reads = 0  # reads in flight: close() waits for them
        self._reads_done = asyncio.Event()
        self._reads_done.set()
        self._finished = 0  # finished rows stored, counted exactly at open and each prune
        self._prune_slack = retention // 20  # exact count at most every 5 % of growth

    @property
    def place(self) -> str:
        """The database and schema, for messages (never a password)."""
        url = self.url
        where = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
        return f"PostgreSQL {where} schema {self.schema!r}"

    def __repr__(self) -> str:
        return f"<PostgreSQLBackend {self.place}{' read-only' if self.read_only else ''}>"

    # -- opening -----------------------------------------------------------------

    async def open(self) -> StoredState:
        """Connect, lock (unless read-only), create or migrate the schema, load.

        Raises:
            StorageError: the database cannot be reached.
            StorageLockedError: another process writes this schema.
            StorageCorruptError: the schema's keyflow tables are of a newer keyflow.
        """
        try:
            return await self._open()
        except BaseException:
            await self.close()
            raise

    async def probe(self) -> None:
        """Connect once and hang up (see :meth:`StorageBackend.probe`).

        Raises:
            StorageError: the server cannot be reached, or it cannot take us now.
            ConfigurationError: it refused the login, or has no such database.
        """
        url = self.url
        try:
            conn = await asyncpg.connect(
                host=url.host,
                port=url.port,
                user=url.username,
                password=url.password,
                database=url.database,
                timeout=self.connect_timeout,
                server_settings={"application_name": self.application_name},
                **ssl_args(self.sslmode),
            )
        except _REFUSED as exc:
            raise ConfigurationError(f"{self.place} refused the connection: {exc}") from None
        except FAILURES as exc:
            raise StorageError(f"cannot connect to {self.place}: {driver_reason(exc)}") from exc
        await conn.close()

    async def _open(self) -> StoredState:
        settings = {
            "search_path": self._quoted,
            "application_name": self.application_name,
            **KEEPALIVE,
        }
        if self.read_only:
            settings["default_transaction_read_only"] = "on"
        # Reads run one statement each, in autocommit: no BEGIN and ROLLBACK around
        # them. The writer's connection makes transactions.
        engine = self._engine = create_async_engine(
            self.url,
            isolation_level="AUTOCOMMIT",
            connect_args={"timeout": self.connect_timeout, "server_settings": settings}
            | ssl_args(self.sslmode),
        )
        try:
            conn = await engine.connect()
        except FAILURES as exc:
            raise StorageError(f"cannot connect to {self.place}: {driver_reason(exc)}") from exc
        try:
            if not self.read_only:
                self._writer = await conn.execution_options(isolation_level="READ COMMITTED")
                await self._lock(conn)
            state = await self._load(conn)
        except FAILURES as exc:
            raise StorageError(f"cannot open {self.place}: {driver_reason(exc)}") from exc
        finally:
            if self.read_only:
                await conn.close()
        return state

    async def _lock(self, conn: AsyncConnection) -> None:
        locked = (await conn.execute(select(func.pg_try_advisory_lock(self.lock_key)))).scalar()
        await conn.commit()  # a session lock: it outlives the transaction
        self._locked = bool(locked)
        if not locked:
            raise StorageLockedError(
                f"{self.place} is in use by another keyflow process (it holds advisory "
                f"lock {self.lock_key}); only one may write it (open it with ?mode=ro to watch)"
            )

    async def _load(self, conn: AsyncConnection) -> StoredState:
        async with conn.begin():
            version = await self._schema_version(conn)
            if not self.read_only:
                await self._create_or_migrate(conn, version)
            elif version is None:
                raise StorageCorruptError(f"{self.place} has no keyflow tables yet")
            runs = schema.runs_table
            unfinished = await conn.execute(
                select(runs.c.data).where(runs.c.status.not_in(TERMINAL)).order_by(runs.c.seq)
            )
            where = self.place
            records = [row_record(loads_row(data, where), where) for (data,) in unfinished]
            pauses = schema.pauses_table
            paused = frozenset(
                (str(kind), str(name))
                for kind, name in await conn.execute(select(pauses.c.kind, pauses.c.name))
            )
            self._finished = await count_finished(conn, self.tables)
        return StoredState(unfinished=records, paused=paused)

    async def _schema_version(self, conn: AsyncConnection) -> int | None:
        found = await conn.execute(select(func.to_regclass(f"{self._quoted}.keyflow_schema")))
        if found.scalar() is None:
            return None
        version = (await conn.execute(select(schema.schema_table.c.version))).scalar()
        if not isinstance(version, int) or version < 1:
            raise StorageCorruptError(f"{self.place} has no valid keyflow schema version")
        if version > schema.SCHEMA_VERSION:
            raise StorageCorruptError(
                f"{self.place} has keyflow schema version {version}, written by a newer "
                f"keyflow (this one knows up to {schema.SCHEMA_VERSION})"
            )
        return version

    async def _create_or_migrate(self, conn: AsyncConnection, version: int | None) -> None:
        target = schema.SCHEMA_VERSION
        if version is None:
            await conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {self._quoted}")
            await conn.run_sync(schema.create)
            await conn.execute(schema.schema_table.insert().values(version=target))
            return
        await migrate(conn, schema.MIGRATIONS, version, target, schema.schema_table)

    async def close(self) -> None:
        """Release the lock and close the connections. Idempotent.

        Reads already in flight (a dashboard's, say) finish first.
        """
        writer, self._writer = self._writer, None
        engine, self._engine = self._engine, None  # no read starts from now on
        await self._reads_done.wait()
        if writer is not None:
            # Closing hands the connection back to the pool, session (and lock) alive:
            # unlock first; should that fail, disposing of the pool ends the session.
            with contextlib.suppress(*FAILURES):
                await writer.rollback()
                await writer.execute(select(func.pg_advisory_unlock(self.lock_key)))
                await writer.commit()
            with contextlib.suppress(*FAILURES):
                await writer.close()
        if engine is not None:
            await engine.dispose()

    # -- writing -----------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> Refusals | None:
        """Upsert the batch in one transaction; refuse the runs PostgreSQL cannot hold.

        Raises:
            StorageError: nothing of the batch was stored.
        """
        # Read every record now, before the first await (see the base module).
        refused: dict[str, Exception] = {}
        for record in batch.runs:
            refusal_ = run_refusal(record)
            if refusal_ is not None:
                refused[record.id] = refusal_
        for job, key, run_id in batch.idempotency:
            reason = unstorable(job, None, key, None)
            if reason is not None:
                refused.setdefault(run_id, refusal(run_id, reason))
        for group in batch.groups:  # runs refused together (one batch_trigger's)
            error = next((refused[run_id] for run_id in group if run_id in refused), None)
            if error is not None:
                for run_id in group:
                    refused.setdefault(run_id, error)
        rows = [row_columns(record) for record in batch.runs if record.id not in refused]
        keys = [
            (job, key, run_id) for job, key, run_id in batch.idempotency if run_id not in refused
        ]
        labels = [  # a run's labels never change: inserted once, ignored after
            (record.id, name, value)
            for record in batch.runs
            if record.labels and record.id not in refused
            for name, value in record.labels.items()
        ]
        finished = self._finished + sum(1 for row in rows if row["status"] in TERMINAL)
        pauses = list(batch.pauses)
        conn = self._writable()
        try:
            if conn.invalidated or not self._locked:
                # The session ended (a restarted server, a terminated backend): the lock
                # went with it. The next statement opens a new session: lock it again
                # before writing, or refuse to write if another writer came meanwhile.
                self._locked = False
                with contextlib.suppress(*FAILURES):  # a transaction the failure left open
                    await conn.rollback()
                await self._lock(conn)
            if pauses or prune_due(finished, self.retention, self._prune_slack):
                kept = [pause for pause in pauses if self.keeps_pause(pause[0], pause[1])]
                rest = BatchRows(rows, keys, labels, kept)
                slack = self._prune_slack
                finished = await write_statements(conn, rest, finished, self.retention, slack)
            else:
                self._locked = False  # until the statement is known to have left it whole
                await write_one_statement(conn, BatchRows(rows, keys, labels, []))
                self._locked = True
        except FAILURES as exc:
            raise StorageError(f"writing to {self.place} failed: {driver_reason(exc)}") from exc
        self._finished = finished
        return refused or None

    def keeps_pause(self, kind: str, name: str) -> bool:
        """Can the pause of this job or lane be stored? If not, say so in the log.

        A name with a NUL, or too long (:mod:`.postgres_text`), cannot be stored, and no
        run of it either: its pause holds in this process only.
        """
        problem = text_problem(name)
        if problem is not None:
            logger.warning(
                "%s cannot keep the pause of %s %s: its name %s",
                self.place,
                kind,
                shortened(name),
                problem,
            )
        return problem is None

    def _writable(self) -> AsyncConnection:
        if self.read_only:
            raise StorageError(f"{self.place} is open read-only")
        if self._writer is None:
            raise StorageError(f"{self.place} is not open")
        return self._writer

    # -- reading: what PostgreSQL does its own way --------------------------------

    async def change_token(self) -> Hashable:
        """The count of writes, which every write bumps in its transaction."""
        writes: int = await self._scalar(select(schema.schema_table.c.writes))
        return writes

    # A NUL in a question: no stored text holds one, and PostgreSQL refuses to compare.

    async def get_run(self, run_id: str) -> Run | None:
        """The stored run, or None."""
        return None if _NUL in run_id else await super().get_run(run_id)

    async def list_runs(self, query: RunQuery) -> list[Run]:
        """Matching runs, newest first."""
        return [] if nul_in_query(query) else await super().list_runs(query)

    async def count_runs(self, query: RunQuery, *, at_most: int | None = None) -> int:
        """How many runs match (stopping at ``at_most``)."""
        return 0 if nul_in_query(query) else await super().count_runs(query, at_most=at_most)

    async def run_timings(self, job: str, since: float, *, limit: int = 100_000) -> list[RunTiming]:
        """The runs of ``job`` created at ``since`` or later, newest first."""
        return [] if _NUL in job else await super().run_timings(job, since, limit=limit)

    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        """The run an earlier trigger with that key made, while it is retained."""
        if _NUL in job or _NUL in idempotency_key:
            return None
        return await super().find_idempotent(job, idempotency_key)


def advisory_key(schema_name: str) -> int:
    """The 64-bit advisory lock key of the writer of ``schema_name`` (signed, as PostgreSQL's)."""
    digest = hashlib.sha256(f"keyflow writer {schema_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def row_columns(record: RunRecord) -> dict[str, Any]:
    """A run's column values, ``data`` (its JSON) included."""
    row, text = encode_row(record_row(record))
    return {
        "id": row["id"],
        "job": row["job"],
        "concurrency_key": row["key"],
        "status": row["status"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "data": text,
        "due_at": row["due_at"],
        "started_at": row["started_at"],
        "attempt": row["attempt"],
        "trigger_count": row["trigger_count"],
    }
