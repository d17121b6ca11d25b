"""``sqlite:///path.db``: runs in a SQLite file, through SQLAlchemy Core.

One table of runs: the columns queries filter and sort on, plus the whole run as JSON
text (``data``). WAL journal; ``synchronous=NORMAL`` survives a process crash and
``FULL`` a power loss. Every write is one ``BEGIN IMMEDIATE`` transaction, run whole on
the writer's thread (``sqlite_writer``: one hop from the event loop per commit); the
commit pipeline groups concurrent triggers into it, so they share one commit. Reads go
through aiosqlite. One process writes (``<file>.lock``); any number may read
(``mode="ro"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import event, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import StorageCorruptError, StorageError
from . import sqlite_schema as schema
from .base import Refusals, StoredState, WriteBatch
from .lockfile import WriterLock
from .rows import encode_row, loads_row, record_row, row_record
from .sql_runs import count_finished
from .sql_tables import migrate
from .sqlite_reads import TABLES, SQLiteReads, register_functions
from .sqlite_schema import ROWID, TERMINAL, pauses_table, runs_table, schema_table
from .sqlite_writer import Batch, Retention, SQLiteWriter

Synchronous = Literal["NORMAL", "FULL"]


class SQLiteBackend(SQLiteReads):
    """Runs in a SQLite database file."""

    writer_class: type[SQLiteWriter] = SQLiteWriter
    """The writer's thread (a subclass may stand in for it, in tests)."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention: int = 10_000,
        synchronous: Synchronous = "NORMAL",
        read_only: bool = False,
    ) -> None:
        if retention < 0:
            raise ValueError("retention must be >= 0")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = Path(path)
        self.retention = retention
        self.sync_mode: Synchronous = synchronous
        """SQLite's ``PRAGMA synchronous``."""
        self.read_only = read_only
        self._lock = WriterLock(self.path)
        self._engine: AsyncEngine | None = None
        self._writer: AsyncConnection | None = None  # opens (schema, restore) only
        self._thread: SQLiteWriter | None = None  # every write after the open
        self._identity: tuple[int, int] | None = None  # the file's (device, inode) at open
        self._wal_path = self.path.with_name(self.path.name + "-wal")
        self._wal_identity: tuple[int, int] | None = None
        self._watcher: AsyncConnection | None = None  # for change_token()
        self._reads = 0  # reads in flight: close() waits for them
        self._reads_done = asyncio.Event()
        self._reads_done.set()
        self._finished = 0  # finished rows stored, counted exactly at open and each prune
        self._prune_slack = retention // 20  # exact count at most every 5 % of growth

    def __repr__(self) -> str:
        return f"<SQLiteBackend {str(self.path)!r}{' read-only' if self.read_only else ''}>"

    # -- opening -----------------------------------------------------------------

    async def open(self) -> StoredState:
        """Lock (unless read-only), create or migrate the schema, load unfinished runs.

        Raises:
            StorageLockedError: another process writes this file.
            StorageCorruptError: the file is not a keyflow database (it is left untouched).
        """
        if self.path.is_dir():
            raise StorageError(f"{self.path} is a directory, not a SQLite database file")
        try:
            if not self.read_only:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(f"cannot create the folder of {self.path}: {exc}") from exc
                self._lock.acquire()
                if self.path.exists():  # the data file itself: hard links meet it too
                    self._lock.hold(self.path)
            state = await self._open()
            if not self.read_only:
                writer, self._writer = self._writer, None
                if writer is not None:
                    await writer.close()
                self._thread = self.writer_class(self.path, self.sync_mode)
                await self._thread.open()
                if not self._lock.holds(self.path):
                    self._lock.hold(self.path)
                state = replace(state, started=self.open_start_marks(self.path))
                self._identity = _identity(self.path)
                self._wal_identity = _identity_or_none(self._wal_path)
            return state
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> StoredState:
        if self.read_only:
            if not self.path.exists():
                raise StorageError(f"{self.path} does not exist (opened read-only)")
            # On a read-only file system nobody writes the file: SQLite may read it as
            # immutable (it cannot make the -shm file a WAL database otherwise needs).
            immutable = "&immutable=1" if _read_only_file_system(self.path) else ""
            url = f"sqlite+aiosqlite:///file:{self.path}?mode=ro{immutable}&uri=true"
        else:
            url = f"sqlite+aiosqlite:///{self.path}"
        engine = self._engine = create_async_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 30}
        )
        event.listen(engine.sync_engine, "connect", register_functions)
        try:
            self._writer = conn = await engine.connect()
            await self._check_schema(conn)
            unfinished = await conn.execute(
                select(runs_table.c.data)
                .where(runs_table.c.status.not_in(TERMINAL))
                .order_by(ROWID)
            )
            where = str(self.path)
            records = [row_record(loads_row(data, where), where) for (data,) in unfinished]
            paused = frozenset(
                (str(kind), str(name))
                for kind, name in await conn.execute(
                    select(pauses_table.c.kind, pauses_table.c.name)
                )
            )
            self._finished = await count_finished(conn, TABLES)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageCorruptError(
                f"{self.path} cannot be opened as a keyflow database: {exc}"
            ) from exc
        except OSError as exc:
            raise StorageError(f"{self.path} cannot be opened: {exc}") from exc
        return StoredState(unfinished=records, paused=paused)

    async def _check_schema(self, conn: AsyncConnection) -> None:
        tables = {
            name
            for (name,) in await conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        if tables and schema_table.name not in tables:
            raise StorageCorruptError(
                f"{self.path} is not a keyflow database (it has tables "
                f"{', '.join(sorted(tables))}); refusing to touch it"
            )
        if self.read_only:
            if not tables:
                raise StorageCorruptError(f"{self.path} is empty: no keyflow database yet")
            await self._schema_version(conn)
            return
        await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        await conn.exec_driver_sql(f"PRAGMA synchronous={self.sync_mode}")
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            if not tables:
                await conn.run_sync(schema.create)
                await conn.execute(schema_table.insert().values(version=schema.SCHEMA_VERSION))
            else:
                version = await self._schema_version(conn)
                await migrate(conn, schema.MIGRATIONS, version, schema.SCHEMA_VERSION, schema_table)
            await conn.exec_driver_sql("COMMIT")
        except BaseException:
            await _roll_back(conn)
            raise

    async def _schema_version(self, conn: AsyncConnection) -> int:
        version = (await conn.execute(select(schema_table.c.version))).scalar()
        if not isinstance(version, int) or version < 1:
            raise StorageCorruptError(f"{self.path} has no valid keyflow schema version")
        if version > schema.SCHEMA_VERSION:
            raise StorageCorruptError(
                f"{self.path} has schema version {version}, written by a newer keyflow "
                f"(this one knows up to {schema.SCHEMA_VERSION})"
            )
        return version

    async def close(self) -> None:
        """Close the connections and release the lock. Idempotent.

        Reads already in flight (a dashboard's, say) finish first: a connection is never
        pulled from under a query, nor left open by one.
        """
        writer, self._writer = self._writer, None
        thread, self._thread = self._thread, None
        engine, self._engine = self._engine, None  # no read starts from now on
        try:
            if thread is not None:
                await thread.close()  # after the write in flight, if any
            await self._reads_done.wait()
            watcher, self._watcher = self._watcher, None
            self.close_start_marks()
            if watcher is not None:
                await watcher.close()
            if writer is not None:
                await writer.close()
            if engine is not None:
                await engine.dispose()
        finally:
            self._lock.release()

    # -- writing -----------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> Refusals | None:
        """Upsert the batch's runs and idempotency keys in one transaction.

        Raises:
            StorageError: nothing of the batch was stored.
        """
        # Read every record now, before the first await (see the base module).
        rows = [_columns(record_row(record)) for record in batch.runs]
        keys = list(batch.idempotency)
        labels = [  # a run's labels never change: inserted once, ignored after
            (record.id, name, value)
            for record in batch.runs
            if record.labels
            for name, value in record.labels.items()
        ]
        newly_finished = sum(1 for row in rows if row[_STATUS] in TERMINAL)
        pruned = await self._writable().write(
            Batch(rows, keys, labels, list(batch.pauses)),
            self._finished + newly_finished,
            Retention(self.retention, self._prune_slack),
            check=self._check_identity,
        )
        self._finished = pruned
        return None

    def _check_identity(self) -> None:
        # A database deleted (or replaced) under us would take every later commit with
        # it: SQLite keeps writing to the unlinked file. One stat() per batch tells.
        self._lock.check()
        now = _identity_or_none(self.path)
        # The WAL holds every commit not yet checkpointed: deleted, they go with it.
        wal = _identity_or_none(self._wal_path)
        if now != self._identity or (self._wal_identity is not None and wal != self._wal_identity):
            raise StorageError(
                f"{self.path} (or its -wal file) was deleted or replaced while keyflow was "
                "writing it; refusing to write (what was written since is in the old "
                "file): restart keyflow to open the file anew"
            )

    def _writable(self) -> SQLiteWriter:
        if self.read_only:
            raise StorageError(f"{self.path} is open read-only")
        if self._thread is None:
            raise StorageError(f"{self.path} is not open")
        return self._thread


async def _roll_back(conn: AsyncConnection) -> None:
    # SQLite rolls a transaction back by itself on some failures (a full disk): then
    # ROLLBACK fails with "no transaction is active", which must not hide the cause.
    with contextlib.suppress(SQLAlchemyError, sqlite3.Error, OSError):
        await conn.exec_driver_sql("ROLLBACK")


def _read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _identity_or_none(path: Path) -> tuple[int, int] | None:
    try:
        return _identity(path)
    except OSError:
        return None


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino)


_STATUS = schema.RUN_COLUMNS.index("status")


def _columns(row: dict[str, Any]) -> tuple[Any, ...]:
    # The values of schema.RUN_COLUMNS, in that order.
    row, text = encode_row(row)
    return (
        row["id"],
        row["job"],
        row["key"],
        row["status"],
        row["created_at"],
        row["finished_at"],
        text,
        row["due_at"],
        row["started_at"],
        row["attempt"],
        row["trigger_count"],
    )
