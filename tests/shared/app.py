"""The application ``keyflow worker --app tests.shared.app:kf`` runs in the tests.

Every job logs the start and the end of each attempt with the database's clock
(``clock_timestamp()``) into ``kf_log`` of the schema it runs on, which the checker of
``tests/test_shared_processes.py`` reads. ``$KF_TEST_HOLD`` makes ``hold`` runs wait
for ``hold_until`` in their input (SIGKILL and SIGSTOP tests).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg

import keyflow
from keyflow import Coalesce

LOG_TABLE = (
    "CREATE TABLE IF NOT EXISTS kf_log (run_id text, job text, key text, attempt int, "
    "event text, pid int, at timestamptz DEFAULT clock_timestamp())"
)

kf = keyflow.Keyflow(workers=4, grace=2.0, cancel_grace=1.0)


class _Log:
    """One connection per process to the log table (made at the first run)."""

    def __init__(self) -> None:
        self.conn: asyncpg.Connection | None = None
        self.lock = asyncio.Lock()

    async def write(self, ctx: keyflow.RunContext, event: str) -> None:
        # Shielded: a cancel of the handler never cuts a log line in half; the end line
        # waits (on the lock) for the start line.
        await asyncio.shield(self._write(ctx, event))

    async def _write(self, ctx: keyflow.RunContext, event: str) -> None:
        async with self.lock:
            if self.conn is None:
                schema = os.environ["KF_TEST_SCHEMA"]
                self.conn = await asyncpg.connect(
                    os.environ["KF_TEST_DSN"], server_settings={"search_path": schema}
                )
            await self.conn.execute(
                "INSERT INTO kf_log (run_id, job, key, attempt, event, pid) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                ctx.run_id,
                ctx.job,
                ctx.concurrency_key,
                ctx.attempt,
                event,
                os.getpid(),
            )


_log = _Log()


async def _work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    try:
        await _log.write(ctx, "start")
        await asyncio.sleep(float(input.get("work", 0.005)))
    finally:
        await _log.write(ctx, "end")


def _key(input: dict[str, Any]) -> str:
    return str(input["key"])


@kf.job("queue1", concurrency_key=_key, coalesce="queue")
async def queue1(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    """The barrier consumer: one follow-up at most."""
    await _work(ctx, input)


@kf.job("queue3", concurrency_key=_key, coalesce=Coalesce("queue", max_queued=3))
async def queue3(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    """Up to three follow-ups."""
    await _work(ctx, input)


@kf.job("skip", concurrency_key=_key, coalesce="skip")
async def skip(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    """Joins whatever run of its job is unfinished."""
    await _work(ctx, input)


@kf.job("cancel", concurrency_key=_key, coalesce="cancel")
async def cancel(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    """Replaces its job's runs in the lane."""
    await _work(ctx, input)


@kf.job("plain", concurrency_key=_key)
async def plain(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    """Every trigger a run, one at a time per key."""
    await _work(ctx, input)


@kf.job("hold", concurrency_key=_key, coalesce="queue")
async def hold(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    """Runs until the database's clock passes ``hold_until`` (epoch seconds)."""
    await _log.write(ctx, "start")
    until = float(input["hold_until"])
    while True:
        conn = _log.conn
        assert conn is not None
        now = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())")
        if float(now) >= until:
            break
        await asyncio.sleep(0.05)
    await _log.write(ctx, "end")
