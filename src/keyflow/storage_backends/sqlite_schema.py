"""The SQLite schema of keyflow's runs, and the migrations between its versions.

Tables:

* ``keyflow_runs``: the columns queries filter and sort on, plus the whole run as JSON
  text (``data``); rowid order is creation order (an upsert keeps a row's rowid);
* ``keyflow_idempotency``: ``(job, idempotency_key) → run_id``;
* ``keyflow_labels`` (version 2): ``(run_id, name, value)``, so a label filter is an
  exact, indexed match for any name and value (a JSON path cannot spell every name, and
  SQLite's JSON functions stop at a NUL character);
* (version 3) the run columns ``due_at``, ``started_at``, ``attempt`` and
  ``trigger_count``, for statistics without reading the JSON; and ``keyflow_pauses``,
  the paused jobs and lanes;
* ``keyflow_schema``: the version, checked at every open.

A migration is a list of steps, SQL text or a function run on the connection, applied
in one transaction at open.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    literal_column,
    select,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnClause

from .sql_runs import TERMINAL as TERMINAL
from .sql_tables import Step as Step
from .sql_tables import run_columns, side_tables

SCHEMA_VERSION = 3
"""The schema this version writes; older ones are migrated at open."""

metadata = MetaData()
schema_table = Table("keyflow_schema", metadata, Column("version", Integer, nullable=False))
runs_table = Table(
    "keyflow_runs",
    metadata,
    *run_columns(String()),
    Index("keyflow_runs_status", "status"),
    Index("keyflow_runs_job", "job", "created_at"),
    Index("keyflow_runs_key", "concurrency_key", "created_at"),
    Index("keyflow_runs_created", "created_at"),
    Index("keyflow_runs_finished", "finished_at"),
)
idempotency_table, labels_table, pauses_table = side_tables(metadata, String())

ROWID: ColumnClause[int] = literal_column("rowid", Integer)


RUN_COLUMNS = (
    "id",
    "job",
    "concurrency_key",
    "status",
    "created_at",
    "finished_at",
    "data",
    "due_at",
    "started_at",
    "attempt",
    "trigger_count",
)
"""The columns of a run row, in the order ``UPSERT_RUN`` takes their values."""

_RUN_UPDATED = ("status", "finished_at", "data", "due_at", "started_at", "attempt", "trigger_count")
# What a later write of a run changes (id, job, key and creation time never change).


def _insert_sql(table: Table, columns: tuple[str, ...], conflict: str) -> str:
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT {conflict}"
    )


UPSERT_RUN = _insert_sql(
    runs_table,
    RUN_COLUMNS,
    "(id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _RUN_UPDATED),
)
"""Insert or update one run: SQL text, for the driver's ``executemany`` with one tuple of
``RUN_COLUMNS`` values per run (statement objects cost a dict of parameters per row)."""

INSERT_IDEMPOTENCY = _insert_sql(
    idempotency_table, ("job", "idempotency_key", "run_id"), "DO NOTHING"
)
"""Insert ``(job, idempotency_key, run_id)`` tuples; a key stored already is kept."""

INSERT_LABELS = _insert_sql(labels_table, ("run_id", "name", "value"), "DO NOTHING")
"""Insert ``(run_id, name, value)`` tuples; a run's labels never change."""

insert_pause = sqlite_insert(pauses_table).on_conflict_do_nothing()


def _backfill_labels(conn: Connection) -> None:
    rows: list[dict[str, Any]] = []
    for run_id, data in conn.execute(select(runs_table.c.id, runs_table.c.data)):
        try:
            labels = json.loads(data).get("labels") or {}
        except (ValueError, AttributeError):
            continue  # an unreadable row is reported when it is read, not here
        rows.extend({"run_id": run_id, "name": n, "value": v} for n, v in labels.items())
    if rows:
        conn.execute(insert(labels_table), rows)


def create(conn: Connection) -> None:
    """The whole schema, in an empty database."""
    metadata.create_all(conn)


MIGRATIONS: dict[int, list[Step]] = {
    1: [
        "CREATE TABLE keyflow_labels (run_id VARCHAR NOT NULL, name VARCHAR NOT NULL, "
        "value VARCHAR NOT NULL, PRIMARY KEY (run_id, name))",
        "CREATE INDEX keyflow_labels_name_value ON keyflow_labels (name, value)",
        _backfill_labels,
    ],
    2: [
        "ALTER TABLE keyflow_runs ADD COLUMN due_at FLOAT",
        "ALTER TABLE keyflow_runs ADD COLUMN started_at FLOAT",
        "ALTER TABLE keyflow_runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE keyflow_runs ADD COLUMN trigger_count INTEGER NOT NULL DEFAULT 1",
        "UPDATE keyflow_runs SET due_at = json_extract(data, '$.due_at'), "
        "started_at = json_extract(data, '$.started_at'), "
        "attempt = json_extract(data, '$.attempt'), "
        "trigger_count = json_extract(data, '$.trigger_count')",
        "CREATE TABLE keyflow_pauses (kind VARCHAR NOT NULL, name VARCHAR NOT NULL, "
        "PRIMARY KEY (kind, name))",
    ],
}
"""The steps that take a database from version ``v`` to ``v + 1``, by ``v``."""
