"""One lane snapshot: the scheduler's lanes and the lanes rebuilt from storage agree."""

from __future__ import annotations

import pytest

from keyflow import Run, RunStatus
from keyflow.cli import read_only_url
from keyflow.lane_view import lane_snapshot, stored_lane_limit, stored_lane_snapshot
from keyflow.state import RunState, slot_held
from keyflow.storage_backends import open_backend
from keyflow.storage_backends.jsonfile import JSONFileBackend
from keyflow.web.source import LaneFilters
from keyflow.web.storage_source import opened

from .conftest import MakeKeyflow, sync_reads_are_local
from .lanes import LANE_STATES, every_lane_shape

S = RunStatus


def test_a_lane_lists_its_runs_by_what_they_hold() -> None:
    members = [
        RunState("r1", "j", "k", S.RUNNING, 0.0, attempt=1),
        RunState("d1", "j", "k", S.SCHEDULED, 5.0),  # delayed: not due yet
        RunState("b1", "j", "k", S.SCHEDULED, 9.0, attempt=1),  # retry backoff: keeps a slot
        RunState("p1", "j", "k", S.PENDING, 0.0),
        RunState("q1", "j", "k", S.QUEUED, 1.0),
        RunState("q2", "j", "k", S.QUEUED, 2.0),
    ]
    waiting = [members[5], members[4]]  # the queue's own order, not creation order
    lane = lane_snapshot("k", 3, members, waiting, coalesced=4, paused=True)
    assert lane.running == ("r1", "b1", "p1")
    assert lane.scheduled == ("d1",)
    assert lane.waiting == ("q2", "q1")
    assert (lane.key, lane.state, lane.limit, lane.coalesced, lane.paused) == (
        "k",
        "running+queued",
        3,
        4,
        True,
    )
    assert lane_snapshot("k", 1, members[4:], [], coalesced=0, paused=False).state == "idle"
    assert lane_snapshot("k", 1, members[:1], [], coalesced=0, paused=False).state == "running"


def test_one_rule_says_which_runs_hold_a_slot() -> None:
    held = {(status, attempt) for status in S for attempt in (0, 1) if slot_held(status, attempt)}
    assert held == {
        (S.PENDING, 0),
        (S.PENDING, 1),
        (S.RUNNING, 0),
        (S.RUNNING, 1),
        (S.SCHEDULED, 1),
    }
    for status, attempt in [(S.SCHEDULED, 0), (S.SCHEDULED, 2), (S.RUNNING, 1)]:
        run = RunState("r", "j", "k", status, 0.0, attempt=attempt)
        assert run.holds_slot is slot_held(status, attempt)


def _unfinished(runs: list[Run]) -> list[Run]:
    return [run for run in runs if not run.is_terminal]


async def test_lanes_rebuilt_from_stored_runs_equal_the_schedulers(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    sync_reads_are_local(storage_url, "stored lanes compared with keys()")
    kf, release = await every_lane_shape(make_keyflow)
    lanes = kf.keys()
    assert {lane.key: lane.state for lane in lanes} == LANE_STATES
    for live in lanes:
        stored = _unfinished(await kf.list_runs(concurrency_key=live.key, limit=100))
        stored.reverse()  # newest first from storage: the order must not matter
        rebuilt = stored_lane_snapshot(
            live.key, stored, coalesced=live.coalesced, paused=live.paused
        )
        assert rebuilt == live  # each lane holds as many runs as its limit, or none
        if live.key == "a/queued":  # the queue's order: by due time, not by creation
            tags = {run.id: run.input["tag"] for run in stored}
            assert [tags[run_id] for run_id in live.waiting] == ["q3", "q2"]
        assert stored_lane_limit(stored) == max(1, len(live.running))
    release.set()


async def test_the_stored_limit_is_a_guess_of_at_least_the_slots_held(
    make_keyflow: MakeKeyflow,
) -> None:
    kf, release = await every_lane_shape(make_keyflow)
    wide = _unfinished(await kf.list_runs(concurrency_key="a/wide", limit=100))
    running = [run for run in wide if run.status is S.RUNNING]
    assert stored_lane_limit(wide) == 2
    assert stored_lane_limit(running[:1]) == 1
    assert stored_lane_limit([]) == 1  # an idle lane: no slot held, limit 1
    lane = stored_lane_snapshot("a/wide", running[:1], coalesced=0)
    assert (lane.limit, lane.paused) == (1, False)
    release.set()


async def test_the_storage_dashboard_shows_the_schedulers_lanes(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    if storage_url.startswith("memory"):
        pytest.skip("a storage dashboard reads a file another process writes")
    sync_reads_are_local(storage_url, "the storage dashboard's lanes compared with keys()")
    kf, release = await every_lane_shape(make_keyflow)
    await kf.count_runs()  # storage has every change so far
    backend = open_backend(read_only_url(storage_url), retention=1000)
    if isinstance(backend, JSONFileBackend):
        backend.refresh_seconds = 0.0
    async with opened(backend) as source:
        lanes = kf.keys()
        for live in lanes:
            assert await source.lane(live.key) == live
        rows, total = await source.lane_rows(LaneFilters(), 0, 100)
        assert [row.lane for row in rows] == lanes
        assert total == len(LANE_STATES)
        rows, _ = await source.lane_rows(LaneFilters(state="running", sort="wait"), 0, 100)
        assert [row.lane for row in rows] == [kf.lane("a/running"), kf.lane("b/paused")]
        counts = await source.counts()
        assert counts.lanes_by_state == kf.lane_states()
        unfinished = kf.statistics().unfinished
        assert {s: counts.by_status[s] for s in unfinished} == dict(unfinished)
        for status in S:
            assert counts.by_status[status.value] == await kf.count_runs(status=status.value)
    release.set()
