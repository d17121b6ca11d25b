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
  by every write of the single-writer mode (its change token);
* ``keyflow_lanes`` (version 2): one row per concurrency key, the lock a shared-mode
  decision about the key holds (``SELECT … FOR UPDATE``, see ``keyflow.shared``);
* a run's lease (version 2): ``lease_owner`` (the process executing it), ``lease_until``
  (the database's clock) and ``generation``, bumped by each claim and reclaim, which
  fences a worker whose lease was taken from it.

Text columns compare in code point order (``COLLATE "C"``), as SQLite does, so that a key
prefix is an index range whatever the database's locale. Columns for several processes
(leases, lanes) came with version 2, by migration; version 3 dropped index entries each
row version paid for nothing, and added ``keyflow_watchers`` (processes watching runs
change: see ``keyflow.shared.watching``); version 4 added ``entered``, the order in which
runs entered their lanes' queues (from the sequence ``keyflow_entered``: a run made
queued takes a number, and so does a delayed run when it becomes queued), which orders a
lane's waiting runs in shared mode. :data:`MIGRATIONS` takes a database from version ``v``
to ``v + 1``, in one transaction at open.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from .sql_runs import RunTables
from .sql_tables import Step, run_columns, side_tables

SCHEMA_VERSION = 4
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
    Column("seq", BigInteger, Identity(), nullable=False),
    Column("lease_owner", _Text),
    Column("lease_until", DateTime(timezone=True)),
    Column("generation", BigInteger, nullable=False, server_default="0"),
    Index("keyflow_runs_status", "status", "due_at"),
    Index("keyflow_runs_job", "job", "created_at"),
    Index("keyflow_runs_key", "concurrency_key", "created_at"),
    Index("keyflow_runs_created", "created_at", "seq"),
)
idempotency_table, labels_table, pauses_table = side_tables(metadata, _Text)
lanes_table = Table(
    "keyflow_lanes",
    metadata,
    Column("key", _Text, primary_key=True),
)

TABLES = RunTables(runs_table, idempotency_table, labels_table, pauses_table, runs_table.c.seq)
"""PostgreSQL's run tables; ``seq`` is creation order."""

RUN_UPDATED = ("status", "finished_at", "data", "due_at", "started_at", "attempt", "trigger_count")
"""What a later write of a run changes (id, seq, job, key and creation time never change)."""

# A migration's SQL text names tables unqualified: the connection's search path is the
# schema it was opened on.


_V2_INDEXES = [
    # Claims: the pending runs nobody leases, oldest first.
    "CREATE INDEX keyflow_runs_claimable ON keyflow_runs (seq) "
    "WHERE status = 'pending' AND lease_owner IS NULL",
    # Lane rebuilds: a key's unfinished runs.
    "CREATE INDEX keyflow_runs_unfinished ON keyflow_runs (concurrency_key, seq) "
    "WHERE status IN ('scheduled', 'queued', 'pending', 'running')",
    # Reclaims and heartbeats.
    "CREATE INDEX keyflow_runs_leased ON keyflow_runs (lease_until) WHERE lease_owner IS NOT NULL",
    # Due times of delayed runs (and of retries whose lease was reclaimed).
    "CREATE INDEX keyflow_runs_due ON keyflow_runs (due_at) "
    "WHERE status = 'scheduled' AND lease_owner IS NULL",
]


_V3_TABLES = [
    # Processes watching runs change (keyflow.shared.watching).
    'CREATE TABLE keyflow_watchers (owner VARCHAR COLLATE "C" NOT NULL PRIMARY KEY, '
    "until TIMESTAMP WITH TIME ZONE NOT NULL)",
]

_V3_INDEXES = [
    # Retention: the oldest finished runs (an unfinished row costs this index nothing).
    "CREATE INDEX keyflow_runs_finished ON keyflow_runs (finished_at, seq) "
    "WHERE finished_at IS NOT NULL",
]


_V4_COLUMNS = [
    # The order runs entered their lanes' queues (keyflow.shared.decide.lane_from_runs).
    "CREATE SEQUENCE keyflow_entered",
    "ALTER TABLE keyflow_runs ADD COLUMN entered BIGINT NOT NULL "
    "DEFAULT nextval('keyflow_entered')",
]


def create(conn: Connection) -> None:
    """The whole schema, in a schema without keyflow's tables."""
    metadata.create_all(conn)
    for index in (*_V2_INDEXES, *_V3_TABLES, *_V3_INDEXES, *_V4_COLUMNS):
        conn.exec_driver_sql(index)


MIGRATIONS: dict[int, list[Step]] = {
    1: [
        'ALTER TABLE keyflow_runs ADD COLUMN lease_owner VARCHAR COLLATE "C"',
        "ALTER TABLE keyflow_runs ADD COLUMN lease_until TIMESTAMP WITH TIME ZONE",
        "ALTER TABLE keyflow_runs ADD COLUMN generation BIGINT NOT NULL DEFAULT 0",
        'CREATE TABLE keyflow_lanes (key VARCHAR COLLATE "C" NOT NULL PRIMARY KEY)',
        *_V2_INDEXES,
    ],
    # Fewer index entries per row version (each claim and end writes one): seq needs no
    # unique index (an identity), and retention's index holds finished runs only.
    2: [
        "ALTER TABLE keyflow_runs DROP CONSTRAINT IF EXISTS keyflow_runs_seq_key",
        "DROP INDEX IF EXISTS keyflow_runs_finished",
        *_V3_INDEXES,
        *_V3_TABLES,
    ],
    # Lanes' queues in the order runs entered them; the runs waiting now keep the order
    # version 3 gave them (due time, then creation), ahead of every later one.
    3: [
        *_V4_COLUMNS,
        "UPDATE keyflow_runs AS r SET entered = o.n FROM (SELECT id, row_number() OVER "
        "(ORDER BY due_at, seq) AS n FROM keyflow_runs WHERE status = 'queued') AS o "
        "WHERE r.id = o.id",
    ],
}
"""The steps that take a database from version ``v`` to ``v + 1``, by ``v``."""
