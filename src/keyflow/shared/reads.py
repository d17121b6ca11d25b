"""Lanes and counters of shared storage, read from the database (every process's runs).

The scheduler's async reads (``list_lanes``, ``get_lane``, ``get_lane_states``,
``get_statistics``) answer from here on shared storage. Lanes are rebuilt from their
unfinished rows by the same rules as a decision's (:func:`~keyflow.shared.decide.lane_from_runs`);
which runs hold a slot is :func:`keyflow.state.slot_held`'s rule, applied in Python.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from ..lane_view import lane_snapshot
from ..records import RunRecord
from ..runs import RunStatus
from ..state import lane_state, slot_held
from ..stats import LaneSnapshot
from . import sql
from .database import SharedDatabase
from .decide import lane_from_runs

UNFINISHED_OF = (
    "SELECT data, entered FROM keyflow_runs WHERE concurrency_key = ANY($1::text[]) "
    "AND status IN " + sql.UNFINISHED + " ORDER BY seq"
)
ACTIVE_KEYS = (
    "SELECT DISTINCT concurrency_key FROM keyflow_runs WHERE status IN " + sql.UNFINISHED + " "
    "AND concurrency_key IS NOT NULL AND starts_with(concurrency_key, $1) ORDER BY 1"
)
LANE_SHAPES = (
    "SELECT concurrency_key, status, attempt > 0, count(*) FROM keyflow_runs "
    "WHERE status IN " + sql.UNFINISHED + " AND concurrency_key IS NOT NULL GROUP BY 1, 2, 3"
)
STATUS_COUNTS = (
    "SELECT status, count(*) FROM keyflow_runs WHERE status IN " + sql.UNFINISHED + " GROUP BY 1"
)
DUE_WORK = (
    "SELECT count(*) FROM keyflow_runs r WHERE r.job = ANY($1::text[]) AND (r.status = "
    "'running' OR (r.status IN ('queued', 'pending') AND NOT EXISTS (SELECT 1 FROM "
    "keyflow_pauses p WHERE (p.kind = 'job' AND p.name = r.job) OR (p.kind = 'key' AND "
    "p.name = r.concurrency_key))))"
)
PAUSED = "SELECT kind, name FROM keyflow_pauses"
KNOWN_LANES = "SELECT count(*) FROM keyflow_lanes"


async def paused(db: SharedDatabase) -> tuple[frozenset[str], frozenset[str]]:
    """The paused jobs and lanes, for every process."""
    jobs: set[str] = set()
    keys: set[str] = set()
    for kind, name in await db.fetch(PAUSED):
        (jobs if kind == "job" else keys).add(name)
    return frozenset(jobs), frozenset(keys)


async def active_keys(db: SharedDatabase, prefix: str | None) -> list[str]:
    """The keys with unfinished runs, sorted, starting with ``prefix``."""
    return [row[0] for row in await db.fetch(ACTIVE_KEYS, prefix or "")]


async def lanes(
    db: SharedDatabase, keys: list[str], limit_of: Callable[[str], int]
) -> list[LaneSnapshot]:
    """The snapshots of these keys' lanes, in the order given."""
    runs: dict[str, list[RunRecord]] = defaultdict(list)
    entered: dict[str, int] = {}
    if keys:
        for data, order in await db.fetch(UNFINISHED_OF, keys):
            record = db.decode(data)
            if record.key is not None:
                runs[record.key].append(record)
                entered[record.id] = order
    _jobs, paused_keys = await paused(db)
    snapshots = []
    for key in keys:
        members = runs.get(key, [])
        lane, _requeued = lane_from_runs(key, limit_of(key), members, entered)
        snapshots.append(
            lane_snapshot(
                key,
                lane.limit,
                lane.members.values(),
                lane.waiting,
                coalesced=sum(run.trigger_count - 1 for run in members),
                paused=key in paused_keys,
            )
        )
    return snapshots


async def lane_states(db: SharedDatabase) -> dict[str, int]:
    """How many lanes are idle, running, and running with runs waiting."""
    holding: dict[str, int] = defaultdict(int)
    waiting: dict[str, int] = defaultdict(int)
    for key, status, started, count in await db.fetch(LANE_SHAPES):
        run_status = RunStatus(status)
        if slot_held(run_status, 1 if started else 0):
            holding[key] += count
        elif run_status is RunStatus.QUEUED:
            waiting[key] += count
    states = [lane_state(holding[key], waiting[key]) for key in set(holding) | set(waiting)]
    running = states.count("running")
    queued = states.count("running+queued")
    known = int(await db.fetchval(KNOWN_LANES))
    return {"idle": max(known - running - queued, 0), "running": running, "running+queued": queued}


async def status_counts(db: SharedDatabase) -> dict[str, int]:
    """Unfinished runs by status, in every process."""
    counts = {
        s.value: 0
        for s in (RunStatus.SCHEDULED, RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING)
    }
    for status, count in await db.fetch(STATUS_COUNTS):
        counts[status] = int(count)
    return counts


async def due_work(db: SharedDatabase, jobs: list[str]) -> int:
    """How many runs of ``jobs`` run, or wait for a worker and no pause, in any process."""
    return int(await db.fetchval(DUE_WORK, jobs))
