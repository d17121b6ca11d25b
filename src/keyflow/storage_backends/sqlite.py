"""``sqlite:///path.db``: runs in a SQLite file, through SQLAlchemy Core + aiosqlite.

One table of runs: the columns queries filter and sort on, plus the whole run as JSON
text (``data``). WAL journal; ``synchronous=NORMAL`` survives a process crash and
``FULL`` a power loss. Every write is one ``BEGIN IMMEDIATE`` transaction; the commit
pipeline groups concurrent triggers into it, so they share one commit. One process
writes (``<file>.lock``); any number may read (``mode="ro"``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import BindParameter, ColumnClause

from ..errors import StorageCorruptError, StorageError
from ..runs import Run
from .base import RunQuery, StorageBackend, StoredState, WriteBatch
from .lockfile import WriterLock
from .rows import dumps, record_row, row_record, row_run

_TERMINAL = ("cancelled", "completed", "failed")
SCHEMA_VERSION = 1
"""The schema this version writes; older ones are migrated at open."""

Synchronous = Literal["NORMAL", "FULL"]

metadata = MetaData()
schema_table = Table("keyflow_schema", metadata, Column("version", Integer, nullable=False))
runs_table = Table(
    "keyflow_runs",
    metadata,
    Column("id", String, primary_key=True),
    Column("job", String, nullable=False),
    Column("concurrency_key", String),
    Column("status", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("data", Text, nullable=False),
    Index("keyflow_runs_status", "status"),
    Index("keyflow_runs_job", "job", "created_at"),
    Index("keyflow_runs_key", "concurrency_key", "created_at"),
    Index("keyflow_runs_created", "created_at"),
    Index("keyflow_runs_finished", "finished_at"),
)
idempotency_table = Table(
    "keyflow_idempotency",
    metadata,
    Column("job", String, primary_key=True),
    Column("idempotency_key", String, primary_key=True),
    Column("run_id", String, nullable=False),
    Index("keyflow_idempotency_run", "run_id"),
)
MIGRATIONS: dict[int, list[str]] = {}
"""SQL that takes a database from version ``v`` to ``v + 1``, by ``v``."""

_ROWID: ColumnClause[int] = literal_column(
    "rowid", Integer
)  # creation order: an upsert keeps a row's rowid
_upsert_run = insert(runs_table)
_upsert_run = _upsert_run.on_conflict_do_update(
    index_elements=[runs_table.c.id],
    set_={
        "status": _upsert_run.excluded.status,
        "finished_at": _upsert_run.excluded.finished_at,
        "data": _upsert_run.excluded.data,
    },
)
_insert_idempotency = insert(idempotency_table).on_conflict_do_nothing()


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
        if not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        try:
            return await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> StoredState:
        if self.read_only:
            if not self.path.exists():
                raise StorageError(f"{self.path} does not exist (opened read-only)")
            url = f"sqlite+aiosqlite:///file:{self.path}?mode=ro&uri=true"
        else:
            url = f"sqlite+aiosqlite:///{self.path}"
        engine = self._engine = create_async_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 30}
        )
        try:
            self._writer = conn = await engine.connect()
            await self._check_schema(conn)
            unfinished = await conn.execute(
                select(runs_table.c.data)
                .where(runs_table.c.status.not_in(_TERMINAL))
                .order_by(_ROWID)
            )
            records = [row_record(json.loads(data)) for (data,) in unfinished]
            self._finished = await self._count_finished(conn)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageCorruptError(
                f"{self.path} cannot be opened as a keyflow database: {exc}"
            ) from exc
        except json.JSONDecodeError as exc:
            raise StorageCorruptError(f"{self.path} holds a run that is not JSON: {exc}") from exc
        return StoredState(unfinished=records)

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
                await conn.run_sync(metadata.create_all)
                await conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
            else:
                version = await self._schema_version(conn)
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step]:
                        await conn.exec_driver_sql(statement)
                if version != SCHEMA_VERSION:
                    await conn.execute(schema_table.update().values(version=SCHEMA_VERSION))
            await conn.exec_driver_sql("COMMIT")
        except BaseException:
            await conn.exec_driver_sql("ROLLBACK")
            raise

    async def _schema_version(self, conn: AsyncConnection) -> int:
        version = (await conn.execute(select(schema_table.c.version))).scalar()
        if not isinstance(version, int) or version < 1:
            raise StorageCorruptError(f"{self.path} has no valid keyflow schema version")
        if version > SCHEMA_VERSION:
            raise StorageCorruptError(
                f"{self.path} has schema version {version}, written by a newer keyflow "
                f"(this one knows up to {SCHEMA_VERSION})"
            )
        return version

    async def close(self) -> None:
        """Close the connections and release the lock. Idempotent."""
        writer, self._writer = self._writer, None
        engine, self._engine = self._engine, None
        try:
            if writer is not None:
                await writer.close()
            if engine is not None:
                await engine.dispose()
        finally:
            self._lock.release()

    # -- writing -----------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        """Upsert the batch's runs and idempotency keys in one transaction.

        Raises:
            StorageError: nothing of the batch was stored.
        """
        # Read every record now, before the first await (see the base module).
        rows = [_columns(record_row(record)) for record in batch.runs]
        keys = [{"job": j, "idempotency_key": k, "run_id": r} for j, k, r in batch.idempotency]
        newly_finished = sum(1 for row in rows if row["status"] in _TERMINAL)
        conn = self._writable()
        try:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                if rows:
                    await conn.execute(_upsert_run, rows)
                if keys:
                    await conn.execute(_insert_idempotency, keys)
                pruned = await self._prune(conn, self._finished + newly_finished)
                await conn.exec_driver_sql("COMMIT")
            except BaseException:
                await conn.exec_driver_sql("ROLLBACK")
                raise
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"writing to {self.path} failed: {exc}") from exc
        self._finished = pruned

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
            .where(runs_table.c.status.in_(_TERMINAL))
            .order_by(runs_table.c.finished_at)
            .limit(excess)
            .scalar_subquery()
        )
        await conn.execute(delete(idempotency_table).where(idempotency_table.c.run_id.in_(oldest)))
        await conn.execute(delete(runs_table).where(runs_table.c.id.in_(oldest)))
        return finished - excess

    async def _count_finished(self, conn: AsyncConnection) -> int:
        query = select(func.count()).where(runs_table.c.status.in_(_TERMINAL))
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

    async def get_run(self, run_id: str) -> Run | None:
        """The stored run, or None."""
        query = select(runs_table.c.data).where(runs_table.c.id == run_id)
        data = await self._read_scalar(query)
        return None if data is None else row_run(json.loads(data))

    async def list_runs(self, query: RunQuery) -> list[Run]:
        """Matching runs, newest first."""
        statement = (
            _filtered(select(runs_table.c.data), query)
            .order_by(_ROWID.desc())
            .limit(query.limit)
            .offset(query.offset)
        )
        async with self._reader().connect() as conn:
            result = await conn.execute(statement)
            return [row_run(json.loads(data)) for (data,) in result]

    async def count_runs(self, query: RunQuery) -> int:
        """How many runs match."""
        count = await self._read_scalar(
            _filtered(select(func.count()).select_from(runs_table), query)
        )
        return int(count or 0)

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
            async with self._reader().connect() as conn:
                return (await conn.execute(statement)).scalar()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {exc}") from exc


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "job": row["job"],
        "concurrency_key": row["key"],
        "status": row["status"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "data": dumps(row),
    }


def _filtered(statement: Any, query: RunQuery) -> Any:
    table = runs_table
    if query.job is not None:
        statement = statement.where(table.c.job == query.job)
    if query.status is not None:
        statement = statement.where(table.c.status == query.status.value)
    if query.key is not None:
        statement = statement.where(table.c.concurrency_key == query.key)
    if query.text:
        pattern = (
            "%"
            + query.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            + "%"
        )
        # LIKE ignores ASCII case by itself; lower() would cost a copy of every row.
        statement = statement.where(table.c.data.like(pattern, escape="\\"))
    for index, (name, value) in enumerate(query.labels):
        path: BindParameter[str] = bindparam(
            f"label_path_{index}", "$.labels." + json.dumps(name), String
        )
        statement = statement.where(func.json_extract(table.c.data, path) == value)
    return statement
