"""Handlers and user callables that misbehave (issue: reliability).

Whatever a handler or a user function does (raise something odd, ignore its
cancellation, outlive its timeout), its run reaches a terminal status, no worker is
lost, nothing hangs, and ``stop()`` stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.cli import read_only_url
from keyflow.storage_backends import open_backend

from .conftest import MakeKeyflow


class Exotic(BaseException):
    """A custom BaseException, as some libraries raise."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def test_a_backoff_function_that_raises_or_returns_junk_fails_the_run(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    def raising(retry: int) -> float:
        raise ZeroDivisionError("oops")

    def junk(retry: int) -> Any:
        return "soon"

    def nan(retry: int) -> float:
        return float("nan")

    runs = []
    for name, backoff in (("raising", raising), ("junk", junk), ("nan", nan)):

        async def failing(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            raise ConnectionError("down")

        kf.job(name, retries=3, backoff=backoff)(failing)
    await kf.start()
    for name in ("raising", "junk", "nan"):
        runs.append(await kf.trigger_and_wait(name, timeout=5))
    for run in runs:
        assert run.status is RunStatus.FAILED
        assert run.attempt == 1  # no retry without a valid delay
        assert run.errors[0].type == "ConnectionError"
        assert "no retry: " in run.errors[-1].message
        assert "backoff function" in run.errors[-1].message
    assert kf.statistics().unfinished["running"] == 0


async def test_a_lane_limit_function_that_raises_or_returns_zero_leaves_nothing(
    make_keyflow: MakeKeyflow,
) -> None:
    def limit(key: str) -> int:
        if key == "boom":
            raise KeyError(key)
        return 0 if key == "zero" else 1

    kf = make_keyflow(lane_limit=limit)

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    for key, message in (("boom", "lane_limit function failed"), ("zero", "returned 0")):
        with pytest.raises(keyflow.ConfigurationError, match=message):
            await job.trigger({}, concurrency_key=key)
        with pytest.raises(keyflow.ConfigurationError):
            await kf.batch_trigger([keyflow.TriggerRequest("job", concurrency_key=key)])
    assert await kf.list_runs() == []
    assert kf.keys() == []
    assert not any(kf.statistics().unfinished.values())
    await job.trigger({}, concurrency_key="fine")
    await kf.run_until_idle(timeout=5)  # nothing was left behind to wait for


async def test_a_handler_returning_after_its_timeout_fails_the_attempt(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job(timeout=0.01, retries=1, backoff=0)
    async def stubborn(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        with contextlib.suppress(asyncio.CancelledError):  # it returns as if nothing happened
            await asyncio.Event().wait()
        return "too late"

    await kf.start()
    run = await stubborn.trigger_and_wait({}, timeout=10)
    assert run.status is RunStatus.FAILED
    assert run.output is None
    assert [e.type for e in run.errors] == ["TimeoutError", "TimeoutError"]
    assert "exceeded its timeout of 0.01s" in run.errors[0].message


async def test_odd_exceptions_fail_their_attempt_and_keep_the_worker(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(workers=1)

    @kf.job()
    async def odd(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        kind = input["kind"]
        if kind == "exotic":
            raise Exotic("not an Exception")
        if kind == "unprintable":
            raise Unprintable()
        if kind == "own-cancel":  # not a cancel of the run: the handler's own error
            raise asyncio.CancelledError("a library's")
        if kind == "group":
            raise BaseExceptionGroup("several", [Exotic("a"), ValueError("b")])
        return "fine"

    await kf.start()
    kinds = ["exotic", "unprintable", "own-cancel", "group", "fine"]
    runs = [await odd.trigger_and_wait({"kind": kind}, timeout=5) for kind in kinds]
    assert [r.status for r in runs] == [RunStatus.FAILED] * 4 + [RunStatus.COMPLETED]
    assert runs[0].errors[0].type == "Exotic"
    assert "cannot be printed" in runs[1].errors[0].message
    assert runs[2].errors[0].type == "CancelledError"
    assert runs[3].errors[0].type == "BaseExceptionGroup"
    await kf.stop()  # re-raises nothing


async def test_a_handler_that_ignores_cancel_frees_its_worker_but_keeps_its_slot(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(workers=1, cancel_grace=0.05)
    release = asyncio.Event()
    ignored = asyncio.Event()
    started = asyncio.Event()

    @kf.job(concurrency_key="k")
    async def deaf(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                ignored.set()
        return "finished anyway"

    @kf.job()
    async def other(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        return "ran"

    await kf.start()
    try:  # a failure below must not leave a handler that ignores every cancel
        deaf_run = await deaf.trigger({})
        behind = await deaf.trigger({})  # same lane: must not start while deaf runs
        await started.wait()
        returned = await kf.cancel(deaf_run.run_id)  # bounded by cancel_grace
        assert ignored.is_set()
        assert returned.status is RunStatus.RUNNING
        # The only worker was replaced: other work runs meanwhile ...
        assert (await other.trigger_and_wait({}, timeout=5)).output == "ran"
        # ... but the lane is still held: exclusion holds while the handler lives on.
        assert kf.lane("k").running == (deaf_run.run_id,)
        still = await kf.get_run(behind.run_id)
        assert still is not None
        assert still.status is RunStatus.QUEUED
        release.set()
        done = await kf.wait(deaf_run.run_id, timeout=5)
        assert done.status is RunStatus.CANCELLED
        assert (await kf.wait(behind.run_id, timeout=5)).status is RunStatus.COMPLETED
        assert kf.statistics().workers == 1
    finally:
        release.set()


async def test_stop_is_bounded_by_a_handler_that_swallows_cancellation(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    kf = make_keyflow(workers=2, cancel_grace=0.05)
    started = asyncio.Event()
    stop_forever = asyncio.Event()

    @kf.job(concurrency_key="k")
    async def deaf(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        while not stop_forever.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await stop_forever.wait()

    await kf.start()
    result = await deaf.trigger({})
    await started.wait()
    await asyncio.wait_for(kf.stop(grace=0.01), timeout=10)
    assert not kf.running
    stop_forever.set()  # let the abandoned handler end, as the test loop closes
    await asyncio.sleep(0)
    # The run went back to its lane (stored so), to run again after a restart.
    if storage_url == "memory://":
        run = await kf.get_run(result.run_id)
    else:
        reader = open_backend(read_only_url(storage_url), retention=100)
        await reader.open()
        run = await reader.get_run(result.run_id)
        await reader.close()
    assert run is not None
    assert run.status is RunStatus.PENDING
    assert run.interruptions == 1


async def test_a_cancelled_stop_returns_control_and_stops_in_the_background(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(cancel_grace=5)
    started = asyncio.Event()
    release = asyncio.Event()

    @kf.job()
    async def slow(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await release.wait()
        await release.wait()  # ignores the stop's cancellation for a while

    await kf.start()
    await slow.trigger({})
    await started.wait()
    stopping = asyncio.ensure_future(kf.stop(grace=0))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(stopping), timeout=0.05)
    stopping.cancel()  # the caller gives up: stop() itself must not swallow that
    with pytest.raises(asyncio.CancelledError):
        await stopping
    release.set()
    await asyncio.wait_for(kf.stop(), timeout=10)  # a later stop() waits for the first
    assert not kf.running


async def test_subscriptions_made_after_stop_end_at_once(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    await kf.start()
    await kf.stop()
    events = [event async for event in kf.events()]
    changes = [change async for change in kf.changes()]
    assert events == []
    assert changes == []


async def test_a_subscription_made_before_start_hears_the_runs(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    events = kf.events()
    await kf.start()
    await job.trigger_and_wait({}, timeout=5)
    await kf.stop()
    kinds = [type(event).__name__ async for event in events]
    assert "RunChanged" in kinds


@pytest.mark.parametrize("retention", [0, 3])
async def test_trigger_and_wait_gets_its_run_even_when_retention_prunes_it_at_once(
    make_keyflow: MakeKeyflow, retention: int
) -> None:
    kf = make_keyflow(retention=retention, workers=8)

    @kf.job()
    async def quick(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
        return int(input["n"])

    await kf.start()
    runs = await asyncio.gather(*(quick.trigger_and_wait({"n": n}, timeout=20) for n in range(200)))
    assert [run.output for run in runs] == list(range(200))
    assert {run.status for run in runs} == {RunStatus.COMPLETED}


async def test_trigger_and_wait_on_a_coalesced_trigger_returns_the_joined_run(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(retention=0)
    release = asyncio.Event()

    @kf.job(concurrency_key="k", coalesce="skip")
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        await release.wait()
        return "done"

    await kf.start()
    first = await job.trigger({})
    async with kf.events() as events:
        waiting = asyncio.ensure_future(job.trigger_and_wait({}, timeout=10))
        async for event in events:
            if isinstance(event, keyflow.TriggerCoalesced):
                break
    release.set()
    joined = await waiting
    assert (joined.id, joined.status, joined.output) == (first.run_id, RunStatus.COMPLETED, "done")
