"""The tables every SQL backend keeps alike, and the one way their migrations run.

SQLite (``sqlite_schema.py``) and PostgreSQL (``postgres_schema.py``) store the same
columns of a run and the same idempotency, label and pause tables; they differ in the
type of their text (PostgreSQL compares in code point order, as SQLite does), in how a
run's creation order is kept, and in their indexes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Connection, Float, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.ext.asyncio import AsyncConnection

Step = str | Callable[[Connection], None]
"""One step of a migration: SQL text, or a function of the (synchronous) connection."""


def run_columns(text: String) -> list[Column[Any]]:
    """A run's stored columns: what queries filter and sort on, and ``data``, its JSON."""
    return [
        Column("id", text, primary_key=True),
        Column("job", text, nullable=False),
        Column("concurrency_key", text),
        Column("status", text, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("finished_at", Float),
        Column("data", Text, nullable=False),
        Column("due_at", Float),
        Column("started_at", Float),
        Column("attempt", Integer, nullable=False, server_default="0"),
        Column("trigger_count", Integer, nullable=False, server_default="1"),
    ]


def side_tables(metadata: MetaData, text: String) -> tuple[Table, Table, Table]:
    """``keyflow_idempotency``, ``keyflow_labels`` and ``keyflow_pauses``, in ``metadata``.

    * idempotency: ``(job, idempotency_key) → run_id``;
    * labels: ``(run_id, name, value)``, so a label filter is an exact, indexed match
      for any name and value;
    * pauses: the paused jobs and lanes, ``(kind, name)``.
    """
    idempotency = Table(
        "keyflow_idempotency",
        metadata,
        Column("job", text, primary_key=True),
        Column("idempotency_key", text, primary_key=True),
        Column("run_id", text, nullable=False),
        Index("keyflow_idempotency_run", "run_id"),
    )
    labels = Table(
        "keyflow_labels",
        metadata,
        Column("run_id", text, primary_key=True),
        Column("name", text, primary_key=True),
        Column("value", text, nullable=False),
        Index("keyflow_labels_name_value", "name", "value"),
    )
    pauses = Table(
        "keyflow_pauses",
        metadata,
        Column("kind", text, primary_key=True),
        Column("name", text, primary_key=True),
    )
    return idempotency, labels, pauses


async def migrate(
    conn: AsyncConnection,
    migrations: dict[int, list[Step]],
    version: int,
    target: int,
    schema_table: Table,
) -> None:
    """Take the database from ``version`` to ``target``, in the caller's transaction.

    ``migrations[v]`` holds the steps from ``v`` to ``v + 1``; ``schema_table``'s
    ``version`` is set to ``target`` at the end.
    """
    for step in range(version, target):
        for action in migrations[step]:
            if isinstance(action, str):
                await conn.exec_driver_sql(action)
            else:
                await conn.run_sync(action)
    if version != target:
        await conn.execute(schema_table.update().values(version=target))
