"""A scheduler whose lanes show every shape a lane can take (shared by the lane tests)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import keyflow
from keyflow import RunStatus
from keyflow.testing import VirtualClock

from .conftest import MakeKeyflow

LANE_STATES = {
    "a/coalesced": "running+queued",
    "a/queued": "running+queued",
    "a/running": "running",
    "a/wide": "running+queued",
    "b/backoff": "running+queued",
    "b/delayed": "idle",
    "b/idle": "idle",
    "b/paused": "running",  # its run is pending: it holds the slot, but waits
}
"""The state of each lane :func:`every_lane_shape` leaves (``b/paused-empty`` has none)."""


async def _until_status(events: keyflow.Subscription, run_id: str, status: RunStatus) -> None:
    async for event in events:
        if not isinstance(event, keyflow.RunChanged):
            continue
        if event.run.id == run_id and event.run.status is status:
            return
    raise AssertionError(f"{run_id} never became {status.value}")


async def every_lane_shape(
    make_keyflow: MakeKeyflow,
) -> tuple[keyflow.Keyflow, asyncio.Event]:
    """A started scheduler whose lanes show every shape; set the event to let them finish.

    ``a/running``: one run holding its slot. ``a/queued``: one running, two waiting
    (``q3``, then ``q2``: created first, but due later).
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
    await block.trigger({"tag": "q2"}, concurrency_key="a/queued", delay=1)
    await block.trigger({"tag": "q3"}, concurrency_key="a/queued")
    clock = kf.clock
    assert isinstance(clock, VirtualClock)
    clock.advance(2)  # q2 is due now: it queues behind q3, created after it
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
