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
  process (the shared PostgreSQL mode), the producer, ``Keyflow(…, workers=0)``, calls
  ``trigger()`` N times;
* **keyflow sequential trigger, no workers running** (``keyflow-triggers``): that
  producer alone, no worker process: what a trigger costs by itself.

For each: end-to-end jobs/s (the first job's creation to the last one's finish, by the
rows' timestamps), trigger-to-start latency p50/p95 (a job's start minus its creation),
and the producer's sequential trigger (INSERT, defer) latency p50/p95. Then keyflow's
ratios to the baselines against the targets: >= 0.5x the bare loop's jobs/s, >= 3x
procrastinate's, trigger-to-start p50 <= 10 ms, sequential trigger p50 <= 2 ms. On a
noisy machine, ``--rounds R`` measures the systems in turn R times: the table shows each
one's median round, the ratios are medians of the rounds' ratios. A system
that cannot run is reported as failed and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
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
SYSTEMS = ("bare", "procrastinate", "keyflow", "keyflow-triggers")

Runner = Callable[[Config, str], Awaitable[Result]]
RUNNERS: dict[str, Runner] = {
    "bare": pg_bare.run,
    "procrastinate": pg_procrastinate.run,
    "keyflow": pg_keyflow.run,
    "keyflow-triggers": pg_keyflow.run_triggers_only,
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


def _rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def table(results: list[Result]) -> None:
    """Print one line per system (its median round)."""
    width = max(22, *(len(row.name) for row in results))
    print(
        f"\n  {'system':<{width}} {'jobs/s':>9} {'start p50':>11} {'start p95':>11} "
        f"{'trigger p50':>12} {'trigger p95':>12} {'wall':>7}"
    )
    for row in results:
        if not row.ok:
            print(f"  {row.name:<{width}} {row.error}")
            continue
        print(
            f"  {row.name:<{width}} {_rate(row.jobs_per_second):>9} {_ms(row.start_p50):>11} "
            f"{_ms(row.start_p95):>11} {_ms(row.trigger_p50):>12} "
            f"{_ms(row.trigger_p95):>12} {row.wall:>6.1f}s"
        )
        for note in filter(None, row.notes):
            print(f"  {'':<{width}} {note}")


def typical(rows: list[Result]) -> Result:
    """The row to show of a system's rounds: its first failure, or its median round."""
    failed = [row for row in rows if not row.ok]
    if failed:
        return failed[0]
    ranked = sorted(rows, key=_speed)
    return ranked[len(ranked) // 2]


def _speed(row: Result) -> float:
    """What ranks a system's rounds: jobs/s, or (no jobs run) the trigger p50, negated."""
    return -row.trigger_p50 if math.isnan(row.jobs_per_second) else row.jobs_per_second


def _outcome(row: Result) -> str:
    if not row.ok:
        return str(row.error)
    if math.isnan(row.jobs_per_second):
        return f"trigger p50 {_ms(row.trigger_p50)}"
    return f"{row.jobs_per_second:,.0f} jobs/s"


def targets(rounds: dict[str, list[Result]]) -> int:
    """Print keyflow's ratios (medians over the rounds) and targets; how many were missed."""
    kf = rounds.get("keyflow", [])
    measured = bool(kf) and all(row.ok for row in kf)
    missed = 0

    def report(name: str, value: float | None, unit: str, ok: bool, target: str) -> None:
        nonlocal missed
        missed += not ok
        shown = "-" if value is None else f"{value:.2f}{unit}"
        verdict = "not measured" if value is None else "met" if ok else "NOT MET"
        print(f"  {name:<36} {shown:>10}   target {target:<12} {verdict}")

    print(
        "\nkeyflow against the baselines"
        + (f" (medians of {len(kf)} rounds)" if len(kf) > 1 else "")
    )
    for base, factor in (("bare", 0.5), ("procrastinate", 3.0)):
        name = f"keyflow / {'bare loop' if base == 'bare' else base} jobs/s"
        pairs = list(zip(kf, rounds.get(base, []), strict=False))
        ratios = [k.jobs_per_second / b.jobs_per_second for k, b in pairs if k.ok and b.ok]
        if measured and ratios:
            ratio = statistics.median(ratios)
            report(name, ratio, "x", ratio >= factor, f">= {factor}x")
        else:
            report(name, None, "", False, f">= {factor}x")
    for name, attr, limit in (
        ("keyflow trigger-to-start p50", "start_p50", 10.0),
        ("keyflow sequential trigger p50", "trigger_p50", 2.0),
    ):
        if measured:
            value = statistics.median(float(getattr(row, attr)) for row in kf)
            report(name, value, " ms", value <= limit, f"<= {limit:.0f} ms")
        else:
            report(name, None, "", False, f"<= {limit:.0f} ms")
    alone = rounds.get("keyflow-triggers", [])
    if alone:
        name = "  the same, no workers running"
        if all(row.ok for row in alone):
            value = statistics.median(row.trigger_p50 for row in alone)
            report(name, value, " ms", value <= 2.0, "<= 2 ms")
        else:
            report(name, None, "", False, "<= 2 ms")
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
    rounds: dict[str, list[Result]] = {name: [] for name in systems}
    for number in range(1, args.rounds + 1):
        for system in systems:
            done = rounds[system]
            if done and not done[-1].ok:
                continue  # failed (or skipped): not again
            row = await measure(system, config)
            done.append(row)
            print(f"  round {number}/{args.rounds}: {row.name}: {_outcome(row)}", flush=True)
    table([typical(rows) for rows in rounds.values()])
    missed = targets(rounds)
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
        "--timeout", type=float, default=90.0, help="seconds a system may take to finish"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure each system this many times, in turn"
    )
    parser.add_argument(
        "--only", nargs="+", choices=SYSTEMS, help="measure these systems only (default all)"
    )
    run(parser, main)


if __name__ == "__main__":
    cli()
