"""Many processes on one shared PostgreSQL schema, for real: ``keyflow worker`` processes
and producer processes, checked from the database (its clock for starts and ends)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import asyncpg
import pytest

import keyflow

from .pg import POSTGRES, drop_schemas, postgres_url, run_aside, schema_for

REPO = Path(__file__).resolve().parent.parent
BOUNDS = {"queue1": 1, "queue3": 3}
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A fresh schema (with the log table the test app writes), short leases."""
    found = postgres_url(tmp_path) + "&lease=3"
    schema = schema_for(tmp_path)

    async def prepare() -> None:
        conn = await asyncpg.connect(POSTGRES)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}"')
            from tests.shared.app import LOG_TABLE

            await conn.execute(LOG_TABLE)
        finally:
            await conn.close()

    run_aside(prepare)
    yield found
    drop_schemas(schema)


def _env(url: str) -> dict[str, str]:
    schema = url.split("schema=")[1].split("&")[0]
    return {
        **os.environ,
        "KF_TEST_SCHEMA": schema,
        "KF_TEST_DSN": POSTGRES,
        "PYTHONPATH": str(REPO),
    }


def start_workers(
    url: str, count: int, workers: int = 4, stderr: IO[bytes] | None = None
) -> list[subprocess.Popen[bytes]]:
    """``count`` ``keyflow worker`` processes running the test app."""
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keyflow",
                "worker",
                "--app",
                "tests.shared.app:kf",
                "--storage",
                url,
                "--workers",
                str(workers),
                "--log-level",
                "WARNING",
            ],
            cwd=REPO,
            env=_env(url),
            stderr=stderr,
        )
        for _ in range(count)
    ]


def stop(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM each process; their exit statuses."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    return [process.wait(timeout=60) for process in processes]


async def until_idle(url: str, timeout: float = 120.0) -> None:
    """Wait until no run of the schema is due, pending or running, in any process."""
    async with keyflow.Keyflow(url, workers=0) as watcher:
        await watcher.run_until_idle(timeout=timeout)


async def read(url: str) -> tuple[list[dict[str, Any]], list[asyncpg.Record]]:
    """Every stored run (its JSON, and its ``seq``), and the log, in time order."""
    schema = url.split("schema=")[1].split("&")[0]
    conn = await asyncpg.connect(POSTGRES, server_settings={"search_path": schema})
    try:
        runs = [
            {**json.loads(data), "seq": seq}
            for data, seq in await conn.fetch("SELECT data, seq FROM keyflow_runs ORDER BY seq")
        ]
        log = await conn.fetch(
            "SELECT run_id, job, key, attempt, event, pid, extract(epoch FROM at) AS at "
            "FROM kf_log ORDER BY at"
        )
    finally:
        await conn.close()
    return runs, log


def check_exclusion(log: list[asyncpg.Record]) -> None:
    """No two attempts of one key ever run at once (every lane's limit is 1)."""
    inside: dict[str, str] = {}
    for row in log:
        key = row["key"]
        if row["event"] == "start":
            assert key not in inside, f"{row['run_id']} started while {inside[key]} ran ({key})"
            inside[key] = row["run_id"]
        elif inside.get(key) == row["run_id"]:
            del inside[key]
        else:  # a handler cancelled before its start line was sent logs its end only
            assert row["run_id"] not in inside.values(), f"{row['run_id']} ended twice"
    assert not inside, f"attempts never ended: {inside}"


def check_order(runs: list[dict[str, Any]]) -> None:
    """A key's runs start in the order they were made (the lanes are first in, first out)."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if run.get("started_at") is not None:
            by_key[run["key"]].append(run)
    for key, started in by_key.items():
        starts = [run["started_at"] for run in sorted(started, key=lambda r: r["seq"])]
        assert starts == sorted(starts), f"lane {key} started runs out of creation order"


def check_bound(runs: list[dict[str, Any]]) -> None:
    """A queue job never holds more unstarted runs in a lane than its ``max_queued``."""
    events: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for run in runs:
        bound = BOUNDS.get(run["job"])
        if bound is None:
            continue
        lane = (run["job"], run["key"])
        events[lane].append((run["created_at"], 1))
        first = run.get("started_at") if run.get("attempt", 0) <= 1 else None
        end = first if first is not None else run.get("finished_at")
        if end is not None:
            events[lane].append((end, -1))
    for (job, key), moments in events.items():
        waiting = 0
        for _at, change in sorted(moments, key=lambda m: (m[0], m[1])):
            waiting += change
            assert waiting <= BOUNDS[job], f"{job} held {waiting} unstarted runs in {key}"


def check_trailing_edge(triggers: list[dict[str, Any]], log: list[asyncpg.Record]) -> None:
    """Every acknowledged "queue" trigger is followed by a start of the run it got."""
    starts: dict[str, list[float]] = defaultdict(list)
    for row in log:
        if row["event"] == "start":
            starts[row["run_id"]].append(float(row["at"]))
    for trigger in triggers:
        if trigger["job"] in BOUNDS:
            after = [at for at in starts[trigger["run_id"]] if at >= trigger["at"]]
            assert after, f"trigger {trigger} was acknowledged, then nothing ran for it"


def test_four_workers_and_four_producers_keep_every_guarantee(url: str, tmp_path: Path) -> None:
    workers = start_workers(url, 4)
    try:
        outs = [tmp_path / f"producer{n}.jsonl" for n in range(4)]
        producers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.shared.producer", url, str(n), "150", str(out)],
                cwd=REPO,
                env=_env(url),
            )
            for n, out in enumerate(outs)
        ]
        assert [p.wait(timeout=180) for p in producers] == [0, 0, 0, 0]
        run_aside(lambda: until_idle(url))
    finally:
        statuses = stop(workers)
    assert statuses == [0, 0, 0, 0]
    triggers = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    assert len(triggers) == 600
    runs, log = run_aside(lambda: read(url))
    assert {run["status"] for run in runs} <= {"completed", "cancelled"}
    assert len({row["pid"] for row in log}) > 1, "the runs were not spread over the workers"
    dispositions = {t["disposition"] for t in triggers}
    assert {"created", "queued", "coalesced"} <= dispositions
    check_exclusion(list(log))
    check_order(runs)
    check_bound(runs)
    check_trailing_edge(triggers, list(log))


async def _log_rows(url: str, run_id: str) -> list[asyncpg.Record]:
    schema = url.split("schema=")[1].split("&")[0]
    conn = await asyncpg.connect(POSTGRES, server_settings={"search_path": schema})
    try:
        return list(
            await conn.fetch(
                "SELECT event, pid, attempt FROM kf_log WHERE run_id = $1 ORDER BY at", run_id
            )
        )
    finally:
        await conn.close()


async def _db_now() -> float:
    conn = await asyncpg.connect(POSTGRES)
    try:
        return float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
    finally:
        await conn.close()


async def _until_started(url: str, run_id: str, timeout: float = 30.0) -> int:
    """The pid of the process that logged the start of ``run_id`` (waits for it)."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await _log_rows(url, run_id)
            if rows:
                return int(rows[0]["pid"])
            await asyncio.sleep(0.05)  # another process: nothing here to await but the log


async def _trigger_hold(url: str, key: str, seconds: float, count: int = 1) -> list[str]:
    until = await _db_now() + seconds
    async with keyflow.Keyflow(url, workers=0) as producer:
        producer.job("hold")(_never)
        results = [
            await producer.trigger(
                "hold",
                {"key": key, "hold_until": until, "n": n},
                concurrency_key=key,
                coalesce="queue",
            )
            for n in range(count)
        ]
    return [r.run_id for r in results]


async def _never(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    raise AssertionError("a producer without workers runs nothing")


async def _final(url: str, run_id: str) -> keyflow.Run:
    async with keyflow.Keyflow(url, workers=0) as watcher:
        return await watcher.wait(run_id, timeout=60)


def test_a_killed_workers_run_is_reclaimed_after_its_lease_and_completes(url: str) -> None:
    first = start_workers(url, 1)
    second: list[subprocess.Popen[bytes]] = []
    try:
        (run_id,) = run_aside(lambda: _trigger_hold(url, "kill", 5.0))
        killed_pid = run_aside(lambda: _until_started(url, run_id))
        assert killed_pid == first[0].pid
        (follow_up,) = run_aside(lambda: _trigger_hold(url, "kill", 0.0))  # queued behind it
        first[0].send_signal(signal.SIGKILL)  # mid-run: its lease is never renewed again
        first[0].wait(timeout=30)
        second = start_workers(url, 1)
        run = run_aside(lambda: _final(url, run_id))
        after = run_aside(lambda: _final(url, follow_up))
    finally:
        stop(second)
    assert run.status is keyflow.RunStatus.COMPLETED
    assert run.attempt == 2  # the crash was a new attempt
    assert run.interruptions == 1
    assert after.status is keyflow.RunStatus.COMPLETED
    assert after.started_at is not None
    assert run.finished_at is not None
    assert after.started_at >= run.finished_at  # the follow-up waited for the reclaimed run
    rows = run_aside(lambda: _log_rows(url, run_id))
    assert [(r["event"], r["pid"]) for r in rows] == [
        ("start", killed_pid),
        ("start", second[0].pid),
        ("end", second[0].pid),
    ]


def test_a_paused_workers_late_writes_are_refused_after_its_lease_moved(
    url: str, tmp_path: Path
) -> None:
    errors = tmp_path / "stalled.err"
    with errors.open("wb") as sink:
        (stalled,) = start_workers(url, 1, workers=2, stderr=sink)
    others: list[subprocess.Popen[bytes]] = []
    try:
        (run_id,) = run_aside(lambda: _trigger_hold(url, "stall", 6.0))
        assert run_aside(lambda: _until_started(url, run_id)) == stalled.pid
        stalled.send_signal(signal.SIGSTOP)  # its lease (3 s) runs out while it sleeps
        others = start_workers(url, 1)
        run = run_aside(lambda: _final(url, run_id))  # the other process ran it again
        stalled.send_signal(signal.SIGCONT)
        statuses = stop([stalled])
    finally:
        stalled.send_signal(signal.SIGCONT)
        stop([stalled])
        stop(others)
    assert statuses == [0]
    assert run.status is keyflow.RunStatus.COMPLETED
    assert run.attempt == 2
    rows = run_aside(lambda: _log_rows(url, run_id))
    assert (rows[1]["event"], rows[1]["pid"]) == ("start", others[0].pid)
    again = run_aside(lambda: _final(url, run_id))
    assert again == run  # the stalled worker's late end changed nothing
    assert "lost its lease" in errors.read_text()


async def _dashboard_cancels(url: str, port: int, run_id: str) -> tuple[int, str, int]:
    """Through the dashboard: the lanes page, and a cancel of ``run_id``."""
    import httpx

    from .webkit import csrf_of

    bearer = {"Authorization": "Bearer s3cret"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=10, headers=bearer
    ) as http:
        async with asyncio.timeout(30):
            while True:  # the banner comes just before uvicorn listens
                try:
                    lanes = await http.get("/lanes")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
        token = await csrf_of(http)
        cancel = await http.post(f"/runs/{run_id}/cancel", headers={"X-CSRF-Token": token})
    return lanes.status_code, lanes.text, cancel.status_code


def test_a_dashboard_with_a_token_acts_on_runs_executed_elsewhere(url: str) -> None:
    from .webkit import free_port

    workers = start_workers(url, 1)
    port = free_port()
    dashboard = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keyflow",
            "dashboard",
            "--storage",
            url,
            "--port",
            str(port),
            "--token",
            "s3cret",
            "--app",
            "tests.shared.app:kf",
        ],
        cwd=REPO,
        env=_env(url),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        (run_id,) = run_aside(lambda: _trigger_hold(url, "watched", 30.0))
        assert run_aside(lambda: _until_started(url, run_id)) == workers[0].pid
        assert dashboard.stdout is not None
        assert "with actions" in dashboard.stdout.readline()
        status, page, cancelled = run_aside(lambda: _dashboard_cancels(url, port, run_id))
        run = run_aside(lambda: _final(url, run_id))
    finally:
        dashboard.send_signal(signal.SIGTERM)
        dashboard.wait(timeout=60)
        stop(workers)
        if dashboard.stdout is not None:
            dashboard.stdout.close()
    assert status == 200
    assert "watched" in page  # the lane of a run another process executes
    assert cancelled in (200, 303)
    assert run.status is keyflow.RunStatus.CANCELLED
