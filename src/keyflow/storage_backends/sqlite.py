"""``sqlite:///path.db``: runs in a SQLite file, through SQLAlchemy Core + aiosqlite.

One table of runs: the columns queries filter and sort on, plus the whole run as JSON
text (``data``). WAL journal; ``synchronous=NORMAL`` survives a process crash and
``FULL`` a power loss. Every write is one ``BEGIN IMMEDIATE`` transaction; the commit
pipeline groups concurrent triggers into it, so they share one commit. One process
writes (``<file>.lock``); any number may read (``mode="ro"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Hashable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import String, bindparam, case, delete, event, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import StorageCorruptError, StorageError
from ..runs import Run, RunStatus
from . import sqlite_schema as schema
from .base import Refusals, RunQuery, StorageBackend, StoredState, WriteBatch
from .lockfile import WriterLock
from .rows import encode_row, loads_row, record_row, row_record, row_run
from .sqlite_schema import (
    INSERT_IDEMPOTENCY,
    INSERT_LABELS,
    ROWID,
    TERMINAL,
    UPSERT_RUN,
    idempotency_table,
    insert_pause,
    labels_table,
    pauses_table,
    runs_table,
    schema_table,
)
from .summaries import KeySummary, RunTiming, StoreSummary

Synchronous = Literal["NORMAL", "FULL"]


class SQLiteBackend(StorageBackend):
    """Runs in a SQLite database file."""

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
        self._writer: AsyncConnection | None = None
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
        event.listen(engine.sync_engine, "connect", _on_connect)
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
            self._finished = await self._count_finished(conn)
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
                target = schema.SCHEMA_VERSION
                for step in range(version, target):
                    for action in schema.MIGRATIONS[step]:
                        if isinstance(action, str):
                            await conn.exec_driver_sql(action)
                        else:
                            await conn.run_sync(action)
                if version != target:
                    await conn.execute(schema_table.update().values(version=target))
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
        engine, self._engine = self._engine, None  # no read starts from now on
        try:
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
        pauses = list(batch.pauses)
        conn = self._writable()
        self._check_identity()
        try:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                if rows:
                    await conn.exec_driver_sql(UPSERT_RUN, rows)
                if keys:
                    await conn.exec_driver_sql(INSERT_IDEMPOTENCY, keys)
                if labels:
                    await conn.exec_driver_sql(INSERT_LABELS, labels)
                for kind, name, paused in pauses:
                    if paused:
                        await conn.execute(insert_pause, {"kind": kind, "name": name})
                    else:
                        await conn.execute(
                            delete(pauses_table).where(
                                pauses_table.c.kind == kind, pauses_table.c.name == name
                            )
                        )
                pruned = await self._prune(conn, self._finished + newly_finished)
                await conn.exec_driver_sql("COMMIT")
            except BaseException:
                await _roll_back(conn)  # the error that matters is this one, not ROLLBACK's
                raise
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"writing to {self.path} failed: {_reason(exc)}") from exc
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

    async def _prune(self, conn: AsyncConnection, finished: int) -> int:
        # Counted exactly only when the estimate is past the slack: O(1) per commit.
        if finished <= self.retention + self._prune_slack:
            return finished
        finished = await self._count_finished(conn)
        excess = finished - self.retention
        if excess <= 0:
            return finished
        oldest = (
            select(runs_table.c.id)
            .where(runs_table.c.status.in_(TERMINAL))
            .order_by(runs_table.c.finished_at)
            .limit(excess)
            .scalar_subquery()
        )
        await conn.execute(delete(idempotency_table).where(idempotency_table.c.run_id.in_(oldest)))
        await conn.execute(delete(labels_table).where(labels_table.c.run_id.in_(oldest)))
        await conn.execute(delete(runs_table).where(runs_table.c.id.in_(oldest)))
        return finished - excess

    async def _count_finished(self, conn: AsyncConnection) -> int:
        query = select(func.count()).where(runs_table.c.status.in_(TERMINAL))
        return int((await conn.execute(query)).scalar_one())

    def _writable(self) -> AsyncConnection:
        if self.read_only:
            raise StorageError(f"{self.path} is open read-only")
        if self._writer is None:
            raise StorageError(f"{self.path} is not open")
        return self._writer

    # -- reading -----------------------------------------------------------------

    def _reader(self) -> AsyncEngine:
        if self._engine is None:
            raise StorageError(f"{self.path} is not open")
        return self._engine

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Count a read in flight (close waits for none to be)."""
        self._reads += 1
        self._reads_done.clear()
        try:
            yield
        finally:
            self._reads -= 1
            if not self._reads:
                self._reads_done.set()

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A reader connection, counted in flight until it is back."""
        engine = self._reader()
        with self._in_flight():
            async with engine.connect() as conn:
                yield conn

    async def get_run(self, run_id: str) -> Run | None:
        """The stored run, or None."""
        query = select(runs_table.c.data).where(runs_table.c.id == run_id)
        data = await self._read_scalar(query)
        return None if data is None else row_run(loads_row(data, str(self.path)))

    async def list_runs(self, query: RunQuery) -> list[Run]:
        """Matching runs, newest first."""
        statement = (
            _filtered(select(runs_table.c.data), query)
            # created_at first: the job and key filters then read their indexes in order
            # (rowid breaks ties, and is creation order within a process).
            .order_by(runs_table.c.created_at.desc(), ROWID.desc())
            .limit(query.limit)
            .offset(query.offset)
        )
        try:
            async with self._reading() as conn:
                result = await conn.execute(statement)
                rows = [data for (data,) in result]
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {_reason(exc)}") from exc
        return [row_run(loads_row(data, str(self.path))) for data in rows]

    async def due_runs(self, until: float, *, limit: int = 100) -> list[Run]:
        """Waiting runs due by ``until``, earliest first (from the status index)."""
        statement = (
            select(runs_table.c.data)
            .where(runs_table.c.status == RunStatus.SCHEDULED.value)
            .where(runs_table.c.due_at <= until)
            .order_by(runs_table.c.due_at, runs_table.c.created_at, ROWID)
            .limit(limit)
        )
        try:
            async with self._reading() as conn:
                result = await conn.execute(statement)
                rows = [data for (data,) in result]
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {_reason(exc)}") from exc
        return [row_run(loads_row(data, str(self.path))) for data in rows]

    async def count_runs(self, query: RunQuery, *, at_most: int | None = None) -> int:
        """How many runs match (stopping at ``at_most``)."""
        if at_most is None:
            statement = _filtered(select(func.count()).select_from(runs_table), query)
        else:
            matching = _filtered(select(ROWID).select_from(runs_table), query).limit(at_most)
            statement = select(func.count()).select_from(matching.subquery())
        count = await self._read_scalar(statement)
        return int(count or 0)

    async def summary(self) -> StoreSummary:
        """Keys, jobs and coalesced triggers of every stored run, from the indexes."""
        table = runs_table
        per_key = (
            select(
                table.c.concurrency_key,
                func.count(),
                func.sum(case((table.c.status.in_(TERMINAL), 0), else_=1)),
                func.sum(table.c.trigger_count - 1),
                func.max(table.c.created_at),
            )
            .where(table.c.concurrency_key.is_not(None))
            .group_by(table.c.concurrency_key)
        )
        try:
            async with self._reading() as conn:
                keys = {
                    key: KeySummary(key, int(n), int(unfinished), int(joined), float(newest))
                    for key, n, unfinished, joined, newest in await conn.execute(per_key)
                }
                jobs = [job for (job,) in await conn.execute(select(table.c.job).distinct())]
                total = (await conn.execute(select(func.sum(table.c.trigger_count - 1)))).scalar()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {_reason(exc)}") from exc
        return StoreSummary(keys, sorted(jobs), int(total or 0))

    async def run_timings(self, job: str, since: float, *, limit: int = 100_000) -> list[RunTiming]:
        """The runs of ``job`` created at ``since`` or later, newest first (its index)."""
        t = runs_table
        statement = (
            select(
                t.c.id,
                t.c.status,
                t.c.created_at,
                t.c.due_at,
                t.c.started_at,
                t.c.finished_at,
                t.c.attempt,
                t.c.trigger_count,
            )
            .where(t.c.job == job, t.c.created_at >= since)
            .order_by(t.c.created_at.desc())
            .limit(limit)
        )
        try:
            async with self._reading() as conn:
                rows = list(await conn.execute(statement))
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {_reason(exc)}") from exc
        return [
            RunTiming(run_id, RunStatus(status), created, due, started, finished, attempt, count)
            for run_id, status, created, due, started, finished, attempt, count in rows
        ]

    async def change_token(self) -> Hashable:
        """SQLite's data version, as one connection of ours sees it.

        It changes with every commit made on another connection (the writer's, or
        another process's).
        """
        engine = self._reader()
        try:
            with self._in_flight():
                if self._watcher is None:
                    self._watcher = await engine.connect()
                version = (await self._watcher.exec_driver_sql("PRAGMA data_version")).scalar()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {_reason(exc)}") from exc
        return version

    async def paused(self) -> frozenset[tuple[str, str]]:
        """What is paused now."""
        query = select(pauses_table.c.kind, pauses_table.c.name)
        try:
            async with self._reading() as conn:
                rows = list(await conn.execute(query))
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {_reason(exc)}") from exc
        return frozenset((str(kind), str(name)) for kind, name in rows)

    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        """The run an earlier trigger with that key made, while it is retained."""
        table = idempotency_table
        query = select(table.c.run_id).where(
            (table.c.job == job) & (table.c.idempotency_key == idempotency_key)
        )
        run_id = await self._read_scalar(query)
        return None if run_id is None else str(run_id)

    async def _read_scalar(self, statement: Any) -> Any:
        try:
            async with self._reading() as conn:
                return (await conn.execute(statement)).scalar()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {_reason(exc)}") from exc


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Python's lower() for free-text search beyond ASCII (see _filtered).
    dbapi_connection.create_function("keyflow_lower", 1, _lower, deterministic=True)


def _lower(text: object) -> object:
    return text.lower() if isinstance(text, str) else text


async def _roll_back(conn: AsyncConnection) -> None:
    # SQLite rolls a transaction back by itself on some failures (a full disk): then
    # ROLLBACK fails with "no transaction is active", which must not hide the cause.
    with contextlib.suppress(SQLAlchemyError, sqlite3.Error, OSError):
        await conn.exec_driver_sql("ROLLBACK")


def _reason(exc: BaseException) -> str:
    # SQLAlchemy's message carries the statement and its parameters (whole runs): keep
    # the driver's own words.
    original = getattr(exc, "orig", None)
    return str(original) if original is not None else str(exc)


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


def _filtered(statement: Any, query: RunQuery) -> Any:
    table = runs_table
    if query.job is not None:
        statement = statement.where(table.c.job == query.job)
    if query.status is not None:
        statement = statement.where(table.c.status == query.status.value)
    if query.key is not None:
        statement = statement.where(table.c.concurrency_key == query.key)
    if query.key_prefix is not None:
        prefix = query.key_prefix
        # A range the key index serves, then the exact test (LIKE would ignore case).
        statement = statement.where(
            table.c.concurrency_key >= prefix,
            table.c.concurrency_key < prefix + "\U0010ffff",
            func.substr(table.c.concurrency_key, 1, len(prefix)) == prefix,
        )
    if query.created_after is not None:
        statement = statement.where(table.c.created_at >= query.created_after)
    if query.created_before is not None:
        statement = statement.where(table.c.created_at < query.created_before)
    if query.finished_after is not None:
        statement = statement.where(table.c.finished_at >= query.finished_after)
    if query.finished_before is not None:
        statement = statement.where(table.c.finished_at < query.finished_before)
    if query.text:
        statement = _text_filter(statement, query.text)
    for index, (name, value) in enumerate(query.labels):
        labels = labels_table
        statement = statement.where(
            select(labels.c.run_id)
            .where(
                labels.c.run_id == table.c.id,
                labels.c.name == bindparam(f"label_name_{index}", name, String),
                labels.c.value == bindparam(f"label_value_{index}", value, String),
            )
            .exists()
        )
    return statement


def _text_filter(statement: Any, text: str) -> Any:
    table = runs_table
    pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    if text.isascii():
        # LIKE ignores ASCII case by itself; lower() would cost a copy of every row.
        return statement.where(table.c.data.like(pattern, escape="\\"))
    # SQLite folds ASCII only: fold the rest as the other backends do.
    return statement.where(func.keyflow_lower(table.c.data).like(pattern, escape="\\"))
