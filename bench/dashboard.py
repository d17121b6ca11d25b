"""Dashboard benchmarks (issue #4): page times on a big SQLite store, and the cost of
live clients to the scheduler.

Run with ``make bench-dashboard`` (or ``python -m bench.dashboard``).

* Every page with 10,000 keys and 100,000 runs in SQLite: server time per request
  (median of several, in process), next to the same stack rendering a trivial page (the
  baseline: routing, Jinja2, HTTP) in the same run; for the embedded dashboard (a
  scheduler over that file) and the storage dashboard (``keyflow dashboard --storage``
  reading it).
* CPU this process spends serving two idle live pages (overview, lanes) of each.
* End-to-end throughput of the core benchmark (no-op jobs, memory storage) of a
  scheduler serving its dashboard, with 5 clients streaming the overview and lanes
  pages over SSE from another process, against the same with nobody watching; the
  order alternates round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

import keyflow
from bench.command import run
from keyflow.cli import read_only_url
from keyflow.records import RunRecord
from keyflow.runs import RunStatus
from keyflow.storage_backends import WriteBatch, open_backend
from keyflow.web import create_app
from keyflow.web.jobstats import StatsCache
from keyflow.web.storage_source import opened

KEYS = 10_000
RUNS = 100_000
TARGET_MS = 50
CLIENT_SCRIPT = """
import asyncio, sys, httpx
async def stream(url, connected):
    async with httpx.AsyncClient(timeout=None) as http:
        async with http.stream("GET", url) as response:
            connected.append(url)
            if len(connected) == len(sys.argv) - 1:
                print("ready", flush=True)
            async for _ in response.aiter_bytes():
                pass
async def main():
    connected = []
    await asyncio.gather(*(stream(url, connected) for url in sys.argv[1:]))
asyncio.run(main())
"""


async def fill(url: str) -> None:
    """100,000 runs over 10,000 keys: one delayed (unfinished) run per key, the rest done."""
    backend = open_backend(url, retention=10**7)
    await backend.open()
    now = time.time()
    try:
        batch: list[RunRecord] = []
        for n in range(RUNS):
            key = f"process:org-{n % KEYS:05d}"
            unfinished = n >= RUNS - KEYS
            status = RunStatus.SCHEDULED if unfinished else RunStatus.QUEUED
            created = now - (RUNS - n) * 0.01
            record = RunRecord(
                f"bench-{n:07x}", "process", key, status, {"org": key, "n": n}, created,
                now + 3600 if unfinished else created, 1,
            )  # fmt: skip
            if not unfinished:
                record.status = RunStatus.FAILED if n % 50 == 0 else RunStatus.COMPLETED
                record.attempt = 1
                record.started_at, record.finished_at = created + 0.1, created + 0.5
                record.trigger_count = 1 + n % 4
            batch.append(record)
            if len(batch) == 5_000:
                await backend.write(WriteBatch(batch))
                batch = []
        if batch:
            await backend.write(WriteBatch(batch))
    finally:
        await backend.close()


def baseline_app() -> Starlette:
    """The same stack with nothing to look up: a trivial template."""
    template = jinja2.Environment(autoescape=True).from_string(
        "<!doctype html><title>{{ title }}</title><p>{{ body }}</p>"
    )

    async def page(request: Request) -> Response:
        return HTMLResponse(template.render(title="baseline", body="nothing to look up"))

    return Starlette(routes=[Route("/", page)])


async def median_ms(
    http: httpx.AsyncClient, path: str, rounds: int, before: Callable[[], None] | None = None
) -> float:
    """Median time of ``rounds`` GETs of ``path``, in milliseconds (``before`` each)."""
    times = []
    for _ in range(rounds):
        if before is not None:
            before()
        start = time.perf_counter()
        response = await http.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(times)


PAGES = [
    ("lanes, page 1", "/lanes"),
    ("lanes, page 100", "/lanes?page=100"),
    ("lanes, prefix filter", "/lanes?prefix=process:org-07"),
    ("lanes, state filter", "/lanes?state=idle"),
    ("lanes, oldest wait first", "/lanes?sort=wait"),
    ("lanes, most coalesced first", "/lanes?sort=coalesced"),
    ("runs, page 1", "/runs"),
    ("runs, page 1000", "/runs?page=1000"),
    ("runs, status=failed", "/runs?status=failed"),
    ("runs, job filter", "/runs?job=process"),
    ("runs, job filter, page 100", "/runs?job=process&page=100"),
    ("runs, job + key", "/runs?job=process&key=process:org-00042"),
    ("runs, label filter", "/runs?labels=org%3Dnone"),
    ("runs, free text (10 matches)", "/runs?q=org-00042"),
    ("runs, free text (everywhere)", "/runs?q=process"),
    ("runs, free text (no match: every row read)", "/runs?q=nowhere-to-be-found"),
    ("runs, key prefix", "/runs?key_prefix=process:org-0004"),
    ("runs, created since a date", "/runs?created_after=2000-01-01&job=process"),
    ("key page", "/key?name=process:org-00042"),
    ("job statistics", "/jobs/process"),
    ("overview", "/"),
]


async def time_pages(app: Starlette, rounds: int) -> dict[str, float]:
    """Median server time of every page of ``app``, in milliseconds."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        start = time.perf_counter()
        await http.get("/lanes")  # warm caches and templates
        results = {"first page (cold)": (time.perf_counter() - start) * 1000}
        for label, path in PAGES:
            results[label] = await median_ms(http, path, rounds)
        dashboard = app.state.dashboard
        results["job statistics, cache emptied"] = await median_ms(
            http,
            "/jobs/process",
            rounds,
            before=lambda: setattr(dashboard, "stats", StatsCache()),
        )
    return results


async def baseline_ms(rounds: int) -> float:
    """The same stack rendering a trivial page."""
    base = httpx.ASGITransport(app=baseline_app())
    async with httpx.AsyncClient(transport=base, base_url="http://127.0.0.1") as plain:
        return await median_ms(plain, "/", rounds)


async def idle_cpu(app: Starlette, seconds: float) -> float:
    """CPU seconds per minute this process spends serving two idle live pages."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    while not server.started:  # noqa: ASYNC110  # uvicorn has no started event
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{port}/live"
    urls = [f"{base}?w=counts,rates,feed", f"{base}?w=lanes"]
    command = [sys.executable, "-c", CLIENT_SCRIPT, *urls]
    watcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    try:
        assert watcher.stdout is not None
        ready = await asyncio.to_thread(watcher.stdout.readline)
        assert ready == "ready\n", ready
        await asyncio.sleep(2)  # let the first renders pass: measure the idle state
        start = time.process_time()
        await asyncio.sleep(seconds)  # a measurement window, not a synchronisation
        return (time.process_time() - start) * 60 / seconds
    finally:
        watcher.kill()
        watcher.wait()
        if watcher.stdout is not None:
            watcher.stdout.close()
        server.should_exit = True
        await serving


async def dashboards(directory: Path, rounds: int, idle_seconds: float) -> dict[str, Any]:
    """Page times and idle cost of the embedded and the storage dashboard, one file."""
    url = f"sqlite:///{directory / 'big.db'}"
    print(f"  filling {url} with {RUNS:,} runs over {KEYS:,} keys…", flush=True)
    await fill(url)
    out: dict[str, Any] = {"baseline": await baseline_ms(rounds)}
    kf = keyflow.Keyflow(storage=url, retention=10**7)
    kf.job("process")(_noop)
    await kf.start()
    try:
        assert len(kf.keys()) == KEYS
        out["embedded"] = await time_pages(create_app(kf), rounds)
        out["embedded idle"] = await idle_cpu(create_app(kf), idle_seconds)
    finally:
        await kf.stop(grace=0)
    async with opened(open_backend(read_only_url(url), retention=10**9)) as source:
        out["storage"] = await time_pages(create_app(source), rounds)
        out["storage idle"] = await idle_cpu(create_app(source), idle_seconds)
    return out


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None


async def served_jobs_per_second(jobs: int, clients: int) -> float:
    """End-to-end jobs/s of a scheduler serving its dashboard, ``clients`` pages open.

    The clients stream from another process (as browsers would); with 0 clients the
    dashboard is served but nobody watches, so the two cases differ only by watchers.
    """
    import uvicorn

    kf = keyflow.Keyflow(workers=100)
    kf.job("noop")(_noop)
    port = free_port()
    config = uvicorn.Config(create_app(kf), port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    async with kf:
        serving = asyncio.ensure_future(server.serve())
        while not server.started:  # noqa: ASYNC110  # uvicorn has no started event
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{port}/live"
        urls = [f"{base}?w=counts,rates,feed", f"{base}?w=lanes"] * clients
        watcher = None
        if clients:
            command = [sys.executable, "-c", CLIENT_SCRIPT, *urls[:clients]]
            watcher = subprocess.Popen(  # noqa: ASYNC220  # killed, never awaited
                command, stdout=subprocess.PIPE, text=True
            )
        try:
            if watcher is not None and watcher.stdout is not None:
                ready = await asyncio.to_thread(watcher.stdout.readline)
                assert ready == "ready\n", ready  # every stream is open: measure now
            start = time.perf_counter()
            for i in range(jobs):
                await kf.trigger("noop", {"i": i}, concurrency_key=f"k{i % 1000}")
            await kf.run_until_idle()
            return jobs / (time.perf_counter() - start)
        finally:
            if watcher is not None:
                watcher.kill()
                watcher.wait()
                if watcher.stdout is not None:
                    watcher.stdout.close()
            server.should_exit = True
            await serving


async def throughput_with_clients(
    jobs: int, clients: int, rounds: int
) -> list[tuple[float, float]]:
    """(without, with) clients, per round; the order alternates to cancel its bias."""
    pairs = []
    for round_number in range(rounds):
        if round_number % 2:
            watched = await served_jobs_per_second(jobs, clients)
            alone = await served_jobs_per_second(jobs, 0)
        else:
            alone = await served_jobs_per_second(jobs, 0)
            watched = await served_jobs_per_second(jobs, clients)
        pairs.append((alone, watched))
    return pairs


def report_pages(times: dict[str, float], baseline: float) -> int:
    """Print page times against the baseline and the target; how many missed it."""
    failures = 0
    for label, ms in times.items():
        ok = ms <= TARGET_MS or label == "first page (cold)"
        failures += not ok
        verdict = f"target <= {TARGET_MS} ms {'ok' if ok else 'MISSED'}"
        if label == "first page (cold)":
            verdict = "(once: reads the lanes, or every stored run)"
        print(f"  {label:<44} {ms:8.1f} ms  ({ms / baseline:6.1f}x baseline)   {verdict}")
    return failures


async def main(args: argparse.Namespace) -> int:
    failures = 0
    print(f"keyflow dashboard benchmarks ({os.cpu_count()} cores)")
    print(f"\npages, {KEYS:,} keys and {RUNS:,} runs in SQLite (median of {args.rounds})")
    found = await dashboards(args.dir, args.rounds, args.idle_seconds)
    baseline = found["baseline"]
    print(f"  {'baseline: the same stack, a trivial page':<44} {baseline:8.1f} ms")
    print("embedded dashboard (create_app(kf), the scheduler over that file):")
    failures += report_pages(found["embedded"], baseline)
    print("storage dashboard (keyflow dashboard --storage, read-only):")
    failures += report_pages(found["storage"], baseline)
    print(f"\ntwo idle live pages (overview, lanes), CPU over {args.idle_seconds:g} s:")
    for label in ("embedded", "storage"):
        cpu = found[f"{label} idle"]
        ok = cpu / 60 < 0.05
        failures += not ok
        print(
            f"  {label + ' dashboard':<44} {cpu:8.2f} CPU s/min ({cpu / 60:6.1%} of a core)"
            f"   target < 5 % {'ok' if ok else 'MISSED'}"
        )
    print(f"\nend-to-end {args.jobs:,} no-op jobs with {args.clients} SSE clients watching")
    pairs = await throughput_with_clients(args.jobs, args.clients, args.rounds_throughput)
    ratios = sorted(watched / alone for alone, watched in pairs)
    ratio = ratios[len(ratios) // 2]
    best_alone = max(a for a, _ in pairs)
    best_watched = max(w for _, w in pairs)
    print(
        f"  without clients: {best_alone:,.0f} jobs/s best; with: {best_watched:,.0f} jobs/s best"
    )
    print(f"  per-round ratios: {', '.join(f'{r:.3f}' for r in ratios)}")
    ok = ratio >= 0.9
    failures += not ok
    print(f"  {'median ratio':<44} {ratio:8.3f}x   target >= 0.9x {'ok' if ok else 'MISSED'}")
    return 1 if failures and args.strict else 0


def cli() -> None:
    """Parse arguments and run the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15, help="requests per page")
    parser.add_argument("--rounds-throughput", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument(
        "--idle-seconds", type=float, default=30.0, help="CPU measured over this long"
    )
    run(parser, main)


if __name__ == "__main__":
    cli()
