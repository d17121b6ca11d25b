"""The user story of seed-issue.md, end to end.

Crawls of several repositories of one organisation run in parallel (a key per
repository); each ends by triggering ``process`` for the organisation. ``process`` reads
what was fetched when it starts, so a crawl that finishes while ``process`` runs needs
a *later* ``process`` run. With ``coalesce="queue"`` every fetched PR is processed by a
run that started after its crawl ended; with ``"skip"`` those PRs are left behind.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest

import keyflow
from keyflow import Disposition
from keyflow.coalesce import CoalesceOption

from .conftest import MakeKeyflow


@dataclass
class World:
    """The simulated GitHub, the raw store, the aggregate table, and what happened when."""

    clock: itertools.count[int] = field(default_factory=itertools.count)
    new_prs: dict[str, list[str]] = field(default_factory=dict)
    raw: dict[str, int] = field(default_factory=dict)  # PR -> when its crawl ended
    processed: dict[str, int] = field(default_factory=dict)  # PR -> when its process started
    process_started: asyncio.Event = field(default_factory=asyncio.Event)
    release_process: asyncio.Event = field(default_factory=asyncio.Event)
    dispositions: list[Disposition] = field(default_factory=list)


def build(kf: keyflow.Keyflow, world: World, strategy: CoalesceOption) -> None:
    @kf.job()
    async def crawl(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
        prs = world.new_prs.pop(input["repo"], [])
        ended = next(world.clock)
        for pr in prs:
            world.raw[pr] = ended
        result = await ctx.trigger(
            "process",
            {"org": input["org"]},
            concurrency_key=f"process:{input['org']}",
            coalesce=strategy,
        )
        world.dispositions.append(result.disposition)
        return len(prs)

    @kf.job()
    async def process(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
        started = next(world.clock)
        batch = [pr for pr in world.raw if pr not in world.processed]
        world.process_started.set()
        await world.release_process.wait()  # the long aggregation
        for pr in batch:
            world.processed[pr] = started
        return len(batch)


async def run_story(
    make_keyflow: MakeKeyflow, strategy: CoalesceOption
) -> tuple[World, keyflow.Keyflow]:
    world = World()
    world.new_prs = {"api": ["api#1", "api#2"], "web": ["web#1"], "cli": ["cli#1", "cli#2"]}
    kf = make_keyflow(workers=8)
    build(kf, world, strategy)
    await kf.start()
    # The hourly crawl of one repository ends first and starts `process`.
    await kf.trigger("crawl", {"org": "acme", "repo": "api"}, concurrency_key="crawl:acme:api")
    await world.process_started.wait()
    # While it aggregates, two more crawls (say, a newly added repository) finish.
    crawls = [
        await kf.trigger("crawl", {"org": "acme", "repo": r}, concurrency_key=f"crawl:acme:{r}")
        for r in ("web", "cli")
    ]
    for result in crawls:
        assert (await kf.wait(result.run_id, timeout=5)).output is not None
    world.release_process.set()
    await kf.run_until_idle(timeout=5)
    return world, kf


async def test_queue_processes_every_pr_after_its_crawl_ended(make_keyflow: MakeKeyflow) -> None:
    world, kf = await run_story(make_keyflow, "queue")
    fetched = {"api#1", "api#2", "web#1", "cli#1", "cli#2"}
    assert set(world.raw) == fetched
    assert set(world.processed) == fetched, "queue left PRs behind"
    for pr, crawl_ended in world.raw.items():
        assert world.processed[pr] > crawl_ended, f"{pr} processed by a run older than its crawl"
    # one follow-up queued, the other trigger joined it: nothing piled up (the two
    # crawls run in parallel: which of them queued and which joined is theirs to race)
    first, *later = world.dispositions
    assert first is Disposition.CREATED
    assert sorted(later) == sorted([Disposition.QUEUED, Disposition.COALESCED])
    runs = await kf.list_runs(job="process")
    assert [r.trigger_count for r in runs] == [2, 1]
    assert kf.statistics().triggers.coalesced == 1


async def test_skip_leaves_the_later_crawls_prs_unprocessed(make_keyflow: MakeKeyflow) -> None:
    world, kf = await run_story(make_keyflow, "skip")
    assert set(world.raw) == {"api#1", "api#2", "web#1", "cli#1", "cli#2"}
    left_behind = set(world.raw) - set(world.processed)
    assert left_behind == {"web#1", "cli#1", "cli#2"}
    assert world.dispositions == [
        Disposition.CREATED,
        Disposition.COALESCED,
        Disposition.COALESCED,
    ]
    assert len(await kf.list_runs(job="process")) == 1


@pytest.mark.parametrize("crawls", [2, 7])
async def test_parallel_crawls_end_in_at_most_two_process_runs(
    make_keyflow: MakeKeyflow, crawls: int
) -> None:
    """Fan-out → barrier: however many crawls finish during one process, one follow-up."""
    world = World()
    world.new_prs = {f"r{i}": [f"r{i}#1"] for i in range(crawls + 1)}
    kf = make_keyflow(workers=16)
    build(kf, world, "queue")
    await kf.start()
    await kf.trigger("crawl", {"org": "o", "repo": "r0"}, concurrency_key="crawl:o:r0")
    await world.process_started.wait()
    triggered = [
        await kf.trigger("crawl", {"org": "o", "repo": f"r{i}"}, concurrency_key=f"crawl:o:r{i}")
        for i in range(1, crawls + 1)
    ]
    await asyncio.gather(*(kf.wait(t.run_id, timeout=5) for t in triggered))
    world.release_process.set()
    await kf.run_until_idle(timeout=5)
    assert set(world.processed) == set(world.raw)
    assert len(await kf.list_runs(job="process")) == 2
