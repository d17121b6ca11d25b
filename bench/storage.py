"""Durable storage benchmarks (issues #3, #15): SQLite and JSON file against raw primitives.

Run with ``make bench-storage`` (or ``python -m bench.storage [--part sequential]``). The
baselines are measured on the same disk in the same run: raw aiosqlite, one row INSERT +
COMMIT per transaction (WAL, ``synchronous=NORMAL``) and 100 rows per transaction; and an
append + flush + fsync of one journal line.

* one sequential producer: acknowledged durable triggers/s (SQLite against the one-row
  commit, JSON against the fsync), and end-to-end no-op jobs/s with 100 workers (also
  against huey's SQLite queue, a benchmark-only peer: ``bench/storage_huey.py``);
* PostgreSQL's single-writer mode, one sequential producer, against a raw one-row INSERT
  (``bench/storage_postgres.py``; skipped when the database does not answer);
* acknowledged durable triggers/s with 100 concurrent producers (the runs are delayed,
  so the number is the trigger path alone);
* end-to-end no-op jobs/s on SQLite (trigger, run, finish: every change written);
* triggers/s with 1,000 and with 100,000 retained runs: one commit must not cost more
  when the storage holds more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite

import keyflow
from bench import storage_huey, storage_postgres
from bench.command import run
from bench.pg_common import schema_name
from keyflow.records import RunRecord
from keyflow.runs import RunStatus
from keyflow.storage_backends import WriteBatch, open_backend
from keyflow.storage_backends.writer_thread import WriterThread

PRODUCERS = 100

JOURNAL_LINE = b'{"op":"run","id":"r000001","job":"noop","input":{"n":1},"status":"queued"}\n'
"""The JSON baselines' line: about the size of a one-run journal line."""


async def raw_sqlite_rows_per_second(path: Path, rows: int, per_transaction: int) -> float:
    """The baseline: INSERT + COMMIT, ``per_transaction`` rows each, WAL/NORMAL."""
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, data TEXT NOT NULL)")
        payload = '{"job":"noop","input":{"n":1},"status":"queued"}'
        start = time.perf_counter()
        for first in range(0, rows, per_transaction):
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(
                "INSERT INTO runs (id, data) VALUES (?, ?)",
                [(f"r{n}", payload) for n in range(first, first + per_transaction)],
            )
            await db.execute("COMMIT")
        return rows / (time.perf_counter() - start)


def raw_append_fsync_per_second(path: Path, lines: int) -> float:
    """The JSON baseline: append one journal-sized line, flush, fsync; lines/s."""
    with path.open("ab") as out:
        start = time.perf_counter()
        for _ in range(lines):
            out.write(JOURNAL_LINE)
            out.flush()
            os.fsync(out.fileno())
        return lines / (time.perf_counter() - start)


async def hop_append_fsync_per_second(path: Path, lines: int) -> float:
    """The ceiling of an event loop that never blocks on the disk: each line's append +
    fsync on a thread (keyflow's own writer thread), awaited in turn; lines/s."""
    thread = WriterThread("bench-appender")
    thread.start()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append() -> None:
        os.write(fd, JOURNAL_LINE)
        os.fsync(fd)

    try:
        start = time.perf_counter()
        for _ in range(lines):
            await thread.call(append)
        return lines / (time.perf_counter() - start)
    finally:
        thread.stop()
        os.close(fd)


async def _noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None


@contextlib.asynccontextmanager
async def running(url: str, retention: int, workers: int = 1) -> AsyncIterator[keyflow.Keyflow]:
    """A started scheduler with the no-op job, stopped after (running runs cut short)."""
    kf = keyflow.Keyflow(storage=url, retention=retention, workers=workers)
    kf.job("noop")(_noop)
    await kf.start()
    try:
        yield kf
    finally:
        await kf.stop(grace=0)


async def sequential_triggers_per_second(url: str, count: int) -> float:
    """One producer awaiting each durable trigger in turn (delayed runs); triggers/s."""
    async with running(url, count * 2) as kf:
        start = time.perf_counter()
        for n in range(count):
            await kf.trigger("noop", {"n": n}, concurrency_key=f"k{n % 50}", delay=3_600)
        return count / (time.perf_counter() - start)


async def sequential_end_to_end_jobs_per_second(url: str, count: int) -> float:
    """One producer triggering no-op jobs in turn while 100 workers run them; jobs/s."""
    async with running(url, count * 2, workers=100) as kf:
        start = time.perf_counter()
        for n in range(count):
            await kf.trigger("noop", {"n": n})
        await kf.run_until_idle()
        return count / (time.perf_counter() - start)


async def _produce(kf: keyflow.Keyflow, count: int, *, delay: float) -> float:
    """``count`` triggers from PRODUCERS concurrent tasks; acknowledged triggers/s."""
    per_producer = count // PRODUCERS

    async def producer(p: int) -> None:
        for n in range(per_producer):
            await kf.trigger("noop", {"p": p, "n": n}, concurrency_key=f"k{p}", delay=delay)

    start = time.perf_counter()
    await asyncio.gather(*(producer(p) for p in range(PRODUCERS)))
    return per_producer * PRODUCERS / (time.perf_counter() - start)


async def triggers_per_second(url: str, count: int, retention: int = 1_000_000) -> float:
    """Acknowledged durable triggers/s (delayed runs: nothing executes meanwhile)."""
    async with running(url, retention) as kf:
        return await _produce(kf, count, delay=3_600)


async def end_to_end_jobs_per_second(url: str, count: int) -> float:
    """Trigger ``count`` no-op jobs from 100 producers and run them all; jobs/s."""
    async with running(url, count * 2, workers=20) as kf:
        start = time.perf_counter()
        await _produce(kf, count, delay=0)
        await kf.run_until_idle()
        return count / (time.perf_counter() - start)


async def fill(url: str, finished: int) -> None:
    """Store ``finished`` finished runs, written directly in large batches."""
    backend = open_backend(url, retention=10_000_000)
    await backend.open()
    try:
        for first in range(0, finished, 5_000):
            batch = []
            for n in range(first, min(finished, first + 5_000)):
                record = RunRecord(
                    f"old-{n}", "noop", f"k{n % 1000}", RunStatus.QUEUED, {}, 1, 1, 1
                )
                record.status = RunStatus.COMPLETED
                record.finished_at = 2.0
                batch.append(record)
            await backend.write(WriteBatch(batch))
        if hasattr(backend, "compact"):
            await backend.compact()  # start measuring from a folded journal
    finally:
        await backend.close()


async def main(args: argparse.Namespace) -> int:
    failures = 0

    def report(name: str, value: float, ok: bool, target: str, extra: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(
            f"  {name:<48} {value:>10,.0f}/s {extra:<16} target {target:<18} "
            f"{'ok' if ok else 'MISSED'}"
        )

    root: Path = args.dir
    counter = iter(range(1_000_000))

    def fresh(kind: str) -> str:
        suffix = "db" if kind == "sqlite" else "json"
        return f"{kind}:///{root / f'b{next(counter)}.{suffix}'}"

    print(f"keyflow storage benchmarks ({os.cpu_count()} cores, files in {root})")
    one = max(
        [
            await raw_sqlite_rows_per_second(root / f"raw1-{i}.db", args.rows, 1)
            for i in range(args.rounds)
        ]
    )
    hundred = max(
        [
            await raw_sqlite_rows_per_second(root / f"raw100-{i}.db", args.rows * 10, 100)
            for i in range(args.rounds)
        ]
    )
    print("\nbaseline raw aiosqlite, WAL/NORMAL")
    print(f"  one row per INSERT + COMMIT:      {one:>10,.0f} rows/s")
    print(f"  100 rows per transaction:         {hundred:>10,.0f} rows/s")

    fsync = max(
        raw_append_fsync_per_second(root / f"raw-{i}.journal", args.rows // 2)
        for i in range(args.rounds)
    )
    print(f"  append + flush + fsync one line:  {fsync:>10,.0f} lines/s")
    hop = max(
        [
            await hop_append_fsync_per_second(root / f"hop-{i}.journal", args.rows // 2)
            for i in range(args.rounds)
        ]
    )
    print(
        f"  the same, on a thread, awaited:   {hop:>10,.0f} lines/s "
        f"({hop / fsync:.2f}x: the most a loop that never blocks on the disk gets)"
    )

    def against(name: str, value: float, factor: float, base: float, unit: str) -> None:
        ratio = f"({value / base:.2f}x {unit})"
        report(name, value, value >= factor * base, f">= {factor:.1f}x {unit}", ratio)

    async def best(measure: Callable[[str, int], Awaitable[float]], kind: str) -> float:
        return max([await measure(fresh(kind), args.sequential) for _ in range(args.rounds)])

    if args.part != "postgres":
        print("\none sequential producer, each trigger durable before the next")
        against(
            "SQLite trigger()",
            await best(sequential_triggers_per_second, "sqlite"),
            1.0,
            one,
            "1-row",
        )
        sequential_json = await best(sequential_triggers_per_second, "json")
        against("JSON trigger()", sequential_json, 0.5, fsync, "fsync")
        print(f"  (JSON trigger(): {sequential_json / hop:.2f}x the fsync on a thread, awaited)")
        sequential_e2e = await best(sequential_end_to_end_jobs_per_second, "sqlite")
        against("SQLite no-op jobs, 100 workers", sequential_e2e, 0.5, one, "1-row")
        if storage_huey.available():
            huey, workers = storage_huey.best_jobs_per_second(root, args.sequential, args.rounds)
            print(f"  peer: huey's SQLite queue ({workers} worker thread(s)): {huey:,.0f} jobs/s")
            against("SQLite no-op jobs, 100 workers vs huey", sequential_e2e, 2.0, huey, "huey")
        else:
            print("  (huey is not installed here: make bench-storage installs it; peer skipped)")

    if args.part in ("all", "postgres") and await storage_postgres.reachable(args.dsn):
        print("\nPostgreSQL single-writer mode (mode=single), one sequential producer")
        raw = max(
            [
                await storage_postgres.raw_insert_rows_per_second(
                    args.dsn, schema_name("storage_raw"), args.rows // 2
                )
                for _ in range(args.rounds)
            ]
        )
        print(f"  baseline: one row per INSERT (autocommit): {raw:>10,.0f} rows/s")
        schema = schema_name("storage_single")
        sequential = await storage_postgres.best_in_single_mode(
            args.dsn, schema, sequential_triggers_per_second, args.sequential, args.rounds
        )
        against("PostgreSQL trigger()", sequential, 0.5, raw, "1-row")
        concurrent = await storage_postgres.best_in_single_mode(
            args.dsn, schema, triggers_per_second, args.triggers, args.rounds
        )
        name = f"PostgreSQL trigger(), {PRODUCERS} producers (no target)"
        report(name, concurrent, True, "-", f"({concurrent / raw:.2f}x 1-row)")

    if args.part in ("sequential", "postgres"):
        return 1 if failures and args.strict else 0

    print(f"\nacknowledged durable triggers, {PRODUCERS} concurrent producers")
    sqlite_rate = max(
        [await triggers_per_second(fresh("sqlite"), args.triggers) for _ in range(args.rounds)]
    )
    report(
        "SQLite trigger()",
        sqlite_rate,
        sqlite_rate >= 30_000,
        ">= 30k/s",
        f"({sqlite_rate / one:.2f}x 1-row)",
    )
    report(
        "SQLite vs one row per commit",
        sqlite_rate,
        sqlite_rate > 1.3 * one,
        "> 1.3x baseline",
        f"({sqlite_rate / one:.2f}x)",
    )
    json_rate = max(
        [await triggers_per_second(fresh("json"), args.triggers) for _ in range(args.rounds)]
    )
    report(
        "JSON trigger()",
        json_rate,
        json_rate >= 15_000,
        ">= 15k/s",
        f"({json_rate / one:.2f}x 1-row)",
    )

    print("\nend to end (trigger, run, finish; every change durable)")
    e2e = max(
        [await end_to_end_jobs_per_second(fresh("sqlite"), args.jobs) for _ in range(args.rounds)]
    )
    report("SQLite no-op jobs", e2e, e2e >= 5_000, ">= 5k/s", f"({e2e / one:.2f}x 1-row)")
    e2e_json = max(
        [await end_to_end_jobs_per_second(fresh("json"), args.jobs) for _ in range(args.rounds)]
    )
    report("JSON no-op jobs (no target)", e2e_json, True, "-", f"({e2e_json / one:.2f}x 1-row)")

    print("\nthe cost of a commit vs runs retained")
    for kind in ("sqlite", "json"):
        rates = {}
        for retained in (1_000, args.retained):
            url = fresh(kind)
            await fill(url, retained)
            rates[retained] = max(
                [
                    await triggers_per_second(url, args.triggers, retention=10**7)
                    for _ in range(args.rounds)
                ]
            )
        small, large = rates[1_000], rates[args.retained]
        print(
            f"  {kind}: {small:,.0f}/s at 1,000 retained, {large:,.0f}/s at "
            f"{args.retained:,} retained"
        )
        report(
            f"{kind} triggers at {args.retained:,} retained",
            large,
            large >= 0.8 * small,
            "within 20 %",
            f"({large / small:.2f}x)",
        )
    return 1 if failures and args.strict else 0


def cli() -> None:
    """Parse arguments and run the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=5_000, help="baseline rows (x10 batched)")
    parser.add_argument("--triggers", type=int, default=20_000)
    parser.add_argument("--sequential", type=int, default=3_000, help="one producer's")
    parser.add_argument("--part", choices=("all", "sequential", "postgres"), default="all")
    parser.add_argument("--dsn", default=storage_postgres.DSN, help="PostgreSQL part's")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--retained", type=int, default=100_000)
    run(parser, main)


if __name__ == "__main__":
    cli()
