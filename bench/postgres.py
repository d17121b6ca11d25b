"""keyflow on PostgreSQL, several processes, against a bare SKIP LOCKED loop and procrastinate.

Run with ``make bench-postgres`` (or ``python -m bench.postgres``; ``--dsn`` names the
database, by default ``postgresql://postgres@127.0.0.1:5432/test``). Each system runs in
a fresh schema of its own (``kf_bench_<pid>_<system>``, dropped after) with W worker
processes (``--workers``, 4), each running C jobs at once (``--concurrency``, 8), and one
sequential producer in this process creating N no-op jobs (``--jobs``, 5,000):

* **bare loop** (the baseline): asyncpg, one INSERT per job (a statement trigger
  NOTIFYs), workers claiming with ``UPDATE … FOR UPDATE SKIP LOCKED`` (``pg_bare.py``);
* **procrastinate** (the baseline of a real library, when installed: the make target
  puts it into ``.venv-bench``): a no-op task, ``defer_async()`` N times;
* **keyflow**: ``Keyflow(storage="postgresql://…?schema=…", workers=C)`` per worker
  process, the producer calls ``trigger()`` N times.

For each: end-to-end jobs/s (the first job's creation to the last one's finish, by the
rows' timestamps), trigger-to-start latency p50/p95 (a job's start minus its creation),
and the producer's sequential trigger (INSERT, defer) latency p50/p95. Then keyflow's
ratios to the baselines against the targets: >= 0.5x the bare loop's jobs/s, >= 3x
procrastinate's, trigger-to-start p50 <= 10 ms, sequential trigger p50 <= 2 ms. A system
that cannot run (keyflow before its shared PostgreSQL mode: StorageLockedError) is
reported as failed and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable

from bench import pg_bare, pg_keyflow, pg_procrastinate
from bench.command import run
from bench.pg_common import (
    READY_TIMEOUT,
    BenchError,
    Config,
    Result,
    drop_stale_schemas,
    schema_name,
)

DSN = "postgresql://postgres@127.0.0.1:5432/test"
SYSTEMS = ("bare", "procrastinate", "keyflow")

Runner = Callable[[Config, str], Awaitable[Result]]
RUNNERS: dict[str, Runner] = {
    "bare": pg_bare.run,
    "procrastinate": pg_procrastinate.run,
    "keyflow": pg_keyflow.run,
}


async def measure(system: str, config: Config) -> Result:
    """One system's row; a failure (any exception) becomes the row's error."""
    if system == "procrastinate" and pg_procrastinate.load() is None:
        return Result(
            "procrastinate",
            error="skipped: procrastinate is not installed (make bench-postgres puts it "
            "into .venv-bench)",
        )
    start = time.monotonic()
    try:
        # Every step has its own timeout; this one bounds the sum, whatever hangs.
        budget = config.timeout + 2 * READY_TIMEOUT + 60
        return await asyncio.wait_for(RUNNERS[system](config, schema_name(system)), budget)
    except Exception as exc:
        if isinstance(exc, BenchError):
            message = str(exc)
        elif isinstance(exc, TimeoutError):
            message = ""
        else:
            message = f"{type(exc).__name__}: {exc}"
        message = message or f"timed out after {time.monotonic() - start:.0f} s"
        return Result(system, error=f"failed: {message}".replace("\n", " "))


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} ms"


def table(results: list[Result]) -> None:
    """Print one line per system."""
    print(
        f"\n  {'system':<22} {'jobs/s':>9} {'start p50':>11} {'start p95':>11} "
        f"{'trigger p50':>12} {'trigger p95':>12} {'wall':>7}"
    )
    for row in results:
        if not row.ok:
            print(f"  {row.name:<22} {row.error}")
            continue
        print(
            f"  {row.name:<22} {row.jobs_per_second:>9,.0f} {_ms(row.start_p50):>11} "
            f"{_ms(row.start_p95):>11} {_ms(row.trigger_p50):>12} "
            f"{_ms(row.trigger_p95):>12} {row.wall:>6.1f}s"
        )
        for note in row.notes:
            print(f"  {'':<22} {note}")


def targets(results: dict[str, Result]) -> int:
    """Print keyflow's ratios and targets; how many targets were missed."""
    kf, bare, proc = (results.get(name) for name in SYSTEMS[::-1])
    missed = 0

    def report(name: str, value: str, ok: bool | None, target: str) -> None:
        nonlocal missed
        missed += ok is not True
        verdict = "met" if ok else "NOT MET" if ok is False else "not measured"
        print(f"  {name:<36} {value:>10}   target {target:<12} {verdict}")

    print("\nkeyflow against the baselines")
    for base, factor, label in ((bare, 0.5, "bare loop"), (proc, 3.0, "procrastinate")):
        if kf is not None and kf.ok and base is not None and base.ok:
            ratio = kf.jobs_per_second / base.jobs_per_second
            report(f"keyflow / {label} jobs/s", f"{ratio:.2f}x", ratio >= factor, f">= {factor}x")
        else:
            report(f"keyflow / {label} jobs/s", "-", None, f">= {factor}x")
    for name, attr, limit in (
        ("keyflow trigger-to-start p50", "start_p50", 10.0),
        ("keyflow sequential trigger p50", "trigger_p50", 2.0),
    ):
        if kf is not None and kf.ok:
            value = float(getattr(kf, attr))
            report(name, _ms(value), value <= limit, f"<= {limit:.0f} ms")
        else:
            report(name, "-", None, f"<= {limit:.0f} ms")
    return missed


async def main(args: argparse.Namespace) -> int:
    config = Config(
        dsn=args.dsn,
        jobs=args.jobs,
        workers=args.workers,
        concurrency=args.concurrency,
        timeout=args.timeout,
        log_dir=args.dir,
    )
    systems = [name for name in SYSTEMS if name in args.only] if args.only else list(SYSTEMS)
    print(
        f"keyflow PostgreSQL benchmark ({os.cpu_count()} cores): {config.jobs:,} no-op jobs, "
        f"{config.workers} worker processes x {config.concurrency}, one sequential producer"
    )
    print(f"  database {config.dsn}; worker logs in {config.log_dir}")
    for name in await drop_stale_schemas(config.dsn):
        print(f"  dropped {name}, left by a run that was killed")
    results: dict[str, Result] = {}
    for system in systems:
        print(f"  measuring {system} ...", flush=True)
        results[system] = await measure(system, config)
    table(list(results.values()))
    missed = targets(results)
    return 1 if missed and args.strict else 0


def cli() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", default=DSN, help=f"the database (default {DSN})")
    parser.add_argument("--jobs", type=int, default=5_000, help="no-op jobs per system")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs at once per process")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds a system may take to finish"
    )
    parser.add_argument(
        "--only", nargs="+", choices=SYSTEMS, help="measure these systems only (default all)"
    )
    run(parser, main)


if __name__ == "__main__":
    cli()
