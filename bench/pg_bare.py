"""The bare loop baseline: a jobs table, ``FOR UPDATE SKIP LOCKED`` claims, LISTEN/NOTIFY.

The least a PostgreSQL job queue can do, written competently: the producer INSERTs one
row per job (autocommit; a statement trigger NOTIFYs the schema's channel); each worker
process runs ``concurrency`` claimers, each on its own connection, that claim the oldest
queued row (``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1)``), run a
no-op, and mark it done. A notification wakes one idle claimer of each process; a
claimer that got a job claims again at once; an idle one also claims once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from bench.pg_common import (
    Config,
    Progress,
    Result,
    Workers,
    connect,
    create_schema,
    drop_schema,
    measure,
)

IDLE_POLL = 1.0
"""Seconds an idle claimer waits for a notification before it claims anyway."""

TABLE = """
CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    status text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE INDEX jobs_queued ON jobs (id) WHERE status = 'queued';
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA, '');
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();
"""

INSERT = "INSERT INTO jobs (status, payload) VALUES ('queued', $1)"

CLAIM = """
UPDATE jobs SET status = 'running', started_at = clock_timestamp()
WHERE id = (
    SELECT id FROM jobs WHERE status = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1
)
RETURNING id, payload
"""

FINISH = "UPDATE jobs SET status = 'done', finished_at = clock_timestamp() WHERE id = $1"

DONE = "SELECT count(*) FROM jobs WHERE status = 'done'"

TIMINGS = """
SELECT extract(epoch FROM created_at)::float8, extract(epoch FROM started_at)::float8,
       extract(epoch FROM finished_at)::float8
FROM jobs WHERE status = 'done'
"""


class Wakeups:
    """Wakes one idle claimer per notification; remembers those nobody was idle for."""

    def __init__(self, limit: int) -> None:
        self._idle: deque[asyncio.Future[None]] = deque()
        self._pending = 0
        self._limit = limit

    def notify(self, *_: object) -> None:
        """A job was queued (asyncpg's listener callback)."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        # Every claimer is busy, or between an empty claim and its wait: the next to
        # wait claims again at once.
        self._pending = min(self._pending + 1, self._limit)

    async def wait(self, timeout: float) -> None:
        """Until a notification (or one missed meanwhile), at most ``timeout`` seconds."""
        if self._pending:
            self._pending -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._idle.remove(waiter)


async def _noop(payload: str) -> None:
    return None


async def _claimer(conn: Any, wakeups: Wakeups) -> None:
    while True:
        row = await conn.fetchrow(CLAIM)
        if row is None:
            await wakeups.wait(IDLE_POLL)
            continue
        await _noop(row["payload"])
        await conn.execute(FINISH, row["id"])


async def serve(
    dsn: str, schema: str, concurrency: int, ready: Callable[[], None], stop: asyncio.Future[None]
) -> None:
    """One worker process: ``concurrency`` claimers until ``stop`` is done."""
    wakeups = Wakeups(concurrency)
    listener = await connect(dsn, schema)
    conns = [await connect(dsn, schema) for _ in range(concurrency)]
    tasks: list[asyncio.Task[None]] = []
    try:
        await listener.add_listener(schema, wakeups.notify)
        tasks = [asyncio.create_task(_claimer(conn, wakeups)) for conn in conns]
        ready()
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a claimer's failure ends the process, with its error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in [listener, *conns]:
            await conn.close(timeout=5)


async def run(config: Config, schema: str) -> Result:
    """Measure the bare loop in ``schema`` (created here, dropped after)."""
    result = Result("bare loop")
    await create_schema(config.dsn, schema)
    try:
        conn = await connect(config.dsn, schema)
        try:
            await conn.execute(TABLE)

            async def insert(n: int) -> None:
                await conn.execute(INSERT, json.dumps({"n": n}), timeout=10)

            async with Workers(config, "bare", schema) as workers:
                await workers.start(config.workers)
                await measure(
                    config,
                    result,
                    progress=Progress(DONE, TIMINGS),
                    workers=workers,
                    schema=schema,
                    producer=insert,
                )
        finally:
            await conn.close()
    finally:
        await drop_schema(config.dsn, schema)
    return result
