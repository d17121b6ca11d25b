"""The SQLite backend's queries: runs, summaries and timings, read on reader connections.

The read half of :class:`~keyflow.storage_backends.sqlite.SQLiteBackend` (the other
half opens, migrates and writes). Reads go through a pool of reader connections (WAL
lets them run beside the writer); each counts as in flight until it is back, so
``close()`` waits for none to be.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Hashable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import String, bindparam, case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import StorageError
from ..runs import Run, RunStatus
from .base import RunQuery, StorageBackend
from .rows import loads_row, row_run
from .sqlite_schema import (
    ROWID,
    TERMINAL,
    idempotency_table,
    labels_table,
    pauses_table,
    runs_table,
)
from .summaries import KeySummary, RunTiming, StoreSummary


class SQLiteReads(StorageBackend):
    """Answers the storage queries from a SQLite file (see the module)."""

    path: Path
    _engine: AsyncEngine | None
    _watcher: AsyncConnection | None
    """The connection ``change_token`` asks (opened at its first question)."""
    _reads: int
    _reads_done: asyncio.Event

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
            raise StorageError(f"reading {self.path} failed: {driver_reason(exc)}") from exc
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
            raise StorageError(f"reading {self.path} failed: {driver_reason(exc)}") from exc
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
            raise StorageError(f"reading {self.path} failed: {driver_reason(exc)}") from exc
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
            raise StorageError(f"reading {self.path} failed: {driver_reason(exc)}") from exc
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
            raise StorageError(f"reading {self.path} failed: {driver_reason(exc)}") from exc
        return version

    async def paused(self) -> frozenset[tuple[str, str]]:
        """What is paused now."""
        query = select(pauses_table.c.kind, pauses_table.c.name)
        try:
            async with self._reading() as conn:
                rows = list(await conn.execute(query))
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"reading {self.path} failed: {driver_reason(exc)}") from exc
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
            raise StorageError(f"reading {self.path} failed: {driver_reason(exc)}") from exc


def register_functions(dbapi_connection: Any, _record: Any) -> None:
    """Add keyflow's SQL functions to a new connection (SQLAlchemy's connect event).

    ``keyflow_lower``: Python's lower() for free-text search beyond ASCII (see
    ``_filtered``).
    """
    dbapi_connection.create_function("keyflow_lower", 1, _lower, deterministic=True)


def _lower(text: object) -> object:
    return text.lower() if isinstance(text, str) else text


def driver_reason(exc: BaseException) -> str:
    """The driver's own words for a failure.

    SQLAlchemy's message carries the statement and its parameters (whole runs).
    """
    original = getattr(exc, "orig", None)
    return str(original) if original is not None else str(exc)


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
