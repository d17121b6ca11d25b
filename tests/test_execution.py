"""Workers, retries, timeouts, cancel, stop, context and queries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import keyflow
from keyflow import Backoff, RunStatus
from keyflow.testing import VirtualClock

from .conftest import MakeKeyflow, get_run_after_stop, shared_differs


async def test_retries_with_backoff_then_success(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    kf = make_keyflow()
    attempts: list[tuple[int, float]] = []

    @kf.job(retries=3, backoff=Backoff(initial=10, factor=2, jitter=0))
    async def flaky(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        attempts.append((ctx.attempt, clock.now()))
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return "ok"

    await kf.start()
    start = clock.now()
    result = await flaky.trigger({})
    await kf.run_until_idle(timeout=5)  # the virtual clock skips the backoffs
    run = await kf.wait(result.run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == "ok"
    assert run.attempt == 3
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert [t - start for _, t in attempts] == pytest.approx([0, 10, 30])  # 10, then 20
    assert [e.attempt for e in run.errors] == [1, 2]
    assert run.errors[0].type == "ConnectionError"
    assert "attempt 1 failed" in run.errors[0].traceback
    assert kf.statistics().retried == 2


async def test_retries_used_up_fail_the_run(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    @kf.job(retries=1, backoff=0)
    async def broken(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        raise ValueError("always")

    await kf.start()
    run = await broken.trigger_and_wait(timeout=5)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 2
    assert run.error == "ValueError: always"
    assert len(run.errors) == 2
    assert kf.statistics().failed == 1


async def test_retry_request_with_its_own_delay(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    kf = make_keyflow()
    times: list[float] = []

    @kf.job(retries=2)
    async def polite(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
        times.append(clock.now())
        if ctx.attempt == 1:
            raise keyflow.Retry(delay=42)
        return ctx.attempt

    await kf.start()
    result = await polite.trigger()
    await kf.run_until_idle(timeout=5)
    run = await kf.wait(result.run_id)
    assert run.output == 2
    assert times[1] - times[0] == pytest.approx(42)
    assert run.errors[0].type == "Retry"


async def test_retry_keeps_the_lane_slot(make_keyflow: MakeKeyflow, clock: VirtualClock) -> None:
    kf = make_keyflow()
    order: list[str] = []

    @kf.job(retries=1, backoff=30)
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        order.append(f"{input['name']}#{ctx.attempt}")
        if input["name"] == "first" and ctx.attempt == 1:
            raise RuntimeError("again")

    await kf.start()
    await job.trigger({"name": "first"}, concurrency_key="k")
    await job.trigger({"name": "second"}, concurrency_key="k")
    await kf.run_until_idle(timeout=5)
    assert order == ["first#1", "first#2", "second#1"]


async def test_timeout_fails_the_attempt(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    never = asyncio.Event()

    @kf.job(timeout=0.05)
    async def slow(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        await never.wait()

    await kf.start()
    run = await slow.trigger_and_wait(timeout=5)
    assert run.status is RunStatus.FAILED
    assert run.errors[0].type == "TimeoutError"
    assert "timeout of 0.05s" in run.errors[0].message


async def test_a_handler_raising_timeout_itself_is_not_reported_as_ours(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job(timeout=10)
    async def own(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        raise TimeoutError("upstream timed out")

    await kf.start()
    run = await own.trigger_and_wait(timeout=5)
    assert run.errors[0].message == "upstream timed out"


async def test_handler_errors_never_kill_workers(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow(workers=1)

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> Any:
        if input["kind"] == "raise":
            raise KeyError("missing")
        if input["kind"] == "not-json":
            return {1, 2}
        return input["kind"]

    await kf.start()
    runs = [await job.trigger({"kind": k}) for k in ("raise", "not-json", "fine")]
    await kf.run_until_idle(timeout=5)
    done = [await kf.wait(r.run_id) for r in runs]
    assert [r.status for r in done] == [RunStatus.FAILED, RunStatus.FAILED, RunStatus.COMPLETED]
    assert "KeyError" in done[0].errors[0].traceback
    assert "not JSON" in (done[1].error or "")
    assert done[2].output == "fine"


async def test_handler_gets_a_copy_of_its_input(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    @kf.job()
    async def mutate(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        input["items"].append("handler")

    await kf.start()
    data = {"items": ["caller"]}
    result = await mutate.trigger(data)
    data["items"].append("caller-later")
    run = await kf.wait(result.run_id, timeout=5)
    assert run.input == {"items": ["caller"]}


async def test_cancel_waiting_and_running_runs(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    started = asyncio.Event()
    cleaned_up: list[str] = []

    @kf.job()
    async def long(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.append(ctx.run_id)

    await kf.start()
    running = await long.trigger({}, concurrency_key="k")
    waiting = await long.trigger({}, concurrency_key="k")
    await started.wait()
    cancelled = await kf.cancel(waiting.run_id)
    assert cancelled.status is RunStatus.CANCELLED
    assert kf.lane("k").waiting == ()
    stopped = await kf.cancel(running.run_id)
    assert stopped.status is RunStatus.CANCELLED
    assert cleaned_up == [running.run_id]
    assert (await kf.cancel(running.run_id)).status is RunStatus.CANCELLED  # no-op now
    assert kf.lane("k").state == "idle"
    assert kf.statistics().cancelled == 2
    # the worker survived its task's cancellation
    started.clear()
    follow = await long.trigger({}, concurrency_key="k")
    await started.wait()
    await kf.cancel(follow.run_id)


async def test_wait_errors(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    never = asyncio.Event()

    @kf.job()
    async def hang(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        await never.wait()

    await kf.start()
    with pytest.raises(keyflow.RunNotFoundError):
        await kf.wait("nope")
    with pytest.raises(keyflow.RunNotFoundError):
        await kf.cancel("nope")
    with pytest.raises(keyflow.RunNotFoundError):
        await kf.retrigger("nope")
    result = await hang.trigger()
    with pytest.raises(keyflow.WaitTimeoutError):
        await kf.wait(result.run_id, timeout=0.01)
    with pytest.raises(TimeoutError):  # WaitTimeoutError is a TimeoutError too
        await kf.wait(result.run_id, timeout=0.01)
    assert await kf.get_run("nope") is None


async def test_retrigger_runs_the_same_input_again(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    seen: list[dict[str, Any]] = []

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        seen.append(input)

    await kf.start()
    first = await job.trigger({"org": "acme"}, concurrency_key="k", labels={"org": "acme"})
    await kf.run_until_idle()
    again = await kf.retrigger(first.run_id)
    assert again.run_id != first.run_id
    await kf.run_until_idle()
    run = await kf.get_run(again.run_id)
    assert run is not None
    assert run.labels == {"org": "acme"}
    assert run.concurrency_key == "k"
    assert seen == [{"org": "acme"}, {"org": "acme"}]


async def test_context_progress_logs_and_chained_triggers(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    @kf.job()
    async def parent(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        ctx.progress(1, 4, "fetching")
        ctx.log.info("fetched", repos=3)
        ctx.log.warning("odd value", value=object())  # not JSON: kept as repr
        ctx.log.error("bad thing")
        with pytest.raises(ValueError, match="finite"):
            ctx.progress(float("nan"))
        child = await ctx.trigger("child", {"from": ctx.run_id})
        return child.run_id

    @kf.job()
    async def child(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    run = await parent.trigger_and_wait(timeout=5)
    assert run.progress is not None
    assert run.progress.fraction == 0.25
    assert run.progress.message == "fetching"
    assert [(e.level, e.message) for e in run.logs] == [
        ("info", "fetched"),
        ("warning", "odd value"),
        ("error", "bad thing"),
    ]
    assert run.logs[0].data == {"repos": 3}
    assert run.logs[1].data["value"].startswith("<object")
    child_run = await kf.wait(run.output, timeout=5)
    assert child_run.parent_run_id == run.id


async def test_lane_limit_allows_n_at_once(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow(workers=8, lane_limit=lambda key: 2 if key.startswith("wide") else 1)
    running = 0
    peak: dict[str, int] = {}
    release = asyncio.Event()
    both_started = asyncio.Event()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        nonlocal running
        running += 1
        key = ctx.concurrency_key or ""
        peak[key] = max(peak.get(key, 0), running)
        if running == 2:
            both_started.set()
        await release.wait()
        running -= 1

    await kf.start()
    for _ in range(4):
        await job.trigger({}, concurrency_key="wide")
    await both_started.wait()
    wide = await kf.get_lane("wide")  # the database's lane on shared storage
    assert len(wide.running) == 2
    assert len(wide.waiting) == 2
    release.set()
    await kf.run_until_idle(timeout=5)
    assert peak["wide"] == 2


async def test_stop_interrupts_after_grace_and_refuses_triggers(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    kf = make_keyflow()
    started = asyncio.Event()

    @kf.job()
    async def stubborn(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    await kf.start()
    result = await stubborn.trigger({}, concurrency_key="k")
    waiting = await stubborn.trigger({}, concurrency_key="k")
    await started.wait()
    await kf.stop(grace=0.01)
    run = await get_run_after_stop(kf, storage_url, result.run_id)
    assert run is not None
    assert run.status is RunStatus.PENDING  # back at the head of its lane
    assert run.interruptions == 1
    still = await get_run_after_stop(kf, storage_url, waiting.run_id)
    assert still is not None
    assert still.status is RunStatus.QUEUED
    assert kf.statistics().interrupted == 1
    with pytest.raises(keyflow.SchedulerNotRunningError, match="stopped"):
        await stubborn.trigger({})
    with pytest.raises(keyflow.SchedulerNotRunningError):
        await kf.start()


async def test_stop_lets_running_handlers_finish_within_grace(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    release = asyncio.Event()
    started = asyncio.Event()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        started.set()
        await release.wait()
        return "done"

    await kf.start()
    result = await job.trigger()
    await started.wait()
    finished = asyncio.ensure_future(kf.wait(result.run_id))
    stopping = asyncio.ensure_future(kf.stop(grace=30))
    release.set()
    await stopping
    assert finished.done()
    assert finished.result().output == "done"


async def test_context_manager_drains_due_work(make_keyflow: MakeKeyflow, storage_url: str) -> None:
    done: list[int] = []
    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        done.append(input["n"])

    async with kf:
        for n in range(5):
            await job.trigger({"n": n}, concurrency_key="k")
        delayed = await job.trigger({"n": 99}, delay=3600)
    assert done == [0, 1, 2, 3, 4]
    run = await get_run_after_stop(kf, storage_url, delayed.run_id)
    assert run is not None
    assert run.status is RunStatus.SCHEDULED  # left for a later start


async def test_list_runs_filters_and_pages_newest_first(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    @kf.job()
    async def a(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        if input.get("fail"):
            raise RuntimeError("no")

    @kf.job()
    async def b(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    ids = []
    for n in range(6):
        r = await kf.trigger(
            "a" if n % 2 else "b",
            {"fail": n == 3},
            concurrency_key=f"key{n % 3}",
            labels={"org": "acme" if n < 4 else "zeta"},
        )
        ids.append(r.run_id)
    await kf.run_until_idle()
    assert [r.id for r in await kf.list_runs()] == ids[::-1]
    assert [r.id for r in await kf.list_runs(job="a")] == [ids[5], ids[3], ids[1]]
    assert [r.id for r in await kf.list_runs(status="failed")] == [ids[3]]
    assert [r.id for r in await kf.list_runs(concurrency_key="key0")] == [ids[3], ids[0]]
    assert [r.id for r in await kf.list_runs(labels={"org": "zeta"})] == [ids[5], ids[4]]
    assert [r.id for r in await kf.list_runs(job="a", labels={"org": "acme"})] == [ids[3], ids[1]]
    assert [r.id for r in await kf.list_runs(limit=2, offset=1)] == [ids[4], ids[3]]
    # free text: anywhere in the run, any case (here: the error of the failed one)
    assert [r.id for r in await kf.list_runs(text="RUNTIMEerror")] == [ids[3]]
    assert [r.id for r in await kf.list_runs(text="ZETA", job="b")] == [ids[4]]
    assert [r.id for r in await kf.list_runs(text="100%_")] == []  # LIKE characters are literal
    assert await kf.count_runs() == 6
    assert await kf.count_runs(job="a", labels={"org": "acme"}) == 2
    assert await kf.count_runs(text="zeta") == 2
    with pytest.raises(ValueError, match="bogus"):
        await kf.list_runs(status="bogus")
    with pytest.raises(ValueError, match=">= 0"):
        await kf.list_runs(limit=-1)


async def test_retention_keeps_the_newest_finished_runs(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    shared_differs(
        storage_url,
        "pruning at once",
        "finished runs beyond retention= are pruned every 10 seconds, not at each write",
    )
    kf = make_keyflow(retention=3)

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    ids = [(await job.trigger({"n": n}, idempotency_key=f"i{n}")).run_id for n in range(5)]
    await kf.run_until_idle()
    kept = [r.id for r in await kf.list_runs(limit=100)]
    assert kept == ids[:1:-1]
    assert await kf.get_run(ids[0]) is None
    # a pruned run's idempotency key is forgotten with it
    again = await job.trigger({"n": 0}, idempotency_key="i0")
    assert again.run_id != ids[0]
    assert (await job.trigger({"n": 4}, idempotency_key="i4")).run_id == ids[4]


async def test_run_until_idle_skips_delays_with_a_virtual_clock(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    kf = make_keyflow()
    ran_at: list[float] = []

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ran_at.append(clock.now())

    await kf.start()
    start = clock.now()
    await job.trigger({}, delay=3600)
    await job.trigger({}, delay=60)
    await kf.run_until_idle(timeout=5)
    assert [t - start for t in ran_at] == [60, 3600]
    with pytest.raises(keyflow.SchedulerNotRunningError, match="not started"):
        await make_keyflow().run_until_idle()


async def test_leaving_the_block_after_an_explicit_stop_does_not_wait(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()
    started = asyncio.Event()

    @kf.job()
    async def forever(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    async with kf:
        await forever.trigger()
        await started.wait()
        await kf.stop(grace=0)
    assert not kf.running
