"""The PostgreSQL schema of keyflow's runs, and the migrations between its versions.

The tables mirror SQLite's (``sqlite_schema.py``), in a PostgreSQL schema of the user's
choice (``?schema=``; ``public`` by default), which other tables may share:

* ``keyflow_runs``: the columns queries filter and sort on, plus the whole run as JSON
  text (``data``, exactly as ``rows.py`` encodes it); ``seq``, an identity, is creation
  order (an upsert keeps a row's ``seq``), for ties of ``created_at``;
* ``keyflow_idempotency``: ``(job, idempotency_key) → run_id``;
* ``keyflow_labels``: ``(run_id, name, value)``;
* ``keyflow_pauses``: the paused jobs and lanes;
* ``keyflow_schema``: one row: the version, checked at every open, and ``writes``, bumped
  by every write (the change token).

Text columns compare in code point order (``COLLATE "C"``), as SQLite does, so that a key
prefix is an index range whatever the database's locale. Columns for several processes
(leases, lanes) come with a later version, by migration: :data:`MIGRATIONS` takes a
database from version ``v`` to ``v + 1``, in one transaction at open.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from .sql_runs import RunTables
from .sql_tables import Step, run_columns, side_tables

SCHEMA_VERSION = 1
"""The schema this version writes; older ones are migrated at open."""

_Text = String(collation="C")

metadata = MetaData()
# Tables are named without a schema: each connection maps them into the one it was
# opened on (SQLAlchemy's schema_translate_map).
schema_table = Table(
    "keyflow_schema",
    metadata,
    Column("version", Integer, nullable=False),
    Column("writes", BigInteger, nullable=False, server_default="0"),
)
runs_table = Table(
    "keyflow_runs",
    metadata,
    *run_columns(_Text),
    Column("seq", BigInteger, Identity(), nullable=False, unique=True),
    Index("keyflow_runs_status", "status", "due_at"),
    Index("keyflow_runs_job", "job", "created_at"),
    Index("keyflow_runs_key", "concurrency_key", "created_at"),
    Index("keyflow_runs_created", "created_at", "seq"),
    Index("keyflow_runs_finished", "finished_at"),
)
idempotency_table, labels_table, pauses_table = side_tables(metadata, _Text)

TABLES = RunTables(runs_table, idempotency_table, labels_table, pauses_table, runs_table.c.seq)
"""PostgreSQL's run tables; ``seq`` is creation order."""

RUN_UPDATED = ("status", "finished_at", "data", "due_at", "started_at", "attempt", "trigger_count")
"""What a later write of a run changes (id, seq, job, key and creation time never change)."""

# A migration's SQL text names tables unqualified: the connection's search path is the
# schema it was opened on.


def create(conn: Connection) -> None:
    """The whole schema, in a schema without keyflow's tables."""
    metadata.create_all(conn)


MIGRATIONS: dict[int, list[Step]] = {}
"""The steps that take a database from version ``v`` to ``v + 1``, by ``v``."""
