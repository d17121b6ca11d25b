"""The SIGKILL crash test's two halves: a child workload and the parent's checks.

The child runs a scheduler on durable storage with producers triggering four jobs
(one per strategy: none, ``queue`` with merged inputs, ``skip``, ``cancel``) on a few
shared keys, and handlers that take a random time. It appends to a log with plain
``write`` calls (they survive the process being killed): ``BOOT`` when it starts, ``T``
after each ``trigger()`` returned, ``S``/``E`` when a handler starts/ends. The parent
kills it at random moments, starts it again, and finally lets one child drain
everything; then it checks the log and the storage:

* every acknowledged trigger is covered by a run that completed (a ``queue``
  trigger's id is in the input a start of its run saw: the trailing edge, guarantee 2;
  a ``cancel`` trigger's run may instead have been replaced by a later run of its key,
  whose own trigger may have been durable but not yet logged when its process died);
* no two handlers of a key ever ran at once (exclusion, guarantee 1);
* a new ``queue`` run is made only once the previous one of its job and key started
  (the bound, guarantee 3, with ``max_queued=1``);
* per key, runs first start in the order they were created (order, guarantee 5);
* a run starts again only after a crash interrupted it (only an interrupted attempt is
  ever repeated: there are no failures to retry);
* a poison run, triggered once by the first child, whose handler kills its own process
  at once (as an OOM kill or a segfault would): its start is durable before the handler
  runs, so each such death counts as a crash, and after three it fails as a poison pill
  instead of killing every later child.

``python -m tests.crash_workload --backend sqlite --cycles 200`` is the soak.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keyflow
from keyflow import Coalesce, RunStatus
from keyflow.coalesce import CoalesceOption

KEYS = ("k0", "k1", "k2")
STRATEGIES: dict[str, CoalesceOption] = {
    "plain": None,
    "queued": None,  # set below: queue with merged inputs
    "skipped": "skip",
    "replaced": "cancel",
}
PRODUCERS = 3
ROOT = Path(__file__).resolve().parents[1]


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {"ts": old["ts"] + [t for t in new["ts"] if t not in old["ts"]]}


STRATEGIES["queued"] = Coalesce("queue", max_queued=1, input=_merge)


# -- the child -------------------------------------------------------------------------


POISON_CRASHES = 3
"""The poison run's handler kills its process this many times before it is failed."""


async def child(url: str, log_path: str, seed: int, drain: bool, poison: bool) -> None:
    """Run the workload until killed (or, with ``drain``, until everything finished)."""
    rng = random.Random(seed)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(*parts: object) -> None:
        os.write(fd, (" ".join(str(p) for p in parts) + "\n").encode())

    # Retention far above what any soak makes: the checks read every run back.
    kf = keyflow.Keyflow(storage=url, workers=4, grace=0, retention=10_000_000)

    async def handler(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        key = ctx.concurrency_key
        log("S", ctx.run_id, ctx.attempt, key, ",".join(input["ts"]))
        try:
            await asyncio.sleep(rng.uniform(0, 0.03))  # the work: a random duration
        finally:  # a "cancel" trigger may cancel it
            log("E", ctx.run_id, ctx.attempt, key)

    for name in STRATEGIES:
        kf.job(name)(handler)

    @kf.job(concurrency_key="poison")
    async def poison_pill(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        log("P", ctx.run_id, ctx.attempt)
        os.kill(os.getpid(), signal.SIGKILL)  # first thing: no chance to write anything

    async def produce(producer: int) -> None:
        for n in range(1_000_000):
            tid = f"{os.getpid()}.{producer}.{n}"
            job = rng.choice(tuple(STRATEGIES))
            key = rng.choice(KEYS)
            result = await kf.trigger(
                job, {"ts": [tid]}, concurrency_key=key, coalesce=STRATEGIES[job]
            )
            log("T", tid, job, key, result.run_id, result.disposition.value)
            await asyncio.sleep(rng.uniform(0, 0.004))  # producers pace themselves

    await kf.start()
    log("BOOT", os.getpid())
    print("ready", flush=True)
    if poison:  # due a little later, so this child does some work before it dies
        result = await poison_pill.trigger({}, delay=0.2)
        log("PT", result.run_id)
    if drain:
        await kf.run_until_idle(timeout=120)
        log("IDLE")
        await kf.stop()
        return
    await asyncio.gather(*(produce(p) for p in range(PRODUCERS)))


# -- the parent ------------------------------------------------------------------------


def run_cycles(url: str, log_path: Path, cycles: int, rng: random.Random) -> None:
    """Start the child ``cycles`` times, killing each at a random moment; then drain."""
    for cycle in range(cycles + 1):
        drain = cycle == cycles
        command = [sys.executable, "-m", "tests.crash_workload", "child", url, str(log_path)]
        command += ["--seed", str(rng.randrange(1 << 30))] + (["--drain"] if drain else [])
        command += ["--poison"] if cycle == 0 else []
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            if drain:
                code = proc.wait(timeout=180)
                assert code == 0, f"the draining child exited with {code}"
                continue
            assert ready == "ready\n", f"child {cycle} did not start: {ready!r}"
            time.sleep(rng.uniform(0.05, 0.6))  # the moment of the crash, not a sync
            proc.send_signal(signal.SIGKILL)  # unless the poison run killed it already
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@dataclass
class Trigger:
    tid: str
    job: str
    key: str
    run_id: str
    disposition: str
    line: int


@dataclass
class Report:
    """What the log says, read once."""

    triggers: list[Trigger] = field(default_factory=list)
    starts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    covered: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    boots: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    first_start_order: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    finished: set[str] = field(default_factory=set)
    """Runs with an attempt that ran to its end (no crash in between)."""
    poison_run: str | None = None
    poison_starts: int = 0


def read_log(log_path: Path) -> Report:
    """Parse the log, checking exclusion and repeats on the way."""
    report = Report()
    running: dict[str, str] = {}  # key -> run id executing now
    attempts: dict[str, set[str]] = {}  # run id -> trigger ids its running attempt saw
    for number, line in enumerate(log_path.read_text().splitlines(), start=1):
        kind, *rest = line.split(" ")
        if kind == "BOOT":
            report.boots.append(number)
            running.clear()  # the previous process died: whatever ran stopped
            attempts.clear()  # and its attempts never finished
        elif kind == "T":
            tid, job, key, run_id, disposition = rest
            report.triggers.append(Trigger(tid, job, key, run_id, disposition, number))
        elif kind == "S":
            run_id, _attempt, key, tids = rest
            if key in running:
                report.problems.append(f"line {number}: {run_id} started while {running[key]}")
            running[key] = run_id
            previous = report.starts[run_id]
            if previous and not any(previous[-1] < boot < number for boot in report.boots):
                report.problems.append(f"line {number}: {run_id} started again without a crash")
            if not previous:
                report.first_start_order[key].append(run_id)
            previous.append(number)
            attempts[run_id] = {t for t in tids.split(",") if t}
        elif kind == "PT":
            report.poison_run = rest[0]
        elif kind == "P":
            report.poison_starts += 1
        elif kind == "E":
            run_id, _attempt, key = rest
            if running.get(key) == run_id:
                del running[key]
            if run_id in attempts:  # an attempt that ran to its end covers what it saw
                report.covered[run_id].update(attempts.pop(run_id))
                report.finished.add(run_id)
    return report


async def final_runs(url: str) -> dict[str, keyflow.Run]:
    """Every run in storage (retention is far above what the workload makes)."""
    backend = keyflow.storage_backends.open_backend(url, retention=1_000_000)
    await backend.open()
    try:
        query = keyflow.storage_backends.RunQuery(limit=10_000_000)
        return {run.id: run for run in await backend.list_runs(query)}
    finally:
        await backend.close()


def check(report: Report, runs: dict[str, keyflow.Run]) -> list[str]:
    """Every problem found; empty when the guarantees held."""
    problems = list(report.problems)
    if report.poison_run is not None:
        poison = runs.get(report.poison_run)
        if poison is None or poison.status is not RunStatus.FAILED:
            problems.append(f"the poison run ended {poison and poison.status.value}, not failed")
        elif poison.errors[-1].type != "Crashed":
            problems.append(f"the poison run failed with {poison.errors[-1].type}, not Crashed")
        if report.poison_starts != POISON_CRASHES:
            problems.append(
                f"the poison run's handler started {report.poison_starts} times, "
                f"not {POISON_CRASHES}: its crashes were not all counted"
            )
    unfinished = [r.id for r in runs.values() if not r.is_terminal]
    if unfinished:
        problems.append(f"unfinished after draining: {unfinished[:5]}")

    def order(run: keyflow.Run) -> tuple[float, int]:
        # Across processes by the stored creation time, within one by the id's counter.
        return run.created_at, int(run.id.split("-")[1], 16)

    replacements: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for stored in runs.values():  # every "cancel" run stored, acknowledged or not: a
        if stored.job == "replaced" and stored.concurrency_key is not None:  # trigger may be
            replacements[stored.concurrency_key].append(order(stored))  # durable, unlogged
    made_by_queue: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for trig in report.triggers:
        run = runs.get(trig.run_id)
        if run is None:
            problems.append(f"trigger {trig.tid}: its run {trig.run_id} is not in storage")
            continue
        if trig.job == "replaced" and run.status is RunStatus.CANCELLED:
            # The strategy: only a later "cancel" run of the key may replace it (that
            # run's trigger may have been durable yet unlogged when the child died).
            if not any(later > order(run) for later in replacements[trig.key]):
                problems.append(f"trigger {trig.tid}: cancelled, yet no later run replaced it")
            continue
        if run.status is not RunStatus.COMPLETED:
            problems.append(f"trigger {trig.tid}: run {run.id} ended {run.status.value}")
        elif run.id not in report.finished:
            problems.append(f"trigger {trig.tid}: run {run.id} completed without running")
        if trig.job == "queued":
            if trig.tid not in report.covered[trig.run_id]:
                problems.append(f"queue trigger {trig.tid}: no whole attempt of {run.id} saw it")
            if trig.disposition != "coalesced":
                earlier = made_by_queue[trig.job, trig.key]
                for previous, made_at in earlier:  # the bound: one never-started run at most
                    starts = report.starts.get(previous, [])
                    if starts and starts[0] < trig.line:
                        continue
                    # A start is written before its handler logs "S": a crash in between
                    # leaves a run that started (and counts an interruption) unlogged.
                    crashed_in_between = any(made_at < boot < trig.line for boot in report.boots)
                    earlier_run = runs.get(previous)
                    if crashed_in_between and earlier_run and earlier_run.interruptions:
                        continue
                    # On shared storage a run starts when it is claimed, in the database,
                    # before its handler logs "S": a trigger in between (logged first)
                    # rightly made a run. The stored times tell (its latest start, if
                    # anything, is later than its first).
                    began = None if earlier_run is None else earlier_run.started_at
                    if began is not None and began <= run.created_at:
                        continue
                    problems.append(f"line {trig.line}: {trig.run_id} made while {previous} waited")
                earlier.append((trig.run_id, trig.line))
    for key, started in report.first_start_order.items():
        # By the stored order: a process may die before any of its triggers is
        # acknowledged, so the log alone cannot order its runs.
        known = [r for r in started if r in runs]
        if known != sorted(known, key=lambda run_id: order(runs[run_id])):
            problems.append(f"key {key}: runs did not first start in creation order")
    return problems


def crash_test(backend: str, cycles: int, seed: int, directory: Path) -> tuple[Report, list[str]]:
    """Run the whole crash test; return what the log said and the problems found."""
    if backend.startswith("postgresql"):
        from .pg import postgres_url

        # Shared mode's leases are short here: a dead process's runs come back at once.
        mode = "&lease=1" if backend == "postgresql-shared" else "&mode=single"
        url = postgres_url(directory) + mode
    else:
        suffix = "db" if backend == "sqlite" else "json"
        url = f"{backend}:///{directory / f'runs.{suffix}'}"
    log_path = directory / "workload.log"
    run_cycles(url, log_path, cycles, random.Random(seed))
    report = read_log(log_path)
    return report, check(report, asyncio.run(final_runs(url)))


def main() -> None:
    """``child`` (run by the parent) or the soak: many more cycles than CI runs."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command")
    child_args = sub.add_parser("child")
    child_args.add_argument("url")
    child_args.add_argument("log")
    child_args.add_argument("--seed", type=int, default=0)
    child_args.add_argument("--drain", action="store_true")
    child_args.add_argument("--poison", action="store_true")
    parser.add_argument(
        "--backend", choices=("sqlite", "json", "postgresql", "postgresql-shared"), default="sqlite"
    )
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.command == "child":
        asyncio.run(child(args.url, args.log, args.seed, args.drain, args.poison))
        return
    with tempfile.TemporaryDirectory(prefix="keyflow-soak-") as directory:
        report, problems = crash_test(args.backend, args.cycles, args.seed, Path(directory))
    print(
        f"{args.backend}: {args.cycles} kills, {len(report.triggers)} acknowledged triggers, "
        f"{sum(len(s) for s in report.starts.values())} starts"
    )
    for problem in problems:
        print("  PROBLEM", problem)
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
