"""Notices name changed runs only while some process watches them change (events,
``changes()``, waits for runs executed elsewhere): :mod:`keyflow.shared.watching`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.events import RunChanged
from keyflow.shared.database import Notice

from .pg import coordinator_of, shared_schema

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A fresh schema in shared mode, short leases."""
    yield from shared_schema(tmp_path)


class Trio:
    """A worker, a producer and an observer on one schema, and what the observer hears."""

    def __init__(self, url: str) -> None:
        self.worker = keyflow.Keyflow(url, workers=2)
        self.producer = keyflow.Keyflow(url, workers=0)
        self.observer = keyflow.Keyflow(url, workers=0)
        self.heard: list[Notice] = []
        self.ended = 0
        self.all_ended = asyncio.Event()
        self.expected = 0
        for kf in (self.worker, self.producer, self.observer):
            kf.job("work")(self._work)
        coordinator_of(self.observer).on_notice.append(self.heard.append)

    async def _work(self, ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        self.ended += 1
        if self.ended == self.expected:
            self.all_ended.set()

    async def nobody_watches(self) -> None:
        """Every process reads that nobody watches (as its keeper does)."""
        for kf in (self.worker, self.producer, self.observer):
            service = kf._shared
            assert service is not None
            await service._watching.refresh()
            assert coordinator_of(kf).watched is False

    def named(self) -> set[str]:
        """Runs the observer's notices named as changed."""
        return {run_id for notice in self.heard for run_id in notice.changed}


@pytest.fixture
async def trio(url: str) -> AsyncIterator[Trio]:
    found = Trio(url)
    async with AsyncExitStack() as stack:
        for kf in (found.worker, found.producer, found.observer):
            await stack.enter_async_context(kf)
        yield found


async def test_while_nobody_watches_starts_and_ends_notify_nobody(trio: Trio) -> None:
    await trio.nobody_watches()
    trio.heard.clear()
    trio.expected = 5
    made = [(await trio.producer.trigger("work", {"n": n})).run_id for n in range(5)]
    await trio.all_ended.wait()
    await trio.worker._core.pipeline.flush()  # the ends are written
    assert trio.named() == set()  # no start, no end was told
    assert any(notice.work for notice in trio.heard)  # the triggers were (claimers hear)
    for run_id in made:
        run = await trio.observer.get_run(run_id)
        assert run is not None
        assert run.status is RunStatus.COMPLETED


async def test_a_subscriber_in_any_process_hears_runs_executed_elsewhere(trio: Trio) -> None:
    await trio.nobody_watches()
    trio.expected = 1
    async with trio.observer.events() as events:
        # The observer's subscription is announced: the others name changes again.
        result = await trio.observer.trigger("work", {"n": 1})
        seen: list[RunStatus] = []
        async for event in events:
            if isinstance(event, RunChanged) and event.run.id == result.run_id:
                seen.append(event.run.status)
                if event.run.status.is_terminal:
                    break
    assert RunStatus.RUNNING in seen  # its start, in the worker, was told
    assert seen[-1] is RunStatus.COMPLETED
    assert coordinator_of(trio.worker).watched is True


async def test_a_wait_for_a_run_executed_elsewhere_announces_a_watch(trio: Trio) -> None:
    await trio.nobody_watches()
    release = asyncio.Event()
    started = asyncio.Event()

    @trio.worker.job("slow")
    async def slow(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        await release.wait()

    trio.producer.job("slow")(slow.handler)
    result = await trio.producer.trigger("slow")
    await started.wait()
    told = asyncio.Event()
    coordinator_of(trio.worker).on_notice.append(lambda n: told.set() if n.watch else None)
    waiting = asyncio.ensure_future(trio.producer.wait(result.run_id, timeout=60))
    await told.wait()  # the producer's watch reached the worker
    assert coordinator_of(trio.worker).watched
    release.set()
    run = await waiting
    assert run.status is RunStatus.COMPLETED
    assert result.run_id in trio.named()  # its end was told, not found by the poll


async def test_a_notice_names_changed_runs_only_while_someone_watches(url: str) -> None:
    async with keyflow.Keyflow(url, workers=0) as kf:
        coordinator = coordinator_of(kf)
        notice = Notice(work=True, changed=["r1"])
        coordinator.watched = False
        assert coordinator.payload(Notice(changed=["r1"])) is None
        assert Notice.decode(coordinator.payload(notice) or "") == Notice(work=True)
        coordinator.watched = True
        assert Notice.decode(coordinator.payload(notice) or "") == notice
        coordinator.watched = False
        async with kf.events():  # this process watches: it says so, and names its changes
            told = Notice.decode(coordinator.payload(Notice(changed=["r1"])) or "")
        assert told == Notice(changed=["r1"], watch=True)


async def test_events_catch_up_on_ends_missed_while_the_listener_was_cut_off(trio: Trio) -> None:
    release = asyncio.Event()

    @trio.worker.job("slow")
    async def slow(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        await release.wait()

    trio.observer.job("slow")(slow.handler)
    observer = coordinator_of(trio.observer)
    cut_off = asyncio.Event()
    observer.on_notice.append(lambda n: cut_off.set() if n.missed else None)
    async with trio.observer.events() as events:
        result = await trio.observer.trigger("slow")
        seen: list[RunStatus] = []
        async for event in events:
            if not (isinstance(event, RunChanged) and event.run.id == result.run_id):
                continue
            seen.append(event.run.status)
            if event.run.status is RunStatus.RUNNING:
                listener = observer._listener
                assert listener is not None
                await observer.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())
                await cut_off.wait()  # the observer knows it is deaf
                release.set()  # the run ends while nobody tells the observer
            if event.run.status.is_terminal:
                break
    assert seen[-1] is RunStatus.COMPLETED  # read again once the listener was back
