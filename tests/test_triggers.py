"""trigger(), batch_trigger() and idempotency through the public API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import keyflow
from keyflow import Coalesce, Disposition, RunStatus, TriggerRequest
from keyflow.testing import VirtualClock

from .conftest import MakeKeyflow, sync_reads_are_local


class Gate:
    """Handlers that wait until the test lets them finish."""

    def __init__(self) -> None:
        self.started: list[tuple[str, dict[str, Any]]] = []
        self.events: dict[str, asyncio.Event] = {}
        self.any_started = asyncio.Event()

    async def handler(self, ctx: keyflow.RunContext, input: dict[str, Any]) -> dict[str, Any]:
        self.started.append((ctx.run_id, input))
        self.any_started.set()
        await self.events.setdefault(ctx.run_id, asyncio.Event()).wait()
        return input

    def release(self, run_id: str) -> None:
        self.events.setdefault(run_id, asyncio.Event()).set()


async def started_kf(make_keyflow: MakeKeyflow, gate: Gate, **options: Any) -> keyflow.Keyflow:
    kf = make_keyflow(**options)
    kf.job("work")(gate.handler)
    kf.job("other")(gate.handler)
    await kf.start()
    return kf


async def test_plain_triggers_line_up_in_their_lane(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    sync_reads_are_local(storage_url, "a lane's waiting runs through lane()")
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    first = await kf.trigger("work", {"n": 1}, concurrency_key="k")
    second = await kf.trigger("work", {"n": 2}, concurrency_key="k")
    other_job = await kf.trigger("other", {"n": 3}, concurrency_key="k")
    assert first.disposition is Disposition.CREATED
    assert second.disposition is Disposition.QUEUED
    assert other_job.disposition is Disposition.QUEUED  # the key is shared across jobs
    await gate.any_started.wait()
    lane = kf.lane("k")
    assert lane.state == "running+queued"
    assert lane.running == (first.run_id,)
    assert lane.waiting == (second.run_id, other_job.run_id)
    for result in (first, second, other_job):
        gate.release(result.run_id)
    await kf.run_until_idle()
    assert [run_id for run_id, _ in gate.started] == [first.run_id, second.run_id, other_job.run_id]
    assert kf.lane("k").state == "idle"


async def test_keyless_runs_do_not_wait_for_each_other(make_keyflow: MakeKeyflow) -> None:
    gate = Gate()
    kf = await started_kf(make_keyflow, gate, workers=3)
    results = [await kf.trigger("work", {"n": i}) for i in range(3)]
    assert all(r.disposition is Disposition.CREATED for r in results)
    while len(gate.started) < 3:
        gate.any_started.clear()
        await gate.any_started.wait()
    for r in results:
        gate.release(r.run_id)
    await kf.run_until_idle()


async def test_queue_holds_one_follow_up_and_latest_input_wins(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    sync_reads_are_local(storage_url, "a lane's coalesced count through lane()")
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    first = await kf.trigger("work", {"n": 1}, concurrency_key="k", coalesce="queue")
    await gate.any_started.wait()
    follow = await kf.trigger("work", {"n": 2}, concurrency_key="k", coalesce="queue")
    joined = [
        await kf.trigger("work", {"n": n}, concurrency_key="k", coalesce="queue") for n in (3, 4)
    ]
    assert first.disposition is Disposition.CREATED
    assert follow.disposition is Disposition.QUEUED
    assert {j.run_id for j in joined} == {follow.run_id}
    assert all(j.disposition is Disposition.COALESCED for j in joined)
    run = await kf.get_run(follow.run_id)
    assert run is not None
    assert run.input == {"n": 4}
    assert run.trigger_count == 3
    assert [c.input for c in run.coalesced] == [{"n": 3}, {"n": 4}]
    assert kf.lane("k").coalesced == 2
    gate.release(first.run_id)
    gate.release(follow.run_id)
    await kf.run_until_idle()
    assert [inp for _, inp in gate.started] == [{"n": 1}, {"n": 4}]


async def test_queue_first_and_merge_policies(make_keyflow: MakeKeyflow) -> None:
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    blocker = await kf.trigger("other", {}, concurrency_key="k")
    first = Coalesce("queue", input="first")
    a = await kf.trigger("work", {"n": 1}, concurrency_key="k", coalesce=first)
    await kf.trigger("work", {"n": 2}, concurrency_key="k", coalesce=first)
    run = await kf.get_run(a.run_id)
    assert run is not None
    assert run.input == {"n": 1}

    def union(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        return {"repos": sorted(set(old["repos"]) | set(new["repos"]))}

    merged = Coalesce("queue", input=union)
    blocker_m = await kf.trigger("work", {}, concurrency_key="m")  # b waits behind it
    b = await kf.trigger("other", {"repos": ["api"]}, concurrency_key="m", coalesce=merged)
    c = await kf.trigger("other", {"repos": ["web"]}, concurrency_key="m", coalesce=merged)
    d = await kf.trigger("other", {"repos": ["cli", "api"]}, concurrency_key="m", coalesce=merged)
    assert b.run_id == c.run_id == d.run_id  # b has not started: every trigger joins it
    run = await kf.get_run(b.run_id)
    assert run is not None
    assert run.input == {"repos": ["api", "cli", "web"]}
    assert [t.input for t in run.coalesced] == [{"repos": ["web"]}, {"repos": ["cli", "api"]}]
    for result in (blocker, blocker_m, a, b):
        gate.release(result.run_id)
    await kf.run_until_idle()


async def test_running_input_never_changes(make_keyflow: MakeKeyflow) -> None:
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    first = await kf.trigger("work", {"n": 1}, concurrency_key="k", coalesce="skip")
    await gate.any_started.wait()
    joined = await kf.trigger("work", {"n": 2}, concurrency_key="k", coalesce="skip")
    assert joined.run_id == first.run_id
    assert joined.disposition is Disposition.COALESCED
    run = await kf.get_run(first.run_id)
    assert run is not None
    assert run.input == {"n": 1}
    assert run.trigger_count == 2
    gate.release(first.run_id)
    assert (await kf.wait(first.run_id)).output == {"n": 1}


async def test_max_queued_bounds_waiting_runs(make_keyflow: MakeKeyflow, storage_url: str) -> None:
    sync_reads_are_local(storage_url, "a lane's waiting runs through lane()")
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    strategy = Coalesce("queue", max_queued=2)
    blocker = await kf.trigger("other", {}, concurrency_key="k")
    await gate.any_started.wait()
    results = [
        await kf.trigger("work", {"n": n}, concurrency_key="k", coalesce=strategy) for n in range(6)
    ]
    # two never-started runs of the job: every later trigger joins the newest
    assert len({r.run_id for r in results}) == 2
    assert [r.disposition for r in results[:2]] == [Disposition.QUEUED, Disposition.QUEUED]
    assert {r.run_id for r in results[2:]} == {results[1].run_id}
    first_started = asyncio.Event()
    gate.any_started = first_started
    gate.release(blocker.run_id)
    await first_started.wait()  # one of the two started: a new one may queue again
    more = await kf.trigger("work", {"n": 9}, concurrency_key="k", coalesce=strategy)
    assert more.disposition is Disposition.QUEUED
    assert len(kf.lane("k").waiting) == 2
    for r in {*(x.run_id for x in results), more.run_id}:
        gate.release(r)
    await kf.run_until_idle()


async def test_cancel_strategy_replaces_running_and_waiting_runs(make_keyflow: MakeKeyflow) -> None:
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    running = await kf.trigger("work", {"n": 1}, concurrency_key="k")
    await gate.any_started.wait()
    waiting = await kf.trigger("work", {"n": 2}, concurrency_key="k")
    other = await kf.trigger("other", {"n": 3}, concurrency_key="k")
    replacement = await kf.trigger("work", {"n": 4}, concurrency_key="k", coalesce="cancel")
    assert replacement.disposition is Disposition.QUEUED
    assert (await kf.wait(running.run_id, timeout=5)).status is RunStatus.CANCELLED
    assert (await kf.wait(waiting.run_id, timeout=5)).status is RunStatus.CANCELLED
    gate.release(other.run_id)
    gate.release(replacement.run_id)
    await kf.run_until_idle()
    assert (await kf.wait(other.run_id)).status is RunStatus.COMPLETED
    assert (await kf.wait(replacement.run_id)).output == {"n": 4}


async def test_delayed_run_does_not_block_and_skip_can_pull_it_forward(
    make_keyflow: MakeKeyflow, clock: VirtualClock, storage_url: str
) -> None:
    sync_reads_are_local(storage_url, "a lane's delayed runs through lane()")
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    delayed = await kf.trigger("work", {"n": 1}, concurrency_key="k", delay=60)
    assert delayed.disposition is Disposition.CREATED
    now = await kf.trigger("other", {"n": 2}, concurrency_key="k")
    assert now.disposition is Disposition.CREATED  # the delayed run waits outside the lane
    assert kf.lane("k").scheduled == (delayed.run_id,)
    gate.release(now.run_id)
    joined = await kf.trigger("work", {"n": 3}, concurrency_key="k", coalesce="queue", delay=5)
    assert joined.run_id == delayed.run_id
    run = await kf.get_run(delayed.run_id)
    assert run is not None
    assert run.due_at == pytest.approx(clock.now() + 5)  # pulled forward to the newer trigger
    gate.release(delayed.run_id)
    await kf.run_until_idle()  # the virtual clock jumps over the delay
    assert [inp for _, inp in gate.started] == [{"n": 2}, {"n": 3}]


async def test_idempotency_key_returns_the_same_run(make_keyflow: MakeKeyflow) -> None:
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    first = await kf.trigger("work", {"n": 1}, idempotency_key="order-7")
    again = await kf.trigger("work", {"n": 2}, idempotency_key="order-7")
    assert again.run_id == first.run_id
    assert again.disposition is Disposition.IDEMPOTENT
    other_job = await kf.trigger("other", {"n": 3}, idempotency_key="order-7")
    assert other_job.run_id != first.run_id  # keys are per job
    gate.release(first.run_id)
    gate.release(other_job.run_id)
    await kf.run_until_idle()
    after = await kf.trigger("work", {"n": 4}, idempotency_key="order-7")
    assert after.run_id == first.run_id  # still known while the run is retained
    assert kf.statistics().triggers.idempotent == 2


async def test_batch_trigger_is_all_or_nothing(make_keyflow: MakeKeyflow) -> None:
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    with pytest.raises(keyflow.UnknownJobError, match="item 1"):
        await kf.batch_trigger([TriggerRequest("work", {"n": 1}), TriggerRequest("nope")])
    assert await kf.list_runs() == []
    results = await kf.batch_trigger(
        [
            TriggerRequest("work", {"n": 1}, concurrency_key="k", coalesce="queue"),
            TriggerRequest("work", {"n": 2}, concurrency_key="k", coalesce="queue"),
            TriggerRequest("other", {"n": 3}, labels={"org": "acme"}),
        ]
    )
    assert [r.disposition for r in results] == [
        Disposition.CREATED,
        Disposition.COALESCED,
        Disposition.CREATED,
    ]
    assert results[0].run_id == results[1].run_id
    for r in results:
        gate.release(r.run_id)
    await kf.run_until_idle()
    assert await kf.batch_trigger([]) == []


async def test_a_failing_merge_rolls_back_the_whole_batch(make_keyflow: MakeKeyflow) -> None:
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)

    def broken(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("cannot merge")

    strategy = Coalesce("queue", input=broken)
    with pytest.raises(keyflow.InvalidInputError, match="cannot merge"):
        await kf.batch_trigger(
            [
                TriggerRequest("work", {"n": 1}, concurrency_key="k", coalesce=strategy),
                TriggerRequest("work", {"n": 2}, concurrency_key="k", coalesce=strategy),
            ]
        )
    assert await kf.list_runs() == []
    assert kf.keys() == []
    assert kf.statistics().unfinished["queued"] == 0


async def test_keys_names_and_lane_states_agree(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    sync_reads_are_local(storage_url, "keys(), key_names() and lane_states()")
    gate = Gate()
    kf = await started_kf(make_keyflow, gate)
    busy = await kf.trigger("work", {}, concurrency_key="org:busy")
    await gate.any_started.wait()
    await kf.trigger("work", {}, concurrency_key="org:busy", coalesce="queue")
    await kf.trigger("work", {}, concurrency_key="org:busy", coalesce="queue")  # joins
    alone = await kf.trigger("other", {}, concurrency_key="org:alone")
    later = await kf.trigger("other", {}, concurrency_key="zz:later", delay=60)
    while len(gate.started) < 2:
        await gate.any_started.wait()
        gate.any_started.clear()
    snapshots = {lane.key: lane for lane in kf.keys()}  # noqa: SIM118  # not a dict
    assert list(snapshots) == kf.key_names() == ["org:alone", "org:busy", "zz:later"]
    assert kf.key_names("org:") == ["org:alone", "org:busy"]
    assert [lane.key for lane in kf.keys("zz")] == ["zz:later"]
    assert snapshots["org:busy"].state == "running+queued"
    assert snapshots["org:busy"].coalesced == 1
    assert snapshots["org:alone"].state == "running"
    assert snapshots["zz:later"].state == "idle"
    assert snapshots["zz:later"].scheduled == (later.run_id,)
    assert kf.lane_states() == {"idle": 1, "running": 1, "running+queued": 1}
    for run_id in (busy.run_id, alone.run_id, *snapshots["org:busy"].waiting):
        gate.release(run_id)  # released ahead: the queued one passes when it starts
    await kf.cancel(later.run_id)
    await kf.run_until_idle()
    # idle keys stay listed while they are remembered (with their coalesced counts)
    assert kf.lane_states() == {"idle": 3, "running": 0, "running+queued": 0}
    assert kf.lane("org:busy").coalesced == 1
