"""The async reads (``list_lanes``, ``get_lane``, ``get_lane_states``, ``get_statistics``).

A coordinator over a shared database answers them from the database; today's answers
them from memory, so each must equal its synchronous counterpart in every lane shape.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus

from .conftest import MakeKeyflow


async def _until_status(events: keyflow.Subscription, run_id: str, status: RunStatus) -> None:
    async for event in events:
        if not isinstance(event, keyflow.RunChanged):
            continue
        if event.run.id == run_id and event.run.status is status:
            return
    raise AssertionError(f"{run_id} never became {status.value}")


async def _scheduler_with_every_lane_shape(
    make_keyflow: MakeKeyflow,
) -> tuple[keyflow.Keyflow, asyncio.Event]:
    """A started scheduler whose lanes show every shape; set the event to let them finish.

    ``a/running``: one run holding its slot. ``a/queued``: one running, two waiting.
    ``a/coalesced``: one running, one waiting that two triggers joined. ``a/wide`` (limit
    2): two running, one waiting. ``b/backoff``: a run in its retry backoff (it keeps the
    slot) and one waiting. ``b/delayed``: a run not due yet. ``b/idle``: finished, with a
    coalesced trigger. ``b/paused``: paused, its run pending. ``b/paused-empty``: paused
    with no run at all.
    """
    kf = make_keyflow(workers=16, lane_limit=lambda key: 2 if key == "a/wide" else 1)
    release = asyncio.Event()
    started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    @kf.job()
    async def block(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started[str(input["tag"])].set()
        await release.wait()

    @kf.job()
    async def quick(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        await release.wait()

    @kf.job(retries=1, backoff=3600)
    async def flaky(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        raise RuntimeError("again later")

    await kf.start()

    # An idle key that remembers a coalesced trigger.
    first = await quick.trigger({}, concurrency_key="b/idle", coalesce="skip")
    joined = await quick.trigger({}, concurrency_key="b/idle", coalesce="skip")
    assert joined.run_id == first.run_id
    release.set()
    await kf.run_until_idle(timeout=5)
    release.clear()

    async def started_on(key: str, tag: str) -> None:
        await block.trigger({"tag": tag}, concurrency_key=key)
        await started[tag].wait()

    await started_on("a/running", "r")
    await started_on("a/queued", "q")
    await block.trigger({"tag": "q2"}, concurrency_key="a/queued")
    await block.trigger({"tag": "q3"}, concurrency_key="a/queued")
    await started_on("a/coalesced", "c")
    await block.trigger({"tag": "c2"}, concurrency_key="a/coalesced", coalesce="queue")
    await block.trigger({"tag": "c3"}, concurrency_key="a/coalesced", coalesce="queue")
    await block.trigger({"tag": "c4"}, concurrency_key="a/coalesced", coalesce="queue")
    await started_on("a/wide", "w1")
    await started_on("a/wide", "w2")
    await block.trigger({"tag": "w3"}, concurrency_key="a/wide")
    async with kf.events() as events:
        retried = await flaky.trigger({}, concurrency_key="b/backoff")
        await _until_status(events, retried.run_id, RunStatus.SCHEDULED)
    await block.trigger({"tag": "bb"}, concurrency_key="b/backoff")
    await block.trigger({"tag": "d"}, concurrency_key="b/delayed", delay=3600)
    await kf.pause(key="b/paused")
    await block.trigger({"tag": "p"}, concurrency_key="b/paused")
    await kf.pause(key="b/paused-empty")
    await kf.trigger("block", {"tag": "keyless"}, concurrency_key=None)
    await started["keyless"].wait()
    return kf, release


async def test_every_async_read_equals_its_synchronous_one(make_keyflow: MakeKeyflow) -> None:
    kf, release = await _scheduler_with_every_lane_shape(make_keyflow)
    lanes = {lane.key: lane for lane in kf.keys()}  # noqa: SIM118  # not a dict
    # The scenario is what it says, so the comparisons below compare something.
    assert {key: lane.state for key, lane in lanes.items()} == {
        "a/coalesced": "running+queued",
        "a/queued": "running+queued",
        "a/running": "running",
        "a/wide": "running+queued",
        "b/backoff": "running+queued",
        "b/delayed": "idle",
        "b/idle": "idle",
        "b/paused": "running",  # its run is pending: it holds the slot, but waits
    }
    assert (len(lanes["a/queued"].waiting), lanes["a/coalesced"].coalesced) == (2, 2)
    assert (len(lanes["a/wide"].running), lanes["a/wide"].limit) == (2, 2)
    assert (len(lanes["b/backoff"].running), lanes["b/backoff"].scheduled) == (1, ())
    assert (len(lanes["b/delayed"].scheduled), lanes["b/idle"].coalesced) == (1, 1)
    assert (lanes["b/paused"].paused, len(lanes["b/paused"].running)) == (True, 1)

    assert await kf.list_lanes() == kf.keys()
    for key in [*lanes, "b/paused-empty", "never-seen"]:
        assert await kf.get_lane(key) == kf.lane(key)
    assert (await kf.get_lane("b/paused-empty")).paused
    assert (
        await kf.get_lane_states()
        == kf.lane_states()
        == {
            "idle": 2,
            "running": 2,
            "running+queued": 4,
        }
    )
    statistics = await kf.get_statistics()
    assert statistics == kf.statistics()
    assert (statistics.unfinished["running"], statistics.unfinished["pending"]) == (6, 1)
    assert statistics.paused.keys == {"b/paused", "b/paused-empty"}

    release.set()  # finished lanes: the async reads follow
    await kf.resume(key="b/paused")
    await kf.run_until_idle(timeout=5)
    assert await kf.list_lanes() == kf.keys()
    assert (
        await kf.get_lane_states()
        == kf.lane_states()
        == {
            "idle": 8,
            "running": 0,
            "running+queued": 0,
        }
    )
    assert await kf.get_statistics() == kf.statistics()


async def test_list_lanes_takes_a_prefix_and_a_limit(make_keyflow: MakeKeyflow) -> None:
    kf, release = await _scheduler_with_every_lane_shape(make_keyflow)
    every = kf.keys()
    assert [lane.key for lane in await kf.list_lanes("a/")] == [
        "a/coalesced",
        "a/queued",
        "a/running",
        "a/wide",
    ]
    assert await kf.list_lanes("b/") == kf.keys("b/")
    assert await kf.list_lanes("") == await kf.list_lanes(None) == every
    assert await kf.list_lanes("zzz") == []
    assert await kf.list_lanes(limit=3) == every[:3]
    assert await kf.list_lanes("b/", limit=2) == kf.keys("b/")[:2]
    assert await kf.list_lanes(limit=0) == []
    assert await kf.list_lanes(limit=1000) == every
    release.set()


@pytest.mark.parametrize("limit", [-1, 1.5, "3", True, [2]])
async def test_list_lanes_refuses_a_bad_limit(make_keyflow: MakeKeyflow, limit: object) -> None:
    kf = make_keyflow()
    await kf.start()
    with pytest.raises(keyflow.ConfigurationError, match="limit must be an integer >= 0"):
        await kf.list_lanes(limit=limit)  # type: ignore[arg-type]


async def test_list_lanes_refuses_a_prefix_keys_refuses(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    await kf.start()
    with pytest.raises(keyflow.ConfigurationError) as sync_error:
        kf.keys(3)  # type: ignore[arg-type]
    with pytest.raises(keyflow.ConfigurationError) as async_error:
        await kf.list_lanes(3)  # type: ignore[arg-type]
    assert str(async_error.value) == str(sync_error.value)
