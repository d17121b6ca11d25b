"""The event relay of shared storage, alone: what it tells when a notice's read and this
process's own decision race to tell the same join."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

from keyflow import RunStatus, TriggerCoalesced
from keyflow.events import RunChanged
from keyflow.hub import EventHub
from keyflow.records import RunRecord
from keyflow.shared.coordinator import SharedCoordinator
from keyflow.shared.database import Notice
from keyflow.shared.relay import EventRelay


class Database:
    """Stands in for the coordinator: every read finds ``run`` leased by nobody."""

    owner = "this-process"

    def __init__(self, run: RunRecord) -> None:
        self.run = run

    async def fetch(self, query: str, ids: list[str]) -> list[tuple[str, str | None]]:
        return [("row", None)] if self.run.id in ids else []

    def decode(self, data: str) -> RunRecord:
        return self.run.copy()


def joined_once() -> RunRecord:
    """A queued run one trigger joined (its trigger count is 2)."""
    run = RunRecord("run-1", "work", "k", RunStatus.QUEUED, {"n": 1}, 1.0, 1.0, 1)
    run.trigger_count = 2
    run.coalesced = deque([(2.0, {"n": 2}, None)])
    return run


async def test_a_join_read_before_its_decision_tells_it_is_still_told_once() -> None:
    # The read of a notice saw the run for the first time, joined already (the join's
    # transaction committed just before): it cannot tell that join from one made before
    # anyone listened, so it tells none. The decision that joined it tells it then.
    run = joined_once()
    hub = EventHub()
    events = hub.subscribe()
    relay = EventRelay(cast(SharedCoordinator, Database(run)), hub, lambda _: False, lambda: 3.0)
    relay.heard([run.id])
    first = await asyncio.wait_for(anext(events), 10)
    assert isinstance(first, RunChanged)
    assert first.run.status is RunStatus.QUEUED
    assert events.get_nowait() is None  # no join told by the read
    relay.tell_decided(Notice(runs=[run.copy()], joined={run.id}))
    told: list[Any] = []
    while (event := events.get_nowait()) is not None:
        told.append(event)
    assert [type(event) for event in told] == [TriggerCoalesced]
    assert told[0].trigger_count == 2
    relay.tell_decided(Notice(runs=[run.copy()], joined={run.id}))  # the same decision again
    assert events.get_nowait() is None
    await relay.close()


async def test_a_join_told_by_its_decision_is_not_told_again_by_a_read() -> None:
    run = joined_once()
    hub = EventHub()
    events = hub.subscribe()
    relay = EventRelay(cast(SharedCoordinator, Database(run)), hub, lambda _: False, lambda: 3.0)
    relay.tell_decided(Notice(runs=[run.copy()], joined={run.id}))
    told = [events.get_nowait(), events.get_nowait()]
    assert [type(event) for event in told] == [TriggerCoalesced, RunChanged]
    run.status = RunStatus.PENDING  # promoted elsewhere; the next read sees that alone
    relay.heard([run.id])
    moved = await asyncio.wait_for(anext(events), 10)
    assert isinstance(moved, RunChanged)
    assert moved.previous is RunStatus.QUEUED
    assert events.get_nowait() is None
    await relay.close()
