"""The event stream: typed events, bounded buffers, and a scheduler that never waits."""

from __future__ import annotations

import asyncio
from typing import Any

import keyflow
from keyflow import RunStatus
from keyflow.events import RunChanged
from keyflow.hub import EventHub

from .conftest import MakeKeyflow, shared_differs


async def test_events_tell_the_story_of_a_lane(make_keyflow: MakeKeyflow, storage_url: str) -> None:
    shared_differs(
        storage_url,
        "every step of a run not executed here as an event",
        "events of runs this process does not execute are read once per burst of notices",
    )
    kf = make_keyflow()
    release = asyncio.Event()
    started = asyncio.Event()

    @kf.job(concurrency_key="k", coalesce="queue")
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        ctx.progress(1, 2)
        ctx.log.info("working")
        await release.wait()

    await kf.start()
    async with kf.events() as events:
        first = await job.trigger({"n": 1})
        await started.wait()
        follow = await job.trigger({"n": 2})
        joined = await job.trigger({"n": 3})
        release.set()
        await kf.run_until_idle()
        seen: list[keyflow.Event] = []
        while (event := events.get_nowait()) is not None:
            seen.append(event)
    changes = [
        (e.run.id, e.previous, e.run.status) for e in seen if isinstance(e, keyflow.RunChanged)
    ]
    assert changes[:4] == [
        (first.run_id, None, RunStatus.QUEUED),
        (first.run_id, RunStatus.QUEUED, RunStatus.PENDING),
        (first.run_id, RunStatus.PENDING, RunStatus.RUNNING),
        (follow.run_id, None, RunStatus.QUEUED),
    ]
    assert (follow.run_id, RunStatus.RUNNING, RunStatus.COMPLETED) in changes
    coalesced = [e for e in seen if isinstance(e, keyflow.TriggerCoalesced)]
    assert len(coalesced) == 1
    assert coalesced[0].run_id == joined.run_id == follow.run_id
    assert coalesced[0].input == {"n": 3}
    assert coalesced[0].trigger_count == 2
    assert any(isinstance(e, keyflow.RunProgressed) for e in seen)
    assert any(isinstance(e, keyflow.RunLogged) and e.entry.message == "working" for e in seen)


async def test_slow_subscriber_loses_oldest_events_and_counts_them(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    slow = kf.events(buffer=5)
    fast = kf.events(buffer=10_000)
    for n in range(20):
        await job.trigger({"n": n})
    await kf.run_until_idle()
    kept = []
    while (event := slow.get_nowait()) is not None:
        kept.append(event)
    assert len(kept) == 5
    assert slow.dropped > 0
    assert fast.dropped == 0
    assert kf.statistics().events_dropped == slow.dropped
    last = kept[-1]
    assert isinstance(last, RunChanged)
    assert last.run.status is RunStatus.COMPLETED  # the newest survive
    slow.close()
    fast.close()


async def test_iteration_ends_when_the_scheduler_stops(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    await kf.start()
    events = kf.events()

    async def consume() -> int:
        return sum([1 async for _ in events])

    consumer = asyncio.ensure_future(consume())
    await kf.stop()
    assert await consumer == 0


def test_hub_without_subscribers_is_inactive() -> None:
    hub = EventHub()
    assert not hub.active
    sub = hub.subscribe()
    assert hub.active
    sub.close()
    assert not hub.active


async def test_a_change_watch_gathers_keys_without_building_events(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    shared_differs(
        storage_url,
        "a join told to a change watch in the batch it happened in",
        "events of runs this process does not execute are read once per burst of notices",
    )
    kf = make_keyflow()
    release = asyncio.Event()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        await release.wait()

    await kf.start()
    async with kf.changes() as watch:
        assert watch.take() is None
        await job.trigger({}, concurrency_key="a")
        await job.trigger({}, concurrency_key="b", coalesce="queue", delay=5)  # cannot start
        await job.trigger({}, concurrency_key="b", coalesce="queue")
        changes = await anext(watch)
        assert changes.keys == {"a", "b"}
        assert changes.coalesced  # the second "b" trigger joined the first
        assert watch.take() is None  # taken: nothing new since
        assert kf.statistics().events_published == 0  # no event was built for the watch
        release.set()
        await kf.run_until_idle()
        later = await anext(watch)
        assert later.keys == {"a", "b"}
        assert not later.coalesced
    await job.trigger({}, concurrency_key="c")
    assert watch.take() is None  # closed: the hub no longer tells it anything


def test_changes_merge_and_overflow_to_everything() -> None:
    from keyflow.watch import MAX_KEYS, Changes, ChangeWatch

    watch = ChangeWatch()
    watch.absorb(Changes({f"k{n}" for n in range(MAX_KEYS // 2)}))
    watch.absorb(Changes({f"x{n}" for n in range(MAX_KEYS // 2 + 1)}))
    overflowed = watch.take()
    assert overflowed is not None
    assert overflowed.everything
    assert overflowed.keys == set()
    assert overflowed.touches("anything")
    merged = Changes({"a"})
    merged.merge(Changes({"b"}, coalesced=True))
    assert (merged.keys, merged.coalesced, merged.everything) == ({"a", "b"}, True, False)
    assert merged.touches("a")
    assert not merged.touches("z")


async def test_a_watch_hears_everything_when_too_many_keys_changed(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    shared_differs(
        storage_url,
        "a batch's keys told to a change watch at once",
        "events of runs this process does not execute are read once per burst of notices",
    )
    from keyflow.watch import MAX_KEYS

    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    async with kf.changes() as watch:
        await kf.batch_trigger(
            [keyflow.TriggerRequest("job", {}, f"k{n}", delay=60) for n in range(MAX_KEYS + 1)]
        )
        changes = await anext(watch)
        assert changes.everything
        assert changes.touches("any key at all")
