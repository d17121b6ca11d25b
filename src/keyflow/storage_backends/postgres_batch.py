"""The single writer's batch as one statement: one round trip to PostgreSQL per commit.

A batch's write used to be a transaction of several statements (BEGIN, the runs' upsert,
the idempotency keys, the labels, the count of writes, COMMIT), each its own round trip
through SQLAlchemy. The batches of every commit (no pause to store, no retention due) are
instead one ``INSERT … SELECT FROM unnest(…)`` per table, joined as data-modifying CTEs
of one statement: PostgreSQL runs a statement as one implicit transaction, so the batch
is stored whole or not at all. Each column travels as one array parameter, so the
statement's text does not depend on the batch's size: asyncpg prepares it once per
connection and keeps it. The rare batches (a pause, a retention pass) keep the
transaction of statements.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from . import postgres_schema as schema
from .sql_runs import prune_finished


@dataclass(slots=True)
class BatchRows:
    """A batch's rows, ready for SQL (read from the records on the event loop)."""

    runs: list[dict[str, Any]]
    """Run column values by name (``postgres.row_columns``)."""
    keys: list[tuple[str, str, str]]
    """``(job, idempotency key, run id)``."""
    labels: list[tuple[str, str, str]]
    """``(run id, name, value)``."""
    pauses: list[tuple[str, str, bool]]
    """``(kind, name, paused)``: only those PostgreSQL can hold."""


RUN_TYPES = (
    ("id", "text"),
    ("job", "text"),
    ("concurrency_key", "text"),
    ("status", "text"),
    ("created_at", "float8"),
    ("finished_at", "float8"),
    ("data", "text"),
    ("due_at", "float8"),
    ("started_at", "float8"),
    ("attempt", "int4"),
    ("trigger_count", "int4"),
)
"""The run columns a write sets, with their PostgreSQL types, in parameter order."""


def _unnest(first: int, types: list[str]) -> str:
    arrays = ", ".join(f"${first + n}::{kind}[]" for n, kind in enumerate(types))
    return f"SELECT * FROM unnest({arrays})"


def _statement() -> str:
    runs = schema.runs_table.name
    columns = ", ".join(name for name, _ in RUN_TYPES)
    updates = ", ".join(f"{name} = excluded.{name}" for name in schema.RUN_UPDATED)
    after = len(RUN_TYPES) + 1
    return (
        f"WITH runs AS (INSERT INTO {runs} ({columns}) "
        f"{_unnest(1, [kind for _, kind in RUN_TYPES])} "
        f"ON CONFLICT (id) DO UPDATE SET {updates}), "
        f"keys AS (INSERT INTO {schema.idempotency_table.name} "
        f"(job, idempotency_key, run_id) {_unnest(after, ['text'] * 3)} "
        "ON CONFLICT DO NOTHING), "
        f"labels AS (INSERT INTO {schema.labels_table.name} "
        f"(run_id, name, value) {_unnest(after + 3, ['text'] * 3)} "
        "ON CONFLICT DO NOTHING) "
        f"UPDATE {schema.schema_table.name} SET writes = writes + 1"
    )


BATCH_STATEMENT = _statement()
"""The statement (see the module); its parameters come from :func:`batch_arguments`."""


def batch_arguments(batch: BatchRows) -> list[list[Any]]:
    """:data:`BATCH_STATEMENT`'s parameters (one list per column); pauses are not in it."""
    rows, keys, labels = batch.runs, batch.keys, batch.labels
    arguments = [[row[name] for row in rows] for name, _ in RUN_TYPES]
    arguments.extend([key[n] for key in keys] for n in range(3))
    arguments.extend([label[n] for label in labels] for n in range(3))
    return arguments


async def write_one_statement(conn: AsyncConnection, batch: BatchRows) -> None:
    """Store ``batch`` (without pauses) in one statement on ``conn``'s session.

    The statement goes to the driver's connection under ``conn``, outside any
    transaction of SQLAlchemy's; should it fail, ``conn`` is invalidated (SQLAlchemy
    did not see the failure), so the next use starts a new session.

    Raises:
        asyncpg.PostgresError, OSError, …: as the driver raises them; nothing was stored.
    """
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    try:
        await raw.execute(BATCH_STATEMENT, *batch_arguments(batch))
    except BaseException as exc:
        with contextlib.suppress(SQLAlchemyError, OSError):
            await conn.invalidate()
        if isinstance(exc, asyncpg.InternalClientError):  # its words name its own states
            raise OSError(
                "the connection to PostgreSQL broke during the write (the server ended the "
                f"session?): {exc}"
            ) from exc
        raise


async def write_statements(
    conn: AsyncConnection, batch: BatchRows, finished: int, retention: int, slack: int
) -> int:
    """Store ``batch`` in a transaction of statements, retention included.

    ``finished`` estimates the finished runs stored (see ``sql_runs.prune_due``);
    returns the new estimate.
    """
    async with conn.begin():
        if batch.runs:
            await conn.execute(_UPSERT_RUN, batch.runs)
        if batch.keys:
            await conn.execute(
                _INSERT_IDEMPOTENCY,
                [{"job": j, "idempotency_key": k, "run_id": r} for j, k, r in batch.keys],
            )
        if batch.labels:
            await conn.execute(
                _INSERT_LABELS, [{"run_id": r, "name": n, "value": v} for r, n, v in batch.labels]
            )
        pauses = schema.pauses_table
        for kind, name, paused in batch.pauses:
            if paused:
                await conn.execute(_INSERT_PAUSE, {"kind": kind, "name": name})
            else:
                await conn.execute(
                    delete(pauses).where(pauses.c.kind == kind, pauses.c.name == name)
                )
        await conn.execute(
            update(schema.schema_table).values(writes=schema.schema_table.c.writes + 1)
        )
        return await prune_finished(conn, schema.TABLES, finished, retention, slack)


_upsert = pg_insert(schema.runs_table)
_UPSERT_RUN = _upsert.on_conflict_do_update(
    index_elements=["id"], set_={name: _upsert.excluded[name] for name in schema.RUN_UPDATED}
)
_INSERT_IDEMPOTENCY = pg_insert(schema.idempotency_table).on_conflict_do_nothing()
_INSERT_LABELS = pg_insert(schema.labels_table).on_conflict_do_nothing()
_INSERT_PAUSE = pg_insert(schema.pauses_table).on_conflict_do_nothing()
