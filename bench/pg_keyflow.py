"""keyflow on PostgreSQL shared by several processes: W workers, one triggering producer.

Each worker process runs ``Keyflow(storage=URL, workers=C)`` with a no-op job ``noop``
(keyflow's shared PostgreSQL mode, the default for ``postgresql://`` URLs); the producer
opens the same URL with ``workers=0`` (it only triggers: it runs nothing) and triggers
``noop`` N times, one after another. The numbers come from the ``keyflow_runs`` rows
(``created_at``, ``started_at``, ``finished_at``: epoch seconds).

A second row, :func:`run_triggers_only`, is the producer alone: no worker process, so
nothing claims, and its trigger latencies are what a trigger costs by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import asyncpg

import keyflow
from bench.pg_common import (
    BenchError,
    Config,
    Progress,
    Result,
    Workers,
    create_schema,
    drop_schema,
    fill_triggers,
    measure,
    produce,
)
from bench.pg_cpu import Cpu

DONE = "SELECT count(*) FROM keyflow_runs WHERE status = 'completed'"

TIMINGS = """
SELECT created_at, started_at, finished_at FROM keyflow_runs WHERE status = 'completed'
"""

TRIGGERS_ONLY = "keyflow sequential trigger, no workers running"
"""The name of :func:`run_triggers_only`'s row."""

OPEN_TIMEOUT = 30.0
"""Seconds opening (or closing) a Keyflow may take."""


class KeyflowProgress(Progress):
    """Reads ``keyflow_runs``; through keyflow's API if its columns are not (or no more) there.

    The table is read first: it is what every process writes, whatever the producer's
    scheduler holds in memory.
    """

    def __init__(self, kf: keyflow.Keyflow) -> None:
        super().__init__(DONE, TIMINGS)
        self.kf = kf

    async def done(self, conn: Any) -> int:
        """Finished runs of ``noop``."""
        try:
            return await super().done(conn)
        except asyncpg.PostgresError:
            return await self.kf.count_runs(job="noop", status="completed")

    async def timings(self, conn: Any) -> Sequence[Any]:
        """``(created, started, finished)`` of each finished run of ``noop``."""
        try:
            return await super().timings(conn)
        except asyncpg.PostgresError:
            runs = await self.kf.list_runs(job="noop", status="completed", limit=10**9)
            return [(run.created_at, run.started_at, run.finished_at) for run in runs]


def storage_url(dsn: str, schema: str) -> str:
    """keyflow's URL for ``schema`` of the database at ``dsn``."""
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={quote(schema)}"


async def _noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None


def scheduler(dsn: str, schema: str, workers: int, jobs: int) -> keyflow.Keyflow:
    """A Keyflow on ``schema`` with the no-op job, keeping every run of the benchmark."""
    kf = keyflow.Keyflow(storage=storage_url(dsn, schema), workers=workers, retention=jobs + 10_000)
    kf.job("noop")(_noop)
    return kf


async def serve(
    dsn: str,
    schema: str,
    concurrency: int,
    jobs: int,
    ready: Callable[[], None],
    stop: asyncio.Future[None],
) -> None:
    """One worker process: a Keyflow with ``concurrency`` workers until ``stop`` is done."""
    kf = scheduler(dsn, schema, concurrency, jobs)
    await asyncio.wait_for(kf.start(), OPEN_TIMEOUT)
    try:
        ready()
        await stop
    finally:
        await asyncio.wait_for(kf.stop(grace=1), OPEN_TIMEOUT)


async def _producer(config: Config, schema: str) -> keyflow.Keyflow:
    """The producer's Keyflow on ``schema``, started: ``workers=0``, it only triggers."""
    kf = scheduler(config.dsn, schema, 0, config.jobs)
    try:
        await asyncio.wait_for(kf.start(), OPEN_TIMEOUT)
    except keyflow.KeyflowError as exc:
        raise BenchError(f"producer: {type(exc).__name__}: {exc}") from exc
    return kf


async def run(config: Config, schema: str) -> Result:
    """Measure keyflow in ``schema`` (created here, dropped after)."""
    result = Result("keyflow")
    await create_schema(config.dsn, schema)
    try:
        async with Workers(config, "keyflow", schema) as workers:
            # The first creates keyflow's tables; then the others join it.
            await workers.start(1)
            await workers.start(config.workers - 1)
            kf = await _producer(config, schema)
            try:

                async def trigger(n: int) -> None:
                    await kf.trigger("noop", {"n": n})

                await measure(
                    config,
                    result,
                    progress=KeyflowProgress(kf),
                    workers=workers,
                    schema=schema,
                    producer=trigger,
                )
            finally:
                await asyncio.wait_for(kf.stop(grace=1), OPEN_TIMEOUT)
    finally:
        await drop_schema(config.dsn, schema)
    return result


async def run_triggers_only(config: Config, schema: str) -> Result:
    """The producer alone in ``schema``: N sequential triggers, no worker process.

    Nothing runs, so only the trigger columns (and the wall time of the N triggers) are
    filled; the runs are left pending, and dropped with the schema.
    """
    result = Result(TRIGGERS_ONLY)
    await create_schema(config.dsn, schema)
    try:
        kf = await _producer(config, schema)
        try:

            async def trigger(n: int) -> None:
                await kf.trigger("noop", {"n": n})

            start, cpu = time.monotonic(), Cpu.now(())
            took = await asyncio.wait_for(produce(config.jobs, trigger), config.timeout)
            result.wall = time.monotonic() - start
            result.notes.append(cpu.per_job(Cpu.now(()), config.jobs))
            fill_triggers(result, took)
            pending = await kf.count_runs(job="noop", status="pending")
            if pending != config.jobs:
                raise BenchError(f"{pending}/{config.jobs} runs pending after the triggers")
        finally:
            await asyncio.wait_for(kf.stop(grace=1), OPEN_TIMEOUT)
    finally:
        await drop_schema(config.dsn, schema)
    return result
