"""Pause and resume a job or a lane (issue: dashboard operator tools)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import keyflow
from keyflow import Disposition, RunStatus

from .conftest import MakeKeyflow


async def test_a_paused_lane_takes_and_coalesces_triggers_but_starts_nothing(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(workers=2)
    started: list[str] = []

    @kf.job(concurrency_key="k", coalesce="queue")
    async def process(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.append(ctx.run_id)

    @kf.job()
    async def elsewhere(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        return "ran"

    await kf.start()
    await kf.pause(key="k")
    assert kf.lane("k").paused
    assert kf.paused().keys == {"k"}
    first = await process.trigger({"n": 1})
    joined = await process.trigger({"n": 2})
    assert joined.disposition is Disposition.COALESCED  # triggers coalesce as usual
    assert joined.run_id == first.run_id
    assert (await kf.trigger_and_wait("elsewhere", {}, timeout=5)).output == "ran"
    assert started == []
    run = await kf.get_run(first.run_id)
    assert run is not None
    assert run.status is not RunStatus.RUNNING
    await kf.resume(key="k")
    assert not kf.lane("k").paused
    done = await kf.wait(first.run_id, timeout=5)
    assert done.status is RunStatus.COMPLETED
    assert done.input == {"n": 2}
    assert started == [first.run_id]


async def test_a_paused_job_starts_none_of_its_runs_and_a_running_one_goes_on(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(workers=3)
    release = asyncio.Event()
    running = asyncio.Event()
    done: list[int] = []

    @kf.job()
    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        if input["n"] == 0:
            running.set()
            await release.wait()
        done.append(input["n"])

    await kf.start()
    long = await work.trigger({"n": 0})
    await running.wait()
    await kf.pause(job="work")
    later = [await work.trigger({"n": n}) for n in (1, 2)]
    release.set()
    assert (await kf.wait(long.run_id, timeout=5)).status is RunStatus.COMPLETED
    assert done == [0]
    assert kf.statistics().paused.jobs == {"work"}
    await kf.resume(job="work")
    for result in later:
        assert (await kf.wait(result.run_id, timeout=5)).status is RunStatus.COMPLETED
    assert sorted(done) == [0, 1, 2]


async def test_a_pause_survives_a_restart(make_keyflow: MakeKeyflow, storage_url: str) -> None:
    if storage_url == "memory://":
        pytest.skip("memory storage forgets everything at a restart")
    kf = make_keyflow()
    kf.job("work")(_noop)
    await kf.start()
    await kf.pause(key="k")
    waiting = await kf.trigger("work", {}, concurrency_key="k")
    await kf.stop()
    again = make_keyflow()
    again.job("work")(_noop)
    await again.start()
    assert again.paused().keys == {"k"}
    run = await again.get_run(waiting.run_id)
    assert run is not None
    assert not run.is_terminal
    await again.resume(key="k")
    assert (await again.wait(waiting.run_id, timeout=5)).status is RunStatus.COMPLETED
    await again.stop()
    third = make_keyflow()
    await third.start()
    assert third.paused().keys == frozenset()


async def test_pause_needs_exactly_one_target(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    await kf.start()
    with pytest.raises(keyflow.ConfigurationError, match="exactly one"):
        await kf.pause()
    with pytest.raises(keyflow.ConfigurationError, match="exactly one"):
        await kf.pause(job="a", key="b")
    with pytest.raises(keyflow.ConfigurationError, match="key"):
        await kf.pause(key="")


async def test_run_until_idle_and_async_with_do_not_wait_for_paused_runs(
    make_keyflow: MakeKeyflow,
) -> None:
    """Runs a pause holds back wait for a resume: idleness must not wait for them."""
    kf = make_keyflow(workers=2)
    ran: list[str] = []

    @kf.job(concurrency_key="k")
    async def held(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ran.append("held")

    @kf.job(concurrency_key="k")
    async def behind(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ran.append("behind")  # same lane, not paused itself: it waits behind the held run

    @kf.job()
    async def free(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ran.append("free")

    await kf.start()
    await kf.pause(job="held")
    first = await held.trigger({})
    second = await behind.trigger({})
    await free.trigger({})
    await kf.run_until_idle(timeout=10)  # returns: only paused work is left
    assert ran == ["free"]
    for run_id in (first.run_id, second.run_id):
        run = await kf.get_run(run_id)
        assert run is not None
        assert not run.is_terminal
    await kf.resume(job="held")
    await kf.run_until_idle(timeout=10)
    assert ran == ["free", "held", "behind"]


async def test_leaving_async_with_does_not_wait_for_a_paused_lane(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(workers=1)
    kf.job("process", concurrency_key="k")(_noop)
    async with kf:
        await kf.pause(key="k")
        await kf.trigger("process", {})
        await asyncio.wait_for(kf.run_until_idle(), 10)
    assert not kf.running


async def _noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None
