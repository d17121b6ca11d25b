"""What a store holds, summed up, on every backend: keys, jobs, timings, changes."""

from __future__ import annotations

from typing import Any

import keyflow
from keyflow import RunStatus
from keyflow.testing import VirtualClock

from .conftest import MakeKeyflow


async def test_summaries_agree_with_the_runs_on_every_backend(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    kf = make_keyflow()

    @kf.job(concurrency_key=lambda data: data["key"], coalesce="queue")
    async def process(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    @kf.job()
    async def other(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    backend = kf._backend  # the storage itself, as a storage dashboard reads it
    before = await backend.change_token()
    start = clock.now()
    await process.trigger({"key": "a"}, delay=60)
    await process.trigger({"key": "a"})  # joins the delayed one
    await process.trigger({"key": "b"})
    await kf.run_until_idle(timeout=5)
    clock.advance(10)
    await other.trigger({})
    await kf.run_until_idle(timeout=5)
    await kf.pause(key="b")
    await kf.list_runs()  # read your writes: storage holds everything above
    summary = await backend.summary()
    assert sorted(summary.keys) == ["a", "b"]
    assert (summary.keys["a"].runs, summary.keys["a"].coalesced) == (1, 1)
    assert (summary.keys["b"].runs, summary.keys["b"].unfinished) == (1, 0)
    assert summary.jobs == ["other", "process"]
    assert summary.coalesced == 1
    timings = await backend.run_timings("process", start)
    assert len(timings) == 2
    assert {t.status for t in timings} == {RunStatus.COMPLETED}
    assert all(t.started_at is not None and t.started_at >= t.created_at for t in timings)
    assert await backend.run_timings("process", start + 5) == []
    assert await backend.change_token() != before
    assert await backend.paused() == {("key", "b")}
