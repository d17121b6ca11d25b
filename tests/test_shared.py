"""Shared PostgreSQL storage with several schedulers at once (in one test process, each
with its own connections, as separate processes would have): decisions, leases, waits,
cancels, pauses, reads and events across them."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import Coalesce, Disposition, RunStatus
from keyflow.events import RunChanged, TriggerCoalesced
from keyflow.shared.backend import PRUNE_GRACE, SharedPostgreSQLBackend

from .pg import shared_schema

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A fresh schema in shared mode, short leases."""
    yield from shared_schema(tmp_path)


class Gate:
    """Handlers that wait for the test to let them end, and record who ran what."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started = asyncio.Event()
        self.running: dict[str, int] = {}
        self.overlaps: list[str] = []
        self.ran: list[tuple[str, str]] = []

    def register(self, kf: keyflow.Keyflow, name: str) -> None:
        @kf.job("work", concurrency_key=lambda i: str(i["key"]), coalesce="queue")
        async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
            key = str(input["key"])
            self.running[key] = self.running.get(key, 0) + 1
            if self.running[key] > 1:
                self.overlaps.append(key)
            self.ran.append((name, ctx.run_id))
            self.started.set()
            try:
                await self.open.wait()
            finally:
                self.running[key] -= 1
            return name


@pytest.fixture
async def pair(url: str) -> AsyncIterator[tuple[keyflow.Keyflow, keyflow.Keyflow, Gate]]:
    """Two schedulers on one schema (the second only triggers) and their gate."""
    gate = Gate()
    async with AsyncExitStack() as stack:
        a = keyflow.Keyflow(url, workers=4)
        b = keyflow.Keyflow(url, workers=0)
        gate.register(a, "a")
        gate.register(b, "b")
        await stack.enter_async_context(a)
        await stack.enter_async_context(b)
        yield a, b, gate
        gate.open.set()


def test_postgresql_urls_are_shared_by_default(url: str) -> None:
    backend = keyflow.Keyflow(url)._backend
    assert isinstance(backend, SharedPostgreSQLBackend)
    assert backend.coordinator.lease_seconds == 2.0


@pytest.mark.parametrize(
    ("option", "problem"),
    [("lease=0", "lease must be"), ("lease=x", "lease must be"), ("pool=1.5", "pool must be")],
)
def test_bad_shared_options_are_refused(url: str, option: str, problem: str) -> None:
    with pytest.raises(keyflow.ConfigurationError, match=problem):
        keyflow.Keyflow(url.replace("lease=2", option))


async def test_a_run_triggered_in_one_scheduler_runs_in_another(pair: Any) -> None:
    _a, b, gate = pair
    result = await b.trigger("work", {"key": "k"})
    await gate.started.wait()
    gate.open.set()
    run = await b.wait(result.run_id, timeout=30)
    assert run.status is RunStatus.COMPLETED
    assert run.output == "a"  # the scheduler with workers ran it
    assert gate.ran == [("a", result.run_id)]


async def test_concurrent_triggers_from_two_schedulers_queue_one_follow_up(pair: Any) -> None:
    a, b, gate = pair
    first = await b.trigger("work", {"key": "k"})
    await gate.started.wait()  # the first run holds the lane
    results = await asyncio.gather(
        *(kf.trigger("work", {"key": "k", "n": n}) for n in range(20) for kf in (a, b))
    )
    follow_ups = {r.run_id for r in results}
    assert len(follow_ups) == 1  # every later trigger joined the one follow-up
    assert sorted(r.disposition for r in results).count(Disposition.QUEUED) == 1
    gate.open.set()
    await a.run_until_idle(timeout=30)
    runs = await b.list_runs(concurrency_key="k")
    assert sorted(r.id for r in runs) == sorted({first.run_id, *follow_ups})
    assert {r.status for r in runs} == {RunStatus.COMPLETED}
    (follow_up,) = [r for r in runs if r.id in follow_ups]
    assert follow_up.trigger_count == 40
    assert gate.overlaps == []


async def test_an_idempotency_key_makes_one_run_whoever_triggers_it(pair: Any) -> None:
    a, b, gate = pair
    results = await asyncio.gather(
        *(
            kf.trigger("work", {"key": f"k{n}"}, idempotency_key="once")
            for n in range(5)
            for kf in (a, b)
        )
    )
    assert len({r.run_id for r in results}) == 1
    assert [r.disposition for r in results].count(Disposition.IDEMPOTENT) == 9
    gate.open.set()


async def test_a_cancel_reaches_the_run_whichever_scheduler_runs_it(pair: Any) -> None:
    a, b, gate = pair
    running = await b.trigger("work", {"key": "k"})
    await gate.started.wait()
    waiting = await b.trigger("work", {"key": "k"})
    assert waiting.disposition is Disposition.QUEUED
    cancelled = await b.cancel(waiting.run_id)  # waiting: cancelled in the database
    assert cancelled.status is RunStatus.CANCELLED
    stopped = await b.cancel(running.run_id)  # running in the other scheduler: asked
    assert stopped.status is RunStatus.CANCELLED
    assert (await a.get_run(running.run_id)) == stopped


async def test_a_pause_in_one_scheduler_holds_the_runs_of_every_other(pair: Any) -> None:
    a, b, gate = pair
    gate.open.set()
    await b.pause(job="work")
    held = await b.trigger("work", {"key": "k"})
    await b.run_until_idle(timeout=30)  # a paused run does not keep it busy
    assert (await b.get_run(held.run_id)).status is RunStatus.PENDING
    assert (await a.get_statistics()).paused.jobs == frozenset({"work"})
    await b.resume(job="work")
    assert (await b.wait(held.run_id, timeout=30)).status is RunStatus.COMPLETED


async def test_a_delayed_run_is_made_due_by_the_database(pair: Any) -> None:
    _a, b, gate = pair
    gate.open.set()
    result = await b.trigger("work", {"key": "k"}, delay=0.3)
    assert (await b.get_run(result.run_id)).status is RunStatus.SCHEDULED
    run = await b.wait(result.run_id, timeout=30)
    assert run.status is RunStatus.COMPLETED
    assert run.started_at is not None
    assert run.started_at >= run.due_at


async def test_the_async_reads_show_every_schedulers_runs(pair: Any) -> None:
    _a, b, gate = pair
    await b.trigger("work", {"key": "k"})
    await gate.started.wait()
    await b.trigger("work", {"key": "k"})
    lane = await b.get_lane("k")  # b runs nothing: it sees a's run in the database
    assert lane.state == "running+queued"
    assert len(lane.running) == 1
    assert len(lane.waiting) == 1
    assert [snapshot.key for snapshot in await b.list_lanes()] == ["k"]
    assert (await b.get_lane_states())["running+queued"] == 1
    stats = await b.get_statistics()
    assert stats.unfinished["running"] == 1
    assert stats.unfinished["queued"] == 1
    gate.open.set()


async def test_events_tell_a_trigger_only_scheduler_of_runs_executed_elsewhere(
    pair: Any,
) -> None:
    _a, b, gate = pair
    gate.open.set()
    async with b.events() as events:
        result = await b.trigger("work", {"key": "k"})
        seen: list[RunStatus] = []
        async for event in events:
            if isinstance(event, RunChanged) and event.run.id == result.run_id:
                seen.append(event.run.status)
                if event.run.status.is_terminal:
                    break
    assert seen[0] in (RunStatus.QUEUED, RunStatus.PENDING)
    assert RunStatus.RUNNING in seen  # its start, in the other scheduler, was told too
    assert seen[-1] is RunStatus.COMPLETED


async def test_a_run_made_here_is_told_here_at_once(pair: Any) -> None:
    """The creation is this process's news: told before the trigger returns, not after
    a read of the notice (by which time a worker elsewhere may have started the run)."""
    _a, b, gate = pair
    async with b.events() as events:
        result = await b.trigger("work", {"key": "k"})
        first = events.get_nowait()
        assert isinstance(first, RunChanged)
        assert (first.run.id, first.previous) == (result.run_id, None)
        assert first.run.status in (RunStatus.QUEUED, RunStatus.PENDING)
    gate.open.set()


async def test_a_trigger_only_scheduler_runs_nothing_and_waits_for_others(url: str) -> None:
    async with keyflow.Keyflow(url, workers=0) as alone:

        @alone.job
        async def idle(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            raise AssertionError("nothing runs in a scheduler without workers")

        result = await alone.trigger("idle", concurrency_key="k", coalesce=Coalesce("queue"))
        with pytest.raises(keyflow.WaitTimeoutError):
            await alone.wait(result.run_id, timeout=0.3)
        stored = await alone.get_run(result.run_id)
        assert stored is not None
        assert stored.status is RunStatus.PENDING
        # It holds none of the database's runs: a timeout says what is still busy.
        with pytest.raises(keyflow.WaitTimeoutError, match=r"shared database still had runs"):
            await alone.run_until_idle(timeout=0.3)


async def test_a_trigger_the_database_cannot_hold_fails_alone(pair: Any) -> None:
    _a, b, gate = pair
    with pytest.raises(keyflow.InvalidInputError, match="NUL"):
        await b.trigger("work", {"key": "bad\x00key"})
    assert await b.list_runs() == []  # nothing half-written
    gate.open.set()
    ok = await b.trigger("work", {"key": "k"})
    assert (await b.wait(ok.run_id, timeout=30)).status is RunStatus.COMPLETED


async def _terminate_sessions(name: str, times: int, every: float) -> int:
    """Cut the sessions named ``name`` ``times`` times; how many were cut."""
    import asyncpg

    from .pg import POSTGRES

    cut = 0
    conn = await asyncpg.connect(POSTGRES)
    try:
        for _ in range(times):
            await asyncio.sleep(every)  # load runs meanwhile: these cuts land mid-work
            cut += int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    name,
                )
            )
    finally:
        await conn.close()
    return cut


async def test_cut_connections_during_load_leave_nothing_half_written(url: str) -> None:
    name = f"keyflow-cut-{os.getpid()}"
    async with keyflow.Keyflow(url + f"&application_name={name}", workers=4) as kf:

        @kf.job
        async def noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            await asyncio.sleep(0.001)

        acknowledged: list[str] = []
        refused = 0

        async def produce() -> None:
            nonlocal refused
            for n in range(300):
                try:
                    result = await kf.trigger("noop", {"n": n}, concurrency_key=f"k{n % 7}")
                except keyflow.StorageError:
                    refused += 1
                else:
                    acknowledged.append(result.run_id)

        cuts, _ = await asyncio.gather(_terminate_sessions(name, 4, 0.15), produce())
        assert cuts > 0
        await kf.run_until_idle(timeout=60)  # the workers came back and finished the rest
        runs = {run.id: run for run in await kf.list_runs(limit=1000)}
    assert len(acknowledged) + refused == 300
    assert set(acknowledged) <= set(runs)  # every acknowledged trigger is stored
    assert {run.status for run in runs.values()} == {RunStatus.COMPLETED}
    # A refused trigger may have been stored all the same (its answer was lost with
    # the connection), never in part: every stored run is whole and ran.
    assert len(runs) <= 300


async def test_finished_runs_beyond_retention_are_pruned(url: str) -> None:
    async with keyflow.Keyflow(url, workers=2, retention=5) as kf:

        @kf.job
        async def noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            return None

        for n in range(12):
            await kf.trigger("noop", {"n": n})
        await kf.run_until_idle(timeout=30)
        backend = kf._backend
        assert isinstance(backend, SharedPostgreSQLBackend)
        now = kf.clock.now()
        await backend.prune(now)  # what the keeper does: runs just finished stay a while
        assert await kf.count_runs() == 12
        await backend.prune(now + PRUNE_GRACE + 1)  # a minute later
        assert await kf.count_runs() == 5


async def test_a_failed_attempt_retries_after_its_backoff_under_the_same_lease(url: str) -> None:
    async with keyflow.Keyflow(url, workers=2) as kf:
        attempts: list[int] = []

        @kf.job(retries=2, backoff=0.05)
        async def flaky(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise RuntimeError("not yet")
            return ctx.attempt

        run = await kf.trigger_and_wait("flaky", concurrency_key="k", timeout=30)
    assert run.status is RunStatus.COMPLETED
    assert run.output == 3
    assert attempts == [1, 2, 3]
    assert [error.attempt for error in run.errors] == [1, 2]


async def _sql(url: str, statement: str, *args: Any) -> Any:
    """Run one statement on the test schema, behind keyflow's back."""
    import asyncpg

    from .pg import POSTGRES

    schema = url.split("schema=")[1].split("&")[0]
    conn = await asyncpg.connect(POSTGRES, server_settings={"search_path": schema})
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


async def test_a_cancel_whose_notice_was_missed_arrives_with_the_heartbeat(
    pair: Any, url: str
) -> None:
    _a, b, gate = pair
    result = await b.trigger("work", {"key": "k"})
    await gate.started.wait()
    # What a cancel from a process whose NOTIFY never arrived leaves: the flag alone.
    await _sql(
        url,
        "UPDATE keyflow_runs SET data = jsonb_set(data::jsonb, '{cancel_requested}', "
        "'true')::text WHERE id = $1 RETURNING id",
        result.run_id,
    )
    run = await b.wait(result.run_id, timeout=30)
    assert run.status is RunStatus.CANCELLED


async def test_a_worker_that_lost_a_lease_stops_retrying_the_run(url: str) -> None:
    attempts: list[tuple[str, int]] = []
    first = asyncio.Event()
    lost = asyncio.Event()
    async with AsyncExitStack() as stack:
        schedulers = []
        for name in ("a", "b"):
            kf = keyflow.Keyflow(url, workers=2)

            @kf.job(retries=1, backoff=4.0)  # a's heartbeat learns of the loss well before
            async def flaky(
                ctx: keyflow.RunContext, input: dict[str, Any], name: str = name
            ) -> None:
                attempts.append((name, ctx.attempt))
                first.set()
                raise RuntimeError("again")

            schedulers.append(kf)
        a, b = schedulers
        backend = a._backend
        assert isinstance(backend, SharedPostgreSQLBackend)
        backend.coordinator.on_lost.append(lambda ids: lost.set())
        await stack.enter_async_context(a)  # only a runs at first
        result = await a.trigger("flaky")
        await first.wait()
        # Its lease runs out behind its back (as if it had stalled): b takes the run.
        await _sql(
            url,
            "UPDATE keyflow_runs SET lease_until = now() - interval '1 second' "
            "WHERE id = $1 RETURNING id",
            result.run_id,
        )
        await stack.enter_async_context(b)
        await lost.wait()  # a's heartbeat told it
        run = await b.wait(result.run_id, timeout=60)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 2
    # Attempt 2 ran once, under a new lease: a's own retry timer, from the lost lease,
    # was stopped when a learned of the loss.
    assert sorted(attempt for _, attempt in attempts) == [1, 2]


async def test_a_pause_made_elsewhere_holds_a_retry_this_worker_already_holds(url: str) -> None:
    attempts: list[int] = []
    failed_once = asyncio.Event()
    async with keyflow.Keyflow(url, workers=2) as a, keyflow.Keyflow(url, workers=0) as b:

        @a.job(retries=1, backoff=0.5)
        async def flaky(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                failed_once.set()
                raise RuntimeError("once")
            return ctx.attempt

        b.job("flaky", retries=1, backoff=0.5)(flaky.handler)  # the same job everywhere
        result = await b.trigger("flaky")
        await failed_once.wait()
        await b.pause(job="flaky")  # while a holds the run in its retry backoff
        await b.run_until_idle(timeout=30)  # the retry came due and is held, not run
        assert attempts == [1]
        await b.resume(job="flaky")
        run = await b.wait(result.run_id, timeout=30)
    assert run.status is RunStatus.COMPLETED
    assert attempts == [1, 2]


async def test_a_stop_keeps_the_lease_of_a_handler_that_ignores_it_until_it_ends(
    url: str,
) -> None:
    story: list[str] = []
    started = asyncio.Event()
    release = asyncio.Event()

    def stubborn_job(kf: keyflow.Keyflow, name: str) -> None:
        @kf.job("stubborn", concurrency_key=lambda i: "k")
        async def stubborn(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            story.append(f"{name} starts")
            started.set()
            while not release.is_set():
                with contextlib.suppress(asyncio.CancelledError):  # it ignores every cancel
                    await release.wait()
            story.append(f"{name} ends")

    a = keyflow.Keyflow(url, workers=1, cancel_grace=0.2)
    b = keyflow.Keyflow(url, workers=1)
    stubborn_job(a, "a")
    stubborn_job(b, "b")
    await a.start()
    result = await a.trigger("stubborn")
    await started.wait()
    await a.stop(grace=0.1)  # returns; the handler goes on, abandoned
    async with b:
        with pytest.raises(keyflow.WaitTimeoutError):  # b claims at start, and hears
            await b.wait(result.run_id, timeout=1.0)  # notices: a second is plenty
        assert story == ["a starts"]  # b did not take the run while a's handler ran
        release.set()
        await a.stop()  # waits for the abandoned handler, then hands the run over
        run = await b.wait(result.run_id, timeout=30)
    assert run.status is RunStatus.COMPLETED
    assert story[:3] == ["a starts", "a ends", "b starts"]


async def test_a_cancel_trigger_from_elsewhere_ends_a_run_in_its_retry_backoff(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The backoff keeps the run's lease; a ``"cancel"`` trigger in another process
    cancels the run at once and takes the lease back: the leasing process drops it
    quietly (no false "lost its lease"), and it never runs again."""
    attempts: list[str] = []
    failed = asyncio.Event()
    backoff = RunStatus.SCHEDULED  # a retry waits
    async with (
        keyflow.Keyflow(url, workers=2) as a,
        keyflow.Keyflow(url, workers=0) as b,
    ):
        for kf in (a, b):

            @kf.job("flaky", concurrency_key="k", retries=3, backoff=30.0)
            async def flaky(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
                attempts.append(ctx.run_id)
                if input.get("fail"):
                    failed.set()
                    raise RuntimeError("first attempt fails")

        async with b.events() as events:
            first = await b.trigger("flaky", {"fail": True})
            async for event in events:  # told from the database: the backoff is stored
                run = event.run if isinstance(event, RunChanged) else None
                if run is not None and (run.id, run.status) == (first.run_id, backoff):
                    break
        assert failed.is_set()
        second = await b.trigger("flaky", {}, coalesce=Coalesce("cancel"))
        assert second.disposition is Disposition.CREATED  # the backoff's slot is free
        assert (await b.wait(second.run_id, timeout=30)).status is RunStatus.COMPLETED
        cancelled = await a.wait(first.run_id, timeout=30)
        assert cancelled.status is RunStatus.CANCELLED
        stored = await a.get_run(first.run_id)
        assert stored is not None
        assert stored.status is RunStatus.CANCELLED
    assert attempts == [first.run_id, second.run_id]
    assert "lost its lease" not in caplog.text


@pytest.mark.parametrize("mode", ["shared", "single"])
async def test_sslmode_reaches_the_server(url: str, mode: str) -> None:
    """This server has no TLS: ``disable`` connects, ``require`` fails to, clearly."""
    url = url.replace("&lease=2", "") + f"&mode={mode}"
    async with keyflow.Keyflow(f"{url}&sslmode=disable", workers=1) as kf:

        @kf.job("plain")
        async def plain(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
            return "ok"

        assert (await kf.trigger_and_wait("plain", timeout=30)).output == "ok"
    with pytest.raises(keyflow.StorageError, match=r"(?i)ssl"):
        async with keyflow.Keyflow(f"{url}&sslmode=require", workers=0):
            pass


async def test_a_cancel_is_told_once_to_the_process_that_made_it(pair: Any) -> None:
    """The canceller tells its subscribers at once; the notice's read that follows
    brings the same run again, and is not told a second time (as a new run)."""
    _a, b, gate = pair
    told: list[tuple[str, RunStatus | None, RunStatus]] = []
    async with b.events() as events:
        first = await b.trigger("work", {"key": "k"})
        await gate.started.wait()  # running: the next trigger queues behind it
        second = await b.trigger("work", {"key": "k"})
        assert second.disposition is Disposition.QUEUED
        assert (await b.cancel(second.run_id)).status is RunStatus.CANCELLED
        gate.open.set()  # the first ends after the cancel: its end is told after it
        async for event in events:
            if isinstance(event, RunChanged):
                told.append((event.run.id, event.previous, event.run.status))
                if event.run.id == first.run_id and event.run.status.is_terminal:
                    break
    assert [(p, s) for run_id, p, s in told if run_id == second.run_id] == [
        (None, RunStatus.QUEUED),
        (RunStatus.QUEUED, RunStatus.CANCELLED),
    ]


async def test_a_join_made_here_is_told_here_before_the_trigger_returns(pair: Any) -> None:
    """The decision's own copy of the joined run is told: no read of the notice needed,
    even for a run made before the subscription (never told before)."""
    _a, b, gate = pair
    await b.trigger("work", {"key": "k"})
    await gate.started.wait()  # running elsewhere: the next trigger queues
    queued = await b.trigger("work", {"key": "k"})
    async with b.events() as events:
        joined = await b.trigger("work", {"key": "k"})
        assert joined.disposition is Disposition.COALESCED
        told = []
        while (event := events.get_nowait()) is not None:
            told.append(event)
    coalesced = [e for e in told if isinstance(e, TriggerCoalesced)]
    assert [e.run_id for e in coalesced] == [queued.run_id]
    assert coalesced[0].trigger_count == 2
    gate.open.set()
