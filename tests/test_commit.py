"""Durability through a disk-like fake backend: group commit, rollback, retried writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import keyflow
from keyflow import Disposition, RunStatus

from .conftest import MakeKeyflow
from .fakes import DiskLikeBackend


@pytest.fixture
def storage_url() -> str:
    return "memory://"  # unused: these tests bring their own backend


@pytest.fixture
def backend() -> DiskLikeBackend:
    return DiskLikeBackend()


async def start(
    make_keyflow: MakeKeyflow, backend: DiskLikeBackend, **jobs: Any
) -> keyflow.Keyflow:
    kf = make_keyflow(storage=backend)
    for name, handler in jobs.items():
        kf.job(name)(handler)
    await kf.start()
    return kf


async def get(kf: keyflow.Keyflow, run_id: str) -> keyflow.Run:
    run = await kf.get_run(run_id)
    assert run is not None
    return run


async def echo(ctx: keyflow.RunContext, input: dict[str, Any]) -> dict[str, Any]:
    return input


async def test_failed_write_raises_and_leaves_no_trace(
    make_keyflow: MakeKeyflow, backend: DiskLikeBackend
) -> None:
    kf = await start(make_keyflow, backend, echo=echo)
    backend.fail = True
    with pytest.raises(keyflow.StorageError, match="No space left"):
        await kf.trigger("echo", {"n": 1}, concurrency_key="k", idempotency_key="once")
    assert await kf.list_runs() == []
    assert kf.keys() == []
    stats = kf.statistics()
    assert stats.triggers.total == 0
    assert not any(stats.unfinished.values())
    assert stats.storage_error is not None
    backend.fail = False
    result = await kf.trigger("echo", {"n": 2}, concurrency_key="k", idempotency_key="once")
    assert result.disposition is Disposition.CREATED  # the failed trigger left no key behind
    await kf.run_until_idle(timeout=5)
    assert (await kf.wait(result.run_id)).output == {"n": 2}
    assert backend.statuses[result.run_id] is RunStatus.COMPLETED


async def test_a_coalesced_trigger_fails_with_the_run_it_joined(
    make_keyflow: MakeKeyflow, backend: DiskLikeBackend
) -> None:
    kf = await start(make_keyflow, backend, echo=echo)
    backend.hold = asyncio.Event()
    creating = asyncio.ensure_future(
        kf.trigger("echo", {"n": 1}, concurrency_key="k", coalesce="queue")
    )
    joining = asyncio.ensure_future(
        kf.trigger("echo", {"n": 2}, concurrency_key="k", coalesce="queue")
    )
    await backend.writing.wait()
    backend.fail = True
    backend.hold.set()
    for attempt in (creating, joining):
        with pytest.raises(keyflow.StorageError):
            await attempt
    assert kf.keys() == []
    assert await kf.list_runs() == []


async def test_concurrent_triggers_share_one_commit(
    make_keyflow: MakeKeyflow, backend: DiskLikeBackend
) -> None:
    kf = await start(make_keyflow, backend, echo=echo)
    backend.hold = asyncio.Event()
    first = asyncio.ensure_future(kf.trigger("echo", {"n": -1}))
    await backend.writing.wait()
    many = [
        asyncio.ensure_future(kf.trigger("echo", {"n": n}, concurrency_key=f"k{n}"))
        for n in range(50)
    ]
    await asyncio.sleep(0)
    assert not any(t.done() for t in many)  # none acknowledged before its write
    backend.hold.set()
    results = await asyncio.gather(first, *many)
    assert len({r.run_id for r in results}) == 51
    assert backend.writes[0] == 1
    assert backend.writes[1] >= 50  # the 50 arrived during one write: all in the next batch
    await kf.run_until_idle(timeout=5)


async def test_execution_changes_are_retried_until_written(
    make_keyflow: MakeKeyflow, backend: DiskLikeBackend
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        started.set()
        await release.wait()
        return "done"

    kf = await start(make_keyflow, backend, job=job)
    result = await kf.trigger("job")
    await started.wait()
    backend.fail = True
    release.set()
    run = await kf.wait(result.run_id, timeout=5)
    assert run.status is RunStatus.COMPLETED  # memory moved on
    assert backend.statuses[result.run_id] is not RunStatus.COMPLETED
    backend.fail = False
    await kf.run_until_idle(timeout=5)  # waits for the pipeline, which retries
    assert backend.statuses[result.run_id] is RunStatus.COMPLETED


async def test_a_run_never_executes_an_input_that_was_rolled_back(
    make_keyflow: MakeKeyflow, backend: DiskLikeBackend
) -> None:
    release_first = asyncio.Event()
    first_started = asyncio.Event()
    seen: list[dict[str, Any]] = []

    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        seen.append(input)
        if input["n"] == 1:
            first_started.set()
            await release_first.wait()

    kf = await start(make_keyflow, backend, job=job)
    await kf.trigger("job", {"n": 1}, concurrency_key="k", coalesce="queue")
    await first_started.wait()
    follow = await kf.trigger("job", {"n": 2}, concurrency_key="k", coalesce="queue")
    backend.writing.clear()
    backend.hold = asyncio.Event()
    joining = asyncio.ensure_future(
        kf.trigger("job", {"n": 3}, concurrency_key="k", coalesce="queue")
    )
    await backend.writing.wait()  # joined in memory, not yet durable
    assert (await get(kf, follow.run_id)).trigger_count == 2
    async with kf.events() as events:
        release_first.set()  # the follow-up starts while the join is not durable
        async for event in events:
            if (
                isinstance(event, keyflow.RunChanged)
                and event.run.id == follow.run_id
                and event.run.status is RunStatus.RUNNING
            ):
                break
    backend.fail = True
    backend.hold.set()
    with pytest.raises(keyflow.StorageError):
        await joining
    backend.fail = False
    backend.hold = None
    await kf.run_until_idle(timeout=5)
    assert seen == [{"n": 1}, {"n": 2}]
    run = await kf.get_run(follow.run_id)
    assert run is not None
    assert run.trigger_count == 1


class SlowLookups(DiskLikeBackend):
    """The first idempotency lookup answers what storage held when it was asked, but
    only once ``answer`` is set (a slow disk, a busy database)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.asked = asyncio.Event()

    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        found = await super().find_idempotent(job, idempotency_key)
        if not self.asked.is_set():
            self.asked.set()
            await self.answer.wait()
        return found


async def test_a_key_whose_run_ran_and_ended_during_a_lookup_is_not_run_again(
    make_keyflow: MakeKeyflow,
) -> None:
    # One trigger asks storage about its key; meanwhile another with the same key makes
    # the run, which is stored, runs and ends (memory forgets it). The first answer,
    # "no such key", is stale: the trigger must still find that run, not make another.
    backend = SlowLookups()
    kf = make_keyflow(storage=backend)
    kf.job("echo")(echo)
    await kf.start()
    late = asyncio.ensure_future(kf.trigger("echo", {"n": 1}, idempotency_key="once"))
    await backend.asked.wait()
    first = await kf.trigger("echo", {"n": 2}, idempotency_key="once")
    assert first.disposition is Disposition.CREATED
    assert (await kf.wait(first.run_id)).status is RunStatus.COMPLETED
    backend.answer.set()
    result = await late
    assert (result.run_id, result.disposition) == (first.run_id, Disposition.IDEMPOTENT)
    await kf.run_until_idle(timeout=5)
    assert [run.id for run in await kf.list_runs()] == [first.run_id]
