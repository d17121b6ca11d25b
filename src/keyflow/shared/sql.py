"""The SQL the shared PostgreSQL coordinator sends (tables of ``postgres_schema.py``).

Statements name tables unqualified: every connection's search path is keyflow's
schema. SQL here only locks, reads and writes; what a trigger, an end or a due time
does to a key's runs is decided in Python (:mod:`keyflow.shared.decide`).

Locks are always taken in one order, so no two transactions wait for each other in a
circle: idempotency keys (sorted), then lanes (sorted by key), then runs (by ``seq``).
"""

from __future__ import annotations

from typing import Final

UNFINISHED: Final = "('scheduled', 'queued', 'pending', 'running')"

LOCK_LANES: Final = (
    "INSERT INTO keyflow_lanes (key) SELECT k FROM unnest($1::text[]) AS k ORDER BY k "
    "ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key"
)
"""Lock the lanes of these keys (made if missing), in key order."""

LOCK_IDEMPOTENCY: Final = (
    "SELECT pg_advisory_xact_lock(hashtextextended(j || chr(1) || k, 0)) "
    "FROM unnest($1::text[], $2::text[]) AS t(j, k) ORDER BY j, k"
)
"""Serialize triggers carrying the same ``(job, idempotency_key)``."""

FIND_IDEMPOTENT: Final = (
    "SELECT i.job, i.idempotency_key, r.id, r.concurrency_key FROM keyflow_idempotency i "
    "JOIN keyflow_runs r ON r.id = i.run_id "
    "WHERE (i.job, i.idempotency_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
)
"""The runs these idempotency keys name (while a run is kept, finished or not, its key
names it, as in a single process)."""

LANE_RUNS: Final = (
    "SELECT data, generation, lease_owner, entered FROM keyflow_runs "
    "WHERE concurrency_key = ANY($1::text[]) AND status IN " + UNFINISHED + " "
    "ORDER BY seq FOR UPDATE"
)
"""The unfinished runs of these keys, locked in creation order (every transaction locks
runs in that order), with the order they entered their lane's queue."""

RUNS_NOW: Final = (
    "SELECT id, data, generation, lease_owner, concurrency_key FROM keyflow_runs "
    "WHERE id = ANY($1::text[])"
)
"""These runs as they are now (unlocked)."""

RUNS_BY_ID: Final = RUNS_NOW + " ORDER BY seq FOR UPDATE"
"""These runs, locked (in creation order, as every transaction locks runs)."""

COLUMNS: Final = (
    "id, job, concurrency_key, status, created_at, finished_at, data, due_at, started_at, "
    "attempt, trigger_count"
)

INSERT_RUN: Final = (
    f"INSERT INTO keyflow_runs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)

INSERT_RUN_NOTIFY: Final = (
    f"WITH made AS (INSERT INTO keyflow_runs ({COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id) "
    "SELECT pg_notify($12, $13)"
)
"""One new run and the transaction's notice, in one statement."""

ENTERED: Final = (
    "entered = CASE WHEN status = 'scheduled' AND $2::varchar = 'queued' "
    "THEN nextval('keyflow_entered') ELSE entered END"
)
"""A delayed run that becomes queued enters its lane's queue now (at its back)."""

UPDATE_RUN: Final = (
    "UPDATE keyflow_runs SET status = $2, finished_at = $3, data = $4, due_at = $5, "
    f"started_at = $6, attempt = $7, trigger_count = $8, {ENTERED} WHERE id = $1"
)
"""A run's fields after a change decided under its lane's lock (its lease untouched)."""

UPDATE_RUN_NOTIFY: Final = (
    "WITH changed AS (UPDATE keyflow_runs SET status = $2, finished_at = $3, data = $4, "
    f"due_at = $5, started_at = $6, attempt = $7, trigger_count = $8, {ENTERED} "
    "WHERE id = $1 RETURNING id) SELECT pg_notify($9, $10)"
)
"""One run's change and the transaction's notice, in one statement."""

SAVE_LEASED: Final = (
    "UPDATE keyflow_runs SET status = $2, finished_at = $3, data = $4, due_at = $5, "
    "started_at = $6, attempt = $7, trigger_count = $8, "
    "lease_owner = CASE WHEN $9::boolean THEN lease_owner END, "
    "lease_until = CASE WHEN $9::boolean THEN lease_until END, "
    "generation = generation + CASE WHEN $9::boolean THEN 0 ELSE 1 END "
    "WHERE id = $1 AND generation = $10 AND lease_owner = $11"
)
"""A leased run's change by its worker, fenced by the lease's generation; ``$9`` says
whether the worker keeps the lease (False: an end, or a stop handing the run back)."""

UPSERT_IDEMPOTENCY: Final = (
    "INSERT INTO keyflow_idempotency (job, idempotency_key, run_id) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) "
    "ON CONFLICT (job, idempotency_key) DO UPDATE SET run_id = EXCLUDED.run_id"
)

INSERT_LABELS: Final = (
    "INSERT INTO keyflow_labels (run_id, name, value) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING"
)

NOTIFY: Final = "SELECT pg_notify($1, $2)"

CLAIM: Final = (
    "WITH picked AS (SELECT id, data, regexp_match(data, $9) AS m FROM keyflow_runs r "
    "WHERE status = 'pending' AND lease_owner IS NULL AND job = ANY($1::text[]) "
    "AND NOT EXISTS (SELECT 1 FROM keyflow_pauses p WHERE (p.kind = 'job' AND p.name = r.job) "
    "OR (p.kind = 'key' AND p.name = r.concurrency_key)) "
    "ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED), "
    # RunRecord.begin_attempt on the stored text's prefix (rows.START_PREFIX, $9):
    # running; a new attempt unless a stop cut the last one short; one more start.
    "started AS (SELECT id, data, m, m[2]::int + CASE WHEN m[4] = 'true' THEN 0 ELSE 1 END "
    "AS attempt, m[3]::int + 1 AS starts FROM picked), "
    "claimed AS (UPDATE keyflow_runs AS r SET lease_owner = $3, "
    "lease_until = clock_timestamp() + make_interval(secs => $4), "
    "generation = r.generation + 1, "
    "status = CASE WHEN s.m IS NULL THEN r.status ELSE 'running' END, "
    "started_at = CASE WHEN s.m IS NULL THEN r.started_at ELSE $5 END, "
    "attempt = coalesce(s.attempt, r.attempt), "
    'data = CASE WHEN s.m IS NULL THEN r.data ELSE \'{"status":"running","attempt":\' '
    "|| s.attempt || ',\"starts\":' || s.starts || ',\"started_at\":' || $6 "
    "|| ',\"stop_interrupted\":false,' || substr(r.data, length(s.m[1]) + 1) END "
    "FROM started AS s WHERE r.id = s.id "
    "RETURNING r.id, s.data AS before, r.data, r.generation, r.seq, s.m IS NOT NULL AS started), "
    "told AS (SELECT pg_notify($7, json_build_object('e', "
    "(array_agg(id) FILTER (WHERE started))[1:100])::text) FROM claimed "
    "HAVING count(*) FILTER (WHERE started) > 0 AND $8::boolean) "
    "SELECT c.id, c.before, c.data, c.generation, c.seq, c.started "
    "FROM claimed AS c LEFT JOIN told ON true"
)
"""Lease and start pending runs nobody leases, of jobs this process registers, not
paused, oldest first; tell the others (their event streams) they started, if any
watches (``$8``). One statement, committed on its own: the start is durable before the
handler's first line, and a claim that finds nothing costs one round trip. The start
rewrites only the prefix of the stored text that :func:`keyflow.storage_backends.rows.
record_row` puts first (``$6``: the start time as JSON); a run stored otherwise (by an
older keyflow) is leased unstarted (``started`` false), and :data:`START` starts it.
Returns each run's data before and after."""

START: Final = (
    "UPDATE keyflow_runs SET status = 'running', data = $2, started_at = $3, attempt = $4 "
    "WHERE id = $1 AND generation = $5 AND lease_owner = $6 AND data = $7 RETURNING id"
)
"""Start a leased run nobody changed since its claim (``$7``: its data then)."""

SAVE_QUICK: Final = (
    "WITH saved AS (UPDATE keyflow_runs AS r SET status = t.status, finished_at = t.finished, "
    "data = t.data, due_at = t.due, started_at = t.started, attempt = t.attempt, "
    "trigger_count = t.count, lease_owner = CASE WHEN t.keep THEN r.lease_owner END, "
    "lease_until = CASE WHEN t.keep THEN r.lease_until END, "
    "generation = r.generation + CASE WHEN t.keep THEN 0 ELSE 1 END "
    "FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::float8[], "
    "$6::float8[], $7::int[], $8::int[], $9::boolean[], $10::bigint[], $11::text[]) "
    "AS t(id, status, finished, data, due, started, attempt, count, keep, generation, old) "
    "WHERE r.id = t.id AND r.generation = t.generation AND r.lease_owner = $12 "
    "AND r.data = t.old RETURNING r.id), "
    "told AS (SELECT pg_notify($13, $14) WHERE $14 <> '') "
    "SELECT saved.id FROM saved LEFT JOIN told ON true"
)
"""Leased runs' changes by their worker in one statement, where nothing else can be due:
fenced by the lease and by the data last written (``old``: a run another process
changed meanwhile is left for the locked path, which merges). ``keep``: the worker keeps
the lease (False: an end, or a stop handing the run back). An empty notice (``''``)
is not sent."""

ORPHANS: Final = (
    "UPDATE keyflow_runs SET lease_until = clock_timestamp() + make_interval(secs => $3) "
    "WHERE lease_owner = $1 AND NOT (id = ANY($2::text[])) "
    "RETURNING id, generation, concurrency_key"
)
"""Leases this process holds and does not know of, kept from expiring till given back
(an expiry would count a crash: the run never ran)."""

RENEW: Final = (
    "UPDATE keyflow_runs AS r SET lease_until = clock_timestamp() + make_interval(secs => $4) "
    "FROM unnest($2::text[], $3::bigint[]) AS t(id, generation) "
    "WHERE r.id = t.id AND r.generation = t.generation AND r.lease_owner = $1 "
    "RETURNING r.id, coalesce((r.data::json ->> 'cancel_requested')::boolean, false)"
)

EXPIRED_LOCKED: Final = (
    "SELECT id, data, generation, lease_owner, concurrency_key FROM keyflow_runs "
    "WHERE id = ANY($1::text[]) AND lease_owner IS NOT NULL AND lease_until < clock_timestamp() "
    "ORDER BY seq FOR UPDATE"
)
"""Of these runs, those whose lease has expired (checked again under lock), locked."""

EXPIRED: Final = (
    "SELECT id, concurrency_key FROM keyflow_runs "
    "WHERE lease_owner IS NOT NULL AND lease_until < clock_timestamp() "
    "ORDER BY lease_until LIMIT $1"
)

RELEASE: Final = (
    "UPDATE keyflow_runs SET status = $2, finished_at = $3, data = $4, due_at = $5, "
    "started_at = $6, attempt = $7, trigger_count = $8, lease_owner = NULL, "
    "lease_until = NULL, generation = generation + 1 WHERE id = $1"
)
"""A reclaimed run: its fields, and no lease (a new generation fences the old worker)."""

DUE: Final = (
    "SELECT id, concurrency_key FROM keyflow_runs "
    "WHERE status = 'scheduled' AND lease_owner IS NULL AND due_at <= $1 "
    "ORDER BY due_at LIMIT $2"
)

NEXT_DUE: Final = (
    "SELECT min(due_at) FROM keyflow_runs WHERE status = 'scheduled' AND lease_owner IS NULL"
)

BUSY: Final = (
    "SELECT count(*) FROM keyflow_runs r WHERE status = 'running' "
    "OR (status = 'scheduled' AND lease_owner IS NOT NULL) "
    "OR ((status = 'pending' OR (status = 'scheduled' AND due_at <= $1)) "
    "AND NOT EXISTS (SELECT 1 FROM keyflow_pauses p WHERE (p.kind = 'job' AND p.name = r.job) "
    "OR (p.kind = 'key' AND p.name = r.concurrency_key)))"
)
"""Unfinished runs that are due (or leased): the database is not idle while any are. A
queued run is not counted: it waits for a slot that one of these holds (or a paused
run does: it waits with it)."""
