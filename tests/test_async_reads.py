"""The async reads (``list_lanes``, ``get_lane``, ``get_lane_states``, ``get_statistics``).

A coordinator over a shared database answers them from the database; today's answers
them from memory, so each must equal its synchronous counterpart in every lane shape.
"""

from __future__ import annotations

import pytest

import keyflow

from .conftest import MakeKeyflow, sync_reads_are_local
from .lanes import LANE_STATES, every_lane_shape


async def test_every_async_read_equals_its_synchronous_one(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    sync_reads_are_local(storage_url, "async reads equal to the synchronous ones")
    kf, release = await every_lane_shape(make_keyflow)
    every = kf.keys()
    lanes = {lane.key: lane for lane in every}
    # The scenario is what it says, so the comparisons below compare something.
    assert {key: lane.state for key, lane in lanes.items()} == LANE_STATES
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


async def test_list_lanes_takes_a_prefix_and_a_limit(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    sync_reads_are_local(storage_url, "list_lanes compared with keys()")
    kf, release = await every_lane_shape(make_keyflow)
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


@pytest.mark.parametrize("key", [1, None, b"k", ("k",)])
async def test_a_lane_key_must_be_a_string(key: object) -> None:
    kf = keyflow.Keyflow()
    async with kf:
        with pytest.raises(keyflow.ConfigurationError, match="key must be a string"):
            kf.lane(key)  # type: ignore[arg-type]
        with pytest.raises(keyflow.ConfigurationError, match="key must be a string"):
            await kf.get_lane(key)  # type: ignore[arg-type]
