"""PostgreSQL's single-writer mode (``mode=single``) against a raw one-row INSERT (issue #15).

Part of ``python -m bench.storage --part postgres`` (and of ``all`` when the database
answers). The baseline is measured against the same server in the same run: asyncpg, one
prepared ``INSERT`` per statement in autocommit, awaited in turn: one round trip and one
commit per row, the least a durable acknowledged write can cost. keyflow writes a batch
in one statement (one round trip) too, so a sequential producer should come close to it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from bench.pg_common import connect, create_schema, drop_schema

DSN = "postgresql://postgres@127.0.0.1:5432/test"
"""The benchmark's database (the machine's local server)."""


async def raw_insert_rows_per_second(dsn: str, schema: str, rows: int) -> float:
    """One row per INSERT (autocommit, prepared), each awaited before the next; rows/s."""
    await create_schema(dsn, schema)
    conn = await connect(dsn, schema)
    try:
        await conn.execute("CREATE TABLE runs (id text PRIMARY KEY, data text NOT NULL)")
        insert = await conn.prepare("INSERT INTO runs (id, data) VALUES ($1, $2)")
        payload = '{"job":"noop","input":{"n":1},"status":"queued"}'
        start = time.perf_counter()
        for n in range(rows):
            await insert.fetchval(f"r{n}", payload)
        return rows / (time.perf_counter() - start)
    finally:
        await conn.close()
        await drop_schema(dsn, schema)


@asynccontextmanager
async def single_mode_url(dsn: str, schema: str) -> AsyncIterator[str]:
    """A fresh schema for keyflow's single-writer mode, dropped after; its URL."""
    await create_schema(dsn, schema)
    try:
        yield f"{dsn}?schema={schema}&mode=single"
    finally:
        await drop_schema(dsn, schema)


async def best_in_single_mode(
    dsn: str, schema: str, measure: Callable[[str, int], Awaitable[float]], count: int, rounds: int
) -> float:
    """The best of ``rounds`` runs of ``measure(url, count)``, each in a fresh schema."""
    rates = []
    for _ in range(rounds):
        async with single_mode_url(dsn, schema) as url:
            rates.append(await measure(url, count))
    return max(rates)


async def reachable(dsn: str) -> bool:
    """Does the benchmark's database answer?"""
    try:
        conn = await connect(dsn)
    except (OSError, TimeoutError) as exc:
        print(f"  (PostgreSQL at {dsn} does not answer: {exc}; its part is skipped)")
        return False
    except Exception as exc:  # asyncpg's own errors: no server to measure against
        print(f"  (PostgreSQL at {dsn} refused: {exc}; its part is skipped)")
        return False
    await conn.close()
    return True
