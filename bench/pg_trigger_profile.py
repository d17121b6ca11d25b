"""Where a keyflow trigger's time goes on shared PostgreSQL: one process, no workers.

``python -m bench.pg_trigger_profile`` opens ``Keyflow(URL, workers=0)`` on a fresh
schema and triggers a no-op job N times (``--triggers``, 2,000), one after another, in
three ways: no concurrency key; ``coalesce="queue"`` on a distinct key each time; and
``coalesce="queue"`` on one key (its queue grows, nothing runs it). Every asyncpg call
of the producer (``execute``, ``fetch``, … and the pool's acquire and release, whose
reset is a query too) is timed from this process, by statement: round trips per
trigger, milliseconds per trigger, and what is left outside them (Python). For
comparison, on one held connection: two plain asyncpg floors (one autocommitted
INSERT; ``BEGIN; INSERT; NOTIFY; COMMIT``), and keyflow's own table and statements
arranged with fewer round trips (:func:`profile_designs`: what a trigger could cost).

``--workers W`` runs W keyflow worker processes meanwhile (then only keyflow's ways).
Only this process's client side is patched (:func:`install`); keyflow is not changed.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import asyncpg.pool

import keyflow
from bench.command import run
from bench.pg_common import (
    Config,
    Workers,
    connect,
    create_schema,
    drop_schema,
    percentile,
    schema_name,
)
from bench.pg_keyflow import storage_url
from keyflow.shared import sql

DSN = "postgresql://postgres@127.0.0.1:5432/test"

NAMES = {
    " ".join(value.split()): name
    for name, value in vars(sql).items()
    if name.isupper() and isinstance(value, str)
}
"""keyflow's shared-mode statements, by their text."""


@dataclass
class Trace:
    """The calls of one trigger: ``(label, seconds)``, outermost calls only."""

    calls: list[tuple[str, float]] = field(default_factory=list)
    depth: int = 0


CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("trace", default=None)


def label(query: object) -> str:
    """A short name for a statement: keyflow's constant's name, or its first words."""
    text = " ".join(str(query).split())
    if text in NAMES:
        return NAMES[text]
    if text.startswith("SELECT pg_advisory_unlock_all()"):
        return "pool reset (RESET ALL …)"
    return text[:48]


def _timed(name: Callable[[tuple[Any, ...]], str], method: Any) -> Any:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        trace = CURRENT.get()
        if trace is None:
            return await method(*args, **kwargs)
        trace.depth += 1
        start = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            trace.depth -= 1
            if trace.depth == 0:
                trace.calls.append((name(args), time.perf_counter() - start))

    return wrapper


def install() -> None:
    """Time asyncpg's calls in this process (those made while a :class:`Trace` is set)."""
    conn = asyncpg.connection.Connection
    for method in ("execute", "executemany", "fetch", "fetchval", "fetchrow"):
        setattr(conn, method, _timed(lambda args: label(args[1]), getattr(conn, method)))
    holder = asyncpg.pool.PoolConnectionHolder
    holder.acquire = _timed(lambda _: "pool acquire", holder.acquire)
    holder.release = _timed(lambda _: "pool release (reset)", holder.release)


@dataclass
class Profile:
    """One way of triggering, N times: each trigger's seconds, CPU seconds and calls."""

    name: str
    took: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)

    def report(self) -> None:
        """Print the latencies and the calls per trigger."""
        n = len(self.took)
        total = sum(self.took) / n * 1000
        print(
            f"\n{self.name}: {n:,} triggers, p50 {percentile(self.took, 0.5) * 1000:.2f} ms, "
            f"p95 {percentile(self.took, 0.95) * 1000:.2f} ms, mean {total:.2f} ms, "
            f"CPU {sum(self.cpu) / n * 1000:.2f} ms/trigger (this process)"
        )
        count: dict[str, int] = defaultdict(int)
        spent: dict[str, float] = defaultdict(float)
        for trace in self.traces:
            for name, seconds in trace.calls:
                count[name] += 1
                spent[name] += seconds
        calls = sum(count.values()) / n
        print(f"  {calls:.2f} asyncpg calls per trigger (each one round trip but the acquire)")
        for name in sorted(spent, key=lambda key: -spent[key]):
            ms = spent[name] / n * 1000
            print(f"    {name:<48} {count[name] / n:5.2f}x {ms:6.3f} ms {ms / total:6.1%}")
        outside = total - sum(spent.values()) / n * 1000
        print(f"    {'outside asyncpg calls (keyflow, the loop)':<48} {'':6} {outside:6.3f} ms")


async def measure(name: str, count: int, trigger: Callable[[int], Awaitable[object]]) -> Profile:
    """Call ``trigger(n)`` for n < ``count``, one after another, each traced."""
    profile = Profile(name)
    for n in range(count):
        trace = Trace()
        token = CURRENT.set(trace)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            await trigger(n)
        finally:
            profile.took.append(time.perf_counter() - start)
            profile.cpu.append(time.process_time() - cpu)
            CURRENT.reset(token)
        profile.traces.append(trace)
    return profile


async def _noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None


TITLES = {
    "none": "keyflow, no concurrency key",
    "distinct": 'keyflow, coalesce="queue", a distinct key each',
    "one": 'keyflow, coalesce="queue", one key',
}


async def profile_keyflow(config: Config, way: str) -> Profile:
    """Trigger ``noop`` ``config.jobs`` times ``way`` (``none``, ``distinct`` or ``one``).

    With ``config.workers`` keyflow worker processes running, if any.
    """
    dsn, count = config.dsn, config.jobs
    schema = schema_name("keyflow") + "_profile"
    await create_schema(dsn, schema)
    try:
        kf = keyflow.Keyflow(storage=storage_url(dsn, schema), workers=0, retention=count * 2)
        kf.job("noop")(_noop)
        await kf.start()
        try:
            async with Workers(config, "keyflow", schema) as workers:
                await workers.start(config.workers)
                profile = await _trigger(kf, count, way)
                workers.check()
                if config.workers:
                    profile.name += f", {config.workers} worker processes x {config.concurrency}"
                return profile
        finally:
            await kf.stop(grace=1)
    finally:
        await drop_schema(dsn, schema)


async def _trigger(kf: keyflow.Keyflow, count: int, way: str) -> Profile:
    for n in range(20):  # warm: statements prepared, pool connected
        await kf.trigger("noop", {"n": n}, concurrency_key=f"warm{n}", coalesce="queue")

    async def trigger(n: int) -> None:
        if way == "none":
            await kf.trigger("noop", {"n": n})
        else:
            key = f"k{n}" if way == "distinct" else "k"
            await kf.trigger("noop", {"n": n}, concurrency_key=key, coalesce="queue")

    return await measure(TITLES[way], count, trigger)


FLOOR_TABLE = """
CREATE TABLE jobs (id bigserial PRIMARY KEY, status text NOT NULL, payload jsonb NOT NULL)
"""


async def profile_floors(dsn: str, count: int) -> list[Profile]:
    """Plain asyncpg: an autocommitted INSERT; BEGIN, INSERT, NOTIFY, COMMIT."""
    schema = schema_name("bare") + "_profile"
    await create_schema(dsn, schema)
    try:
        conn = await connect(dsn, schema)
        try:
            await conn.execute(FLOOR_TABLE)
            insert = "INSERT INTO jobs (status, payload) VALUES ('queued', $1)"

            async def autocommit(n: int) -> None:
                await conn.execute(insert, json.dumps({"n": n}))

            async def transaction(n: int) -> None:
                async with conn.transaction():
                    await conn.execute(insert, json.dumps({"n": n}))
                    await conn.execute("SELECT pg_notify($1, $2)", schema, '{"w":1}')

            return [
                await measure("floor: one autocommitted INSERT", count, autocommit),
                await measure("floor: BEGIN, INSERT, NOTIFY, COMMIT", count, transaction),
            ]
        finally:
            await conn.close()
    finally:
        await drop_schema(dsn, schema)


LOCK_READ = (
    "CREATE FUNCTION bench_lock_read(keys text[]) "
    "RETURNS TABLE (data text, generation bigint, lease_owner text) LANGUAGE plpgsql AS $$ "
    "BEGIN "
    "INSERT INTO keyflow_lanes (key) SELECT k FROM unnest(keys) AS k ORDER BY k "
    "ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key; "
    "RETURN QUERY SELECT r.data::text, r.generation, r.lease_owner::text FROM keyflow_runs r "
    "WHERE r.concurrency_key = ANY(keys) AND r.status IN " + sql.UNFINISHED + " "
    "ORDER BY r.seq FOR UPDATE; "
    "END $$"
)
"""Lock lanes, then read their runs: one round trip (each statement of a PL/pgSQL
function sees what committed before it, as separate statements would)."""

INSERT_NOTIFY = f"WITH r AS ({sql.INSERT_RUN} RETURNING 1) SELECT pg_notify($12, $13) FROM r"
"""A run's INSERT and its NOTIFY in one statement."""


async def profile_designs(dsn: str, count: int) -> list[Profile]:
    """keyflow's own table and statements on one held connection, fewer round trips.

    What a trigger could cost: no pool reset, the INSERT and the NOTIFY in one
    statement, a keyless trigger autocommitted, lanes locked and read in one call.
    """
    schema = schema_name("keyflow") + "_designs"
    await create_schema(dsn, schema)
    try:
        kf = keyflow.Keyflow(storage=storage_url(dsn, schema), workers=0)
        kf.job("noop")(_noop)
        await kf.start()
        try:
            await kf.trigger("noop", {"n": 0})
        finally:
            await kf.stop(grace=1)
        conn = await connect(dsn, schema)
        try:
            row = list(await conn.fetchrow(f"SELECT {sql.COLUMNS} FROM keyflow_runs LIMIT 1"))
            await conn.execute(LOCK_READ)
            note = '{"w":1,"e":["x"]}'

            def params(n: int, key: str | None) -> list[Any]:
                return [f"{schema}-{n}", row[1], key, *row[3:]]

            async def keyless(n: int) -> None:
                await conn.execute(INSERT_NOTIFY, *params(n, None), schema, note)

            async def keyed_today(n: int) -> None:
                key = f"a{n}"
                async with conn.transaction():
                    await conn.execute(sql.LOCK_LANES, [key])
                    await conn.fetch(sql.LANE_RUNS, [key])
                    await conn.execute(sql.INSERT_RUN, *params(n + count, key))
                    await conn.execute(sql.NOTIFY, schema, note)

            async def keyed_four(n: int) -> None:
                key = f"b{n}"
                async with conn.transaction():
                    await conn.fetch("SELECT * FROM bench_lock_read($1)", [key])
                    await conn.execute(INSERT_NOTIFY, *params(n + 2 * count, key), schema, note)

            return [
                await measure("design: keyless, INSERT+NOTIFY, autocommit", count, keyless),
                await measure("design: keyed, today's statements, no pool", count, keyed_today),
                await measure("design: keyed, lock+read, INSERT+NOTIFY", count, keyed_four),
            ]
        finally:
            await conn.close()
    finally:
        await drop_schema(dsn, schema)


async def main(args: argparse.Namespace) -> int:
    install()
    config = Config(
        dsn=args.dsn,
        jobs=args.triggers,
        workers=args.workers,
        concurrency=args.concurrency,
        timeout=600.0,
        log_dir=args.dir,
    )
    print(f"{args.triggers:,} sequential triggers each, database {args.dsn}")
    profiles = []
    if not args.workers:
        profiles += await profile_floors(args.dsn, args.triggers)
        profiles += await profile_designs(args.dsn, args.triggers)
    for way in args.ways:
        profiles.append(await profile_keyflow(config, way))
    for profile in profiles:
        profile.report()
    return 0


def cli() -> None:
    """Parse arguments and profile."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DSN, help=f"the database (default {DSN})")
    parser.add_argument("--triggers", type=int, default=2_000, help="triggers per way")
    parser.add_argument(
        "--ways",
        nargs="+",
        choices=["none", "distinct", "one"],
        default=["none", "distinct", "one"],
        help="which ways to trigger (default all three)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="keyflow worker processes running meanwhile (default none; then no floors)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="jobs at once per worker")
    run(parser, main)


if __name__ == "__main__":
    cli()
