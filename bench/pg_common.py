"""What the PostgreSQL benchmark's rows share: settings, schemas, worker processes, numbers.

Every system is measured the same way: a fresh schema, W worker processes started with
``python -m bench.pg_worker`` (each prints ``ready`` once it takes work, and stops when its
stdin closes), one sequential producer in this process, then a poll of the system's own
table until N jobs are finished. The numbers come from the rows' timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import asyncpg

from bench.pg_cpu import Cpu

ROOT = Path(__file__).resolve().parent.parent
"""The repository: the worker processes run from there (``python -m bench.pg_worker``)."""

READY_TIMEOUT = 30.0
"""Seconds a worker process may take to start taking work."""

STOP_TIMEOUT = 10.0
"""Seconds a worker process has to exit once its stdin closes, before it is killed."""

POLL = 0.02
"""Seconds between two counts of finished jobs."""


@dataclass(frozen=True)
class Config:
    """What one run of the benchmark measures with."""

    dsn: str
    jobs: int
    workers: int
    concurrency: int
    timeout: float
    log_dir: Path


@dataclass
class Result:
    """One system's row: throughput and latencies (milliseconds), or why it failed."""

    name: str
    jobs_per_second: float = math.nan
    start_p50: float = math.nan
    start_p95: float = math.nan
    trigger_p50: float = math.nan
    trigger_p95: float = math.nan
    wall: float = math.nan
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether it was measured."""
        return self.error is None


class BenchError(Exception):
    """A row cannot be measured: a worker failed, or the jobs did not finish in time."""


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank), NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[rank]


def schema_name(system: str) -> str:
    """``kf_bench_<pid>_<system>``: unique to this run and system (``-`` made ``_``)."""
    return f"kf_bench_{os.getpid()}_{system.replace('-', '_')}"


async def connect(dsn: str, schema: str | None = None) -> Any:
    """An asyncpg connection, its search path on ``schema`` when given."""
    settings = {"search_path": schema} if schema else {}
    return await asyncio.wait_for(asyncpg.connect(dsn, server_settings=settings), 10)


STALE = re.compile(
    r"kf_bench_(\d+)_(bare|procrastinate|keyflow|keyflow_triggers|storage_raw|storage_single)"
)
"""The schemas this benchmark makes: the pid of the run that made one is in its name."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def drop_stale_schemas(dsn: str) -> list[str]:
    """Drop the schemas of earlier runs killed before they could (a local database only).

    Only names of :data:`STALE`'s form whose process is gone from this machine; with a
    database elsewhere a pid says nothing, and nothing is dropped.
    """
    if urlsplit(dsn).hostname not in ("127.0.0.1", "localhost", "::1", None):
        return []
    conn = await connect(dsn)
    try:
        names = [row[0] for row in await conn.fetch("SELECT nspname FROM pg_namespace")]
    finally:
        await conn.close()
    stale = []
    for name in names:
        match = STALE.fullmatch(name)
        if match and not _alive(int(match[1])):
            await drop_schema(dsn, name)
            stale.append(name)
    return stale


async def create_schema(dsn: str, schema: str) -> None:
    """Create ``schema`` (dropping a leftover of the same name first)."""
    conn = await connect(dsn)
    try:
        await conn.execute("SET lock_timeout = '10s'")
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()


async def drop_schema(dsn: str, schema: str) -> None:
    """Drop ``schema`` and everything in it; a failure is only printed."""
    try:
        conn = await connect(dsn)
        try:
            await conn.execute("SET lock_timeout = '10s'")
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"  (could not drop schema {schema}: {exc})", file=sys.stderr)


class Workers:
    """W worker processes of one system; stopped (killed if need be) on exit."""

    def __init__(self, config: Config, system: str, schema: str) -> None:
        self.config = config
        self.system = system
        self.schema = schema
        self._procs: list[asyncio.subprocess.Process] = []
        self._logs: list[Path] = []
        self._files: list[IO[bytes]] = []

    async def __aenter__(self) -> Workers:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self, count: int) -> None:
        """Start ``count`` more processes and wait until each is ready.

        Raises:
            BenchError: a process failed to start (its message), or took too long.
        """
        first = len(self._procs)
        for index in range(first, first + count):
            log = self.config.log_dir / f"{self.schema}-worker{index}.log"
            handle = log.open("wb")
            self._logs.append(log)
            self._files.append(handle)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.pg_worker",
                self.system,
                "--dsn",
                self.config.dsn,
                "--schema",
                self.schema,
                "--concurrency",
                str(self.config.concurrency),
                "--jobs",
                str(self.config.jobs),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=handle,
                cwd=ROOT,
            )
            self._procs.append(proc)
        for index in range(first, first + count):
            await self._ready(index)

    async def _ready(self, index: int) -> None:
        proc = self._procs[index]
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            raise BenchError(f"worker {index} not ready after {READY_TIMEOUT:.0f} s") from None
        text = line.decode(errors="replace").strip()
        if text == "ready":
            return
        if not text:  # it died before it could say why: the end of its stderr
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            tail = self._logs[index].read_text(errors="replace").strip().splitlines()[-1:]
            text = tail[0] if tail else f"exited with {proc.returncode}"
        raise BenchError(f"worker {index}: {text.removeprefix('error: ')}")

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [proc.pid for proc in self._procs]

    def check(self) -> None:
        """Raise if a worker process has exited.

        Raises:
            BenchError: one has (its exit code and last line of stderr).
        """
        for index, proc in enumerate(self._procs):
            if proc.returncode is not None:
                lines = self._logs[index].read_text(errors="replace").strip().splitlines()
                last = lines[-1] if lines else ""
                raise BenchError(f"worker {index} exited ({proc.returncode}) {last}".strip())

    async def stop(self) -> None:
        """Close every process's stdin (its signal to stop); kill those that linger."""
        for proc in self._procs:
            if proc.stdin is not None and proc.returncode is None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._procs.clear()
        for handle in self._files:
            handle.close()
        self._files.clear()


class Progress:
    """How a system's finished jobs are read: a count, and their timestamps."""

    def __init__(self, done_sql: str, timings_sql: str) -> None:
        self.done_sql = done_sql
        self.timings_sql = timings_sql

    async def done(self, conn: Any) -> int:
        """How many jobs are finished (``done_sql``: one count)."""
        return int(await conn.fetchval(self.done_sql, timeout=10))

    async def timings(self, conn: Any) -> Sequence[Any]:
        """``(created, started, finished)`` epoch seconds of each finished job."""
        return list(await conn.fetch(self.timings_sql, timeout=30))


async def wait_done(
    conn: Any, progress: Progress, jobs: int, timeout: float, workers: Workers
) -> float:
    """Poll ``progress`` until ``jobs`` are finished; the monotonic time they were.

    Raises:
        BenchError: ``timeout`` seconds passed first, or a worker process exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        done = await progress.done(conn)
        if done >= jobs:
            return time.monotonic()
        workers.check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s with {done}/{jobs} jobs finished")
        await asyncio.sleep(POLL)


async def produce(jobs: int, trigger: Callable[[int], Awaitable[object]]) -> list[float]:
    """Call ``trigger(n)`` for n < ``jobs``, one after another; each call's seconds."""
    took = []
    for n in range(jobs):
        start = time.perf_counter()
        await trigger(n)
        took.append(time.perf_counter() - start)
    return took


def fill(result: Result, timings: Sequence[Any], triggers: Sequence[float], wall: float) -> None:
    """Set ``result``'s numbers from ``(created, started, finished)`` epoch seconds rows.

    jobs/s is end to end: the first job's creation to the last one's finish, by the
    timestamps the rows carry.
    """
    created = [row[0] for row in timings]
    waits = [(row[1] - row[0]) * 1000 for row in timings if row[1] is not None]
    span = max(row[2] for row in timings) - min(created)
    result.jobs_per_second = len(timings) / span if span > 0 else math.inf
    result.start_p50 = percentile(waits, 0.50)
    result.start_p95 = percentile(waits, 0.95)
    fill_triggers(result, triggers)
    result.wall = wall


def fill_triggers(result: Result, triggers: Sequence[float]) -> None:
    """Set ``result``'s trigger latencies from each trigger's seconds."""
    result.trigger_p50 = percentile(triggers, 0.50) * 1000
    result.trigger_p95 = percentile(triggers, 0.95) * 1000


async def measure(
    config: Config,
    result: Result,
    *,
    progress: Progress,
    workers: Workers,
    schema: str,
    producer: Callable[[int], Awaitable[object]],
) -> None:
    """Produce ``config.jobs`` jobs, wait for the workers to finish them, fill ``result``.

    Raises:
        BenchError: they did not finish in time, or a worker process exited.
    """
    conn = await connect(config.dsn, schema)
    try:
        start, cpu = time.monotonic(), Cpu.now(workers.pids)
        triggers = await asyncio.wait_for(produce(config.jobs, producer), config.timeout)
        workers.check()
        end = await wait_done(
            conn, progress, config.jobs, config.timeout - (time.monotonic() - start), workers
        )
        result.notes.append(cpu.per_job(Cpu.now(workers.pids), config.jobs))
        timings = await progress.timings(conn)
    finally:
        await conn.close()
    fill(result, timings, triggers, end - start)
