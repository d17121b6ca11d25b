"""The SQLite writer: one thread owns the writing connection; a commit is one hop to it.

Through aiosqlite every statement is a trip from the event loop to the driver's thread
and back, with SQLAlchemy's async machinery around each; a batch's write is several
statements (BEGIN, the upserts, idempotency keys, labels, pauses, retention, COMMIT),
so several trips for one commit. Here the whole transaction is one function run on the
writer's own thread, over SQLAlchemy Core's synchronous connection (the stdlib driver):
the event loop hands it over and awaits one future, and never touches the disk itself.
Readers keep their own connections (``sqlite_reads``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, delete
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from ..errors import StorageError
from .sql_runs import count_finished_query, driver_reason, prune_due, prune_statements
from .sqlite_checkpoints import BACKSTOP_PAGES, WAL_SIZE_LIMIT, Checkpointer
from .sqlite_reads import TABLES
from .sqlite_schema import INSERT_IDEMPOTENCY, INSERT_LABELS, UPSERT_RUN, insert_pause, pauses_table
from .writer_thread import WriterThread

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Retention:
    """How many finished runs to keep, and how far the estimate may run past it."""

    keep: int
    slack: int


@dataclass(slots=True)
class Batch:
    """A batch's rows, ready for SQL (read from the records on the event loop)."""

    runs: list[tuple[Any, ...]]
    idempotency: list[tuple[str, str, str]]
    labels: list[tuple[str, str, str]]
    pauses: list[tuple[str, str, bool]]


class SQLiteWriter:
    """The thread that owns a SQLite file's writing connection (see the module)."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self._thread: WriterThread | None = None
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._checkpoints = Checkpointer(path)

    async def open(self) -> None:
        """Start the thread and connect on it.

        Raises:
            StorageError: the file cannot be opened for writing.
        """
        self._thread = WriterThread("keyflow-sqlite-writer")
        self._thread.start()
        try:
            await self._call(self._connect)
            await self._checkpoints.open()
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            await self.close()
            raise StorageError(f"{self.path} cannot be opened for writing: {exc}") from exc

    def _connect(self) -> None:
        engine = self._engine = create_engine(
            f"sqlite:///{self.path}",
            isolation_level="AUTOCOMMIT",  # transactions are BEGIN IMMEDIATE … COMMIT
            poolclass=NullPool,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        conn = engine.connect()
        conn.exec_driver_sql(f"PRAGMA synchronous={self.synchronous}")
        conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")  # (a backstop)
        conn.exec_driver_sql(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._conn = conn

    async def _call(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the writer's thread; its result.

        Calls are served one at a time, in order. A caller cancelled meanwhile leaves
        ``work`` to finish on the thread (a transaction is never cut in half).
        """
        thread = self._thread
        if thread is None or not thread.running:
            raise StorageError(f"{self.path} is not open")
        return await thread.call(work)

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is None:
            raise StorageError(f"{self.path} is not open")
        return conn

    async def write(
        self,
        batch: Batch,
        finished: int,
        retention: Retention,
        check: Callable[[], None] = lambda: None,
    ) -> int:
        """Store ``batch`` in one transaction; the new estimate of finished runs.

        ``check`` runs first, on the thread too (the files' identities: a ``stat`` or
        three the event loop need not wait for); what it raises, the write raises.

        Raises:
            StorageError: nothing of the batch was stored.
        """

        def work() -> int:
            check()
            return self.transaction(self._connection(), batch, finished, retention)

        try:
            finished = await self._call(work)
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"writing to {self.path} failed: {driver_reason(exc)}") from exc
        self._checkpoints.wrote(len(batch.runs))
        return finished

    @property
    def checkpoints(self) -> Checkpointer:
        """The background checkpoints of this file's WAL."""
        return self._checkpoints

    async def close(self) -> None:
        """Close the connection and end the thread. Idempotent."""
        await self._checkpoints.close()  # (the writer's close then checkpoints the rest)
        thread, self._thread = self._thread, None
        if thread is not None:
            await thread.end(self._disconnect, (SQLAlchemyError, sqlite3.Error, OSError))

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        engine, self._engine = self._engine, None
        try:
            if conn is not None:
                conn.close()
        finally:
            if engine is not None:
                engine.dispose()

    def transaction(
        self, conn: Connection, batch: Batch, finished: int, retention: Retention
    ) -> int:
        """The transaction of one batch (on the writer's thread); see :meth:`write`."""
        # The statements of every commit go straight to the driver (its statement cache
        # keeps them prepared); SQLAlchemy's per-statement work would cost as much as
        # SQLite's own for a one-run commit. The rare ones (pauses, retention) go
        # through Core.
        raw = _driver(conn)
        raw.execute("BEGIN IMMEDIATE")
        try:
            if batch.runs:
                raw.executemany(UPSERT_RUN, batch.runs)
            if batch.idempotency:
                raw.executemany(INSERT_IDEMPOTENCY, batch.idempotency)
            if batch.labels:
                raw.executemany(INSERT_LABELS, batch.labels)
            for kind, name, paused in batch.pauses:
                if paused:
                    conn.execute(insert_pause, {"kind": kind, "name": name})
                else:
                    conn.execute(
                        delete(pauses_table).where(
                            pauses_table.c.kind == kind, pauses_table.c.name == name
                        )
                    )
            finished = self.prune(conn, finished, retention)
            raw.execute("COMMIT")
        except BaseException:
            # SQLite rolls a transaction back by itself on some failures (a full disk):
            # then ROLLBACK fails with "no transaction is active", which must not hide
            # the cause.
            with contextlib.suppress(sqlite3.Error, OSError):
                raw.execute("ROLLBACK")
            raise
        return finished

    def prune(self, conn: Connection, finished: int, retention: Retention) -> int:
        """Retention, inside the batch's transaction; the new estimate of finished runs."""
        if not prune_due(finished, retention.keep, retention.slack):
            return finished
        finished = int(conn.execute(count_finished_query(TABLES)).scalar_one())
        excess = finished - retention.keep
        if excess <= 0:
            return finished
        for statement in prune_statements(TABLES, excess, None):
            conn.execute(statement)
        return finished - excess


def _driver(conn: Connection) -> sqlite3.Connection:
    """The stdlib connection under ``conn`` (in autocommit: ``isolation_level`` None)."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw
