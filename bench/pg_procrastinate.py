"""The procrastinate baseline: its own schema, W worker processes, one deferring producer.

procrastinate is not a keyflow dependency: ``make bench-postgres`` installs it into
``.venv-bench``; without it the row is skipped. It is imported here only, lazily, and
typed as ``Any``. Its tables, types and functions go into the benchmark's schema (the
connections' ``search_path``); it keeps every job (``delete_jobs="never"``), so the
numbers come from ``procrastinate_events``: ``deferred``, ``started`` and ``succeeded``
times of each job (the database's ``now()``: its transaction's start).
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from bench.pg_common import Config, Progress, Result, Workers, create_schema, drop_schema, measure

DONE = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"

TIMINGS = """
SELECT extract(epoch FROM min(at) FILTER (WHERE type = 'deferred'))::float8,
       extract(epoch FROM min(at) FILTER (WHERE type = 'started'))::float8,
       extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded'))::float8
FROM procrastinate_events
GROUP BY job_id
HAVING count(*) FILTER (WHERE type = 'succeeded') > 0
"""

SETTLE = 1.0
"""Seconds a worker is given to register and LISTEN before it says it is ready."""


def load() -> Any:
    """The procrastinate module, or None when it is not installed."""
    try:
        return importlib.import_module("procrastinate")
    except ImportError:
        return None


def version() -> str:
    """procrastinate's version, for the report."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("procrastinate")
    except PackageNotFoundError:
        return "?"


async def _noop(n: int) -> None:
    return None


def app(dsn: str, schema: str, connections: int) -> tuple[Any, Any]:
    """A procrastinate App on ``schema`` with the no-op task; (app, task)."""
    procrastinate = load()
    connector = procrastinate.PsycopgConnector(
        conninfo=dsn,
        kwargs={"options": f"-c search_path={schema}"},
        min_size=1,
        max_size=connections,
    )
    application = procrastinate.App(connector=connector)
    task = application.task(name="noop")(_noop)
    return application, task


async def serve(
    dsn: str, schema: str, concurrency: int, ready: Any, stop: asyncio.Future[None]
) -> None:
    """One worker process: a procrastinate worker of ``concurrency`` until ``stop``."""
    application, _ = app(dsn, schema, concurrency + 4)
    async with application.open_async():
        worker = asyncio.create_task(
            application.run_worker_async(
                concurrency=concurrency,
                wait=True,
                listen_notify=True,
                delete_jobs="never",
                install_signal_handlers=False,
            )
        )
        try:
            await asyncio.wait([worker], timeout=SETTLE)
            if worker.done():
                worker.result()  # its failure, if any
                raise RuntimeError("the procrastinate worker stopped at once")
            ready()
            await asyncio.wait([stop, worker], return_when=asyncio.FIRST_COMPLETED)
            if worker.done():
                worker.result()
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)


async def run(config: Config, schema: str) -> Result:
    """Measure procrastinate in ``schema`` (created here, dropped after)."""
    result = Result(f"procrastinate {version()}")
    await create_schema(config.dsn, schema)
    try:
        application, task = app(config.dsn, schema, 2)
        async with application.open_async():
            await application.schema_manager.apply_schema_async()

            async def defer(n: int) -> None:
                await task.defer_async(n=n)

            async with Workers(config, "procrastinate", schema) as workers:
                await workers.start(config.workers)
                await measure(
                    config,
                    result,
                    progress=Progress(DONE, TIMINGS),
                    workers=workers,
                    schema=schema,
                    producer=defer,
                )
    finally:
        await drop_schema(config.dsn, schema)
    return result
