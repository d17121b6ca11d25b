"""What the SQL backends share: their queries, built once over their run tables.

SQLite (``sqlite_reads.py``) and PostgreSQL (``postgres.py``) keep runs in tables of
the same shape (``keyflow_runs``, ``keyflow_labels``, ``keyflow_idempotency``,
``keyflow_pauses``); they differ in creation order (SQLite's rowid, PostgreSQL's
``seq``), in case folding, in their driver's errors and in how they tell a change.
:class:`SQLReads` answers every query of :class:`~keyflow.storage_backends.base.StorageBackend`
from a :class:`RunTables`; :func:`prune_finished` keeps retention for both writers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Select,
    String,
    Table,
    bindparam,
    case,
    delete,
    func,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import StorageError
from ..runs import Run, RunStatus
from .base import RunQuery, StorageBackend
from .rows import loads_row, row_run
from .summaries import KeySummary, RunTiming, StoreSummary

TERMINAL = ("cancelled", "completed", "failed")
"""The statuses of finished runs, as stored."""


@dataclass(frozen=True, slots=True)
class RunTables:
    """A SQL backend's tables of runs, and the column that is their creation order."""

    runs: Table
    idempotency: Table
    labels: Table
    pauses: Table
    order: ColumnElement[int]
    """Creation order of ``runs`` (ties of ``created_at``): SQLite's rowid, PostgreSQL's seq."""


class SQLReads(StorageBackend):
    """Answers the storage queries from SQL tables (see the module).

    A subclass sets ``tables`` and ``driver_errors``, gives ``place`` (for messages) and
    ``engine`` (its reader connections, None when closed), and may change
    :meth:`text_match`.
    """

    tables: RunTables
    driver_errors: tuple[type[BaseException], ...] = ()
    """The driver's own exception types, besides SQLAlchemy's, that mean a failed read."""
    _engine: AsyncEngine | None
    _reads: int
    _reads_done: asyncio.Event

    @property
    def read_errors(self) -> tuple[type[BaseException], ...]:
        """What a failed read raises: SQLAlchemy's errors and ``driver_errors``."""
        return (SQLAlchemyError, *self.driver_errors)

    @property
    def place(self) -> str:
        """Where the runs are, for messages (a path, a database and schema)."""
        raise NotImplementedError

    def text_match(self, data: ColumnElement[str], pattern: str, text: str) -> ColumnElement[bool]:
        """``data`` (a run's JSON) contains ``text``, in any case (``pattern``: LIKE's)."""
        return func.lower(data).like(pattern, escape="\\")

    def _reader(self) -> AsyncEngine:
        if self._engine is None:
            raise StorageError(f"{self.place} is not open")
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

    def read_failed(self, exc: BaseException) -> StorageError:
        """The error a failed read raises: the driver's words, naming the place."""
        return StorageError(f"reading {self.place} failed: {driver_reason(exc)}")

    async def _rows(self, statement: Any) -> list[Any]:
        try:
            async with self._reading() as conn:
                return list(await conn.execute(statement))
        except self.read_errors as exc:
            raise self.read_failed(exc) from exc

    async def _scalar(self, statement: Any) -> Any:
        try:
            async with self._reading() as conn:
                return (await conn.execute(statement)).scalar()
        except self.read_errors as exc:
            raise self.read_failed(exc) from exc

    async def _runs(self, statement: Any) -> list[Run]:
        where = self.place
        return [row_run(loads_row(data, where)) for (data,) in await self._rows(statement)]

    async def get_run(self, run_id: str) -> Run | None:
        """The stored run, or None."""
        runs = self.tables.runs
        data = await self._scalar(select(runs.c.data).where(runs.c.id == run_id))
        return None if data is None else row_run(loads_row(data, self.place))

    async def list_runs(self, query: RunQuery) -> list[Run]:
        """Matching runs, newest first."""
        t = self.tables
        return await self._runs(
            self._filtered(select(t.runs.c.data), query)
            # created_at first: the job and key filters then read their indexes in order
            # (creation order breaks ties).
            .order_by(t.runs.c.created_at.desc(), t.order.desc())
            .limit(query.limit)
            .offset(query.offset)
        )

    async def due_runs(self, until: float, *, limit: int = 100) -> list[Run]:
        """Waiting runs due by ``until``, earliest first (from the status index)."""
        t = self.tables
        runs = t.runs
        return await self._runs(
            select(runs.c.data)
            .where(runs.c.status == RunStatus.SCHEDULED.value, runs.c.due_at <= until)
            .order_by(runs.c.due_at, runs.c.created_at, t.order)
            .limit(limit)
        )

    async def count_runs(self, query: RunQuery, *, at_most: int | None = None) -> int:
        """How many runs match (stopping at ``at_most``)."""
        t = self.tables
        if at_most is None:
            statement = self._filtered(select(func.count()).select_from(t.runs), query)
        else:
            matching = self._filtered(select(t.order).select_from(t.runs), query).limit(at_most)
            statement = select(func.count()).select_from(matching.subquery())
        return int(await self._scalar(statement) or 0)

    async def summary(self) -> StoreSummary:
        """Keys, jobs and coalesced triggers of every stored run, from the indexes."""
        table = self.tables.runs
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
        except self.read_errors as exc:
            raise self.read_failed(exc) from exc
        return StoreSummary(keys, sorted(jobs), int(total or 0))

    async def run_timings(self, job: str, since: float, *, limit: int = 100_000) -> list[RunTiming]:
        """The runs of ``job`` created at ``since`` or later, newest first (its index)."""
        t = self.tables.runs
        rows = await self._rows(
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
        return [
            RunTiming(run_id, RunStatus(status), created, due, started, finished, attempt, count)
            for run_id, status, created, due, started, finished, attempt, count in rows
        ]

    async def paused(self) -> frozenset[tuple[str, str]]:
        """What is paused now."""
        pauses = self.tables.pauses
        rows = await self._rows(select(pauses.c.kind, pauses.c.name))
        return frozenset((str(kind), str(name)) for kind, name in rows)

    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        """The run an earlier trigger with that key made, while it is retained."""
        table = self.tables.idempotency
        run_id = await self._scalar(
            select(table.c.run_id).where(
                (table.c.job == job) & (table.c.idempotency_key == idempotency_key)
            )
        )
        return None if run_id is None else str(run_id)

    def _filtered(self, statement: Any, query: RunQuery) -> Any:
        table = self.tables.runs
        if query.job is not None:
            statement = statement.where(table.c.job == query.job)
        if query.status is not None:
            statement = statement.where(table.c.status == query.status.value)
        if query.key is not None:
            statement = statement.where(table.c.concurrency_key == query.key)
        if query.key_prefix is not None:
            prefix = query.key_prefix
            # A range the key index serves (code point order), then the exact test
            # (LIKE would ignore case).
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
            text = query.text
            escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            statement = statement.where(self.text_match(table.c.data, f"%{escaped}%", text))
        for index, (name, value) in enumerate(query.labels):
            labels = self.tables.labels
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


def driver_reason(exc: BaseException) -> str:
    """The driver's own words for a failure.

    SQLAlchemy's message carries the statement and its parameters (whole runs).
    """
    original = getattr(exc, "orig", None)
    if original is None:
        return str(exc)
    # SQLAlchemy's asyncpg adapter wraps the driver's exception: its words are the cause's.
    cause = original.__cause__
    return str(cause) if cause is not None and str(cause) else str(original)


def count_finished_query(tables: RunTables) -> Select[int]:
    """How many finished runs are stored (one integer)."""
    runs = tables.runs
    return select(func.count()).select_from(runs).where(runs.c.status.in_(TERMINAL))


async def count_finished(conn: AsyncConnection, tables: RunTables) -> int:
    """How many finished runs are stored."""
    return int((await conn.execute(count_finished_query(tables))).scalar_one())


def prune_statements(tables: RunTables, excess: int, before: float | None) -> list[Delete]:
    """The deletes of the ``excess`` oldest finished runs, with their keys and labels.

    With ``before``, only runs finished before it go. Run them in order, in one
    transaction (the runs go last: the others find them by the runs' ids).
    """
    runs = tables.runs
    oldest = (
        select(runs.c.id)
        .where(
            runs.c.status.in_(TERMINAL),
            runs.c.finished_at.is_not(None),
            runs.c.finished_at < (float("inf") if before is None else before),
        )
        .order_by(runs.c.finished_at, tables.order)
        .limit(excess)
        .scalar_subquery()
    )
    idempotency, labels = tables.idempotency, tables.labels
    return [
        delete(idempotency).where(idempotency.c.run_id.in_(oldest)),
        delete(labels).where(labels.c.run_id.in_(oldest)),
        delete(runs).where(runs.c.id.in_(oldest)),
    ]


def prune_due(finished: int, retention: int, slack: int) -> bool:
    """Is ``finished`` (an estimate of the finished runs stored) worth an exact count?

    They are counted exactly only past ``retention + slack``, so that a commit costs O(1).
    """
    return finished > retention + slack


async def prune_finished(
    conn: AsyncConnection,
    tables: RunTables,
    finished: int,
    retention: int,
    slack: int,
    before: float | None = None,
) -> int:
    """Delete the oldest finished runs beyond ``retention`` (with their keys and labels).

    With ``before``, only runs finished before it go (runs just finished stay a while
    for the waits of other processes to read). ``finished`` is an estimate of the
    finished runs stored (see :func:`prune_due`). Returns the new estimate.
    """
    if not prune_due(finished, retention, slack):
        return finished
    finished = await count_finished(conn, tables)
    excess = finished - retention
    if excess <= 0:
        return finished
    for statement in prune_statements(tables, excess, before):
        await conn.execute(statement)
    return finished - excess
