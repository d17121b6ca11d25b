"""A claim in shared mode is two statements (lease, then start): what happens between
them, and leases a process holds without knowing it (a reply lost after a commit)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import Disposition, RunStatus, StorageError
from keyflow.shared.backend import SharedPostgreSQLBackend
from keyflow.shared.coordinator import SharedCoordinator

from .pg import drop_schemas, postgres_url, schema_for

pytestmark = pytest.mark.timeout(120)

Start = Callable[[list[Any]], Awaitable[set[str]]]


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A fresh schema in shared mode, short leases (a sweep for orphans each second)."""
    found = postgres_url(tmp_path) + "&lease=2"
    yield found
    drop_schemas(schema_for(tmp_path))


def _coordinator(kf: keyflow.Keyflow) -> SharedCoordinator:
    backend = kf._backend
    assert isinstance(backend, SharedPostgreSQLBackend)
    return backend.coordinator


def _between_claim_and_start(
    kf: keyflow.Keyflow, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], Awaitable[None]]
) -> None:
    """Run ``meanwhile`` once, after ``kf``'s next claim leased runs, before it starts them."""
    coordinator = _coordinator(kf)
    start: Start = coordinator._start
    done = False

    async def late_start(starts: list[Any]) -> set[str]:
        nonlocal done
        if starts and not done:
            done = True
            await meanwhile()
        return await start(starts)

    monkeypatch.setattr(coordinator, "_start", late_start)


def _jobs(kf: keyflow.Keyflow, ran: list[dict[str, Any]]) -> None:
    @kf.job("work", concurrency_key=lambda i: "k", coalesce="queue")
    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ran.append(input)


async def test_a_trigger_that_joins_a_claimed_run_before_its_start_is_in_that_run(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        producer = keyflow.Keyflow(url, workers=0)
        worker = keyflow.Keyflow(url, workers=1)
        _jobs(producer, ran)
        _jobs(worker, ran)
        joined: list[keyflow.TriggerResult] = []

        async def join() -> None:
            joined.append(await producer.trigger("work", {"n": 2}))

        _between_claim_and_start(worker, monkeypatch, join)
        await stack.enter_async_context(producer)
        first = await producer.trigger("work", {"n": 1})
        await stack.enter_async_context(worker)
        run = await producer.wait(first.run_id, timeout=60)
        await worker.run_until_idle(timeout=60)
    # The second trigger joined the leased, not yet started run: it ran once, with the
    # newest input, and counts both triggers.
    assert [j.disposition for j in joined] == [Disposition.COALESCED]
    assert joined[0].run_id == first.run_id
    assert run.status is RunStatus.COMPLETED
    assert run.trigger_count == 2
    assert ran == [{"n": 2}]


async def test_a_cancel_of_a_claimed_run_before_its_start_cancels_it_unrun(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        producer = keyflow.Keyflow(url, workers=0)
        worker = keyflow.Keyflow(url, workers=1)
        _jobs(producer, ran)
        _jobs(worker, ran)
        await stack.enter_async_context(producer)

        async def cancel() -> None:  # as producer.cancel() does, without its wait
            coordinator = _coordinator(producer)
            asked = await coordinator.cancel_run(result.run_id, lambda key: 1, 0.0)
            assert asked == "requested"  # the run is leased: its worker is asked

        _between_claim_and_start(worker, monkeypatch, cancel)
        result = await producer.trigger("work", {"n": 1})
        await stack.enter_async_context(worker)
        run = await producer.wait(result.run_id, timeout=60)
        assert run.status is RunStatus.CANCELLED
        # The lane is free again: the next trigger runs.
        second = await producer.trigger("work", {"n": 2})
        assert (await producer.wait(second.run_id, timeout=60)).status is RunStatus.COMPLETED
    assert ran == [{"n": 2}]


async def test_a_start_whose_reply_was_lost_is_given_back_and_runs_as_the_same_attempt(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []
    async with keyflow.Keyflow(url, workers=0) as producer:
        worker = keyflow.Keyflow(url, workers=1)

        @worker.job("once")
        async def once(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            ran.append(ctx.attempt)

        producer.job("once")(once.handler)  # the same job everywhere

        coordinator = _coordinator(worker)
        start: Start = coordinator._start
        lost = False

        async def start_then_lose_the_reply(starts: list[Any]) -> set[str]:
            nonlocal lost
            started = await start(starts)  # committed
            if started and not lost:
                lost = True
                raise StorageError("connection lost (as if the reply never came)")
            return started

        monkeypatch.setattr(coordinator, "_start", start_then_lose_the_reply)
        result = await producer.trigger("once")
        async with worker:
            run = await producer.wait(result.run_id, timeout=60)
    assert lost
    assert run.status is RunStatus.COMPLETED
    assert ran == [1]  # it never ran before: the same attempt, and no crash counted
    assert run.attempt == 1
    assert "a reply from the database was lost" in caplog.text


async def test_a_pending_lease_nobody_knows_of_is_given_back(url: str) -> None:
    ran: list[int] = []
    async with keyflow.Keyflow(url, workers=0) as producer:
        worker = keyflow.Keyflow(url, workers=1)

        @worker.job("once")
        async def once(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            ran.append(ctx.attempt)

        producer.job("once")(once.handler)  # the same job everywhere

        result = await producer.trigger("once")
        owner = _coordinator(worker).owner
        # Leased to the worker behind its back (its claim's reply lost), for an hour.
        await _coordinator(producer).execute(
            "UPDATE keyflow_runs SET lease_owner = $1, generation = generation + 1, "
            "lease_until = clock_timestamp() + interval '1 hour' WHERE id = $2",
            owner,
            result.run_id,
        )
        async with worker:
            run = await producer.wait(result.run_id, timeout=60)
    assert run.status is RunStatus.COMPLETED
    assert ran == [1]


async def test_a_claim_runs_the_oldest_first_and_each_run_once(url: str) -> None:
    ran: list[int] = []
    async with keyflow.Keyflow(url, workers=0) as producer:
        workers = [keyflow.Keyflow(url, workers=3) for _ in range(3)]
        for kf in (producer, *workers):

            @kf.job("noop")
            async def noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
                ran.append(int(input["n"]))

        results = await producer.batch_trigger(
            [keyflow.TriggerRequest("noop", {"n": n}) for n in range(60)]
        )
        async with AsyncExitStack() as stack:
            for kf in workers:
                await stack.enter_async_context(kf)
            await asyncio.gather(*(producer.wait(r.run_id, timeout=60) for r in results))
    assert sorted(ran) == list(range(60))
