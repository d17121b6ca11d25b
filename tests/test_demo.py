"""The crawl → process simulator: the seed's story, told by the simulator's ground truth."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from functools import partial

import pytest

import keyflow
from keyflow.demo.report import make_report
from keyflow.demo.runner import START, Story, compare, virtual_story
from keyflow.demo.scoreboard import Scoreboard
from keyflow.demo.settings import StorySettings
from keyflow.demo.sim import Scenario, Strategy
from keyflow.demo.world import HOUR, World

HOURS = 24.0


async def play(scenario: Scenario, hours: float = HOURS) -> Story:
    """Both pipelines of a scenario in virtual time; the story stays open to inspect."""
    story, _ = virtual_story(StorySettings(scenario=scenario), out=lambda _: None)
    await story.kf.start()
    await story.sim.run(START + hours * HOUR, asyncio.Event())
    return story


async def close(story: Story) -> None:
    await story.kf.stop(grace=0)
    story.world.close()


async def processing_started_after_fetch(
    world: World, kf: keyflow.Keyflow, pipeline: Strategy
) -> list[str]:
    """PRs whose processing run started before they were fetched (must be none)."""
    started: dict[str, float] = {}
    wrong = []
    for pr, fetched_at, run_id in world.db.execute(
        "SELECT id, fetched_at, processed_by FROM pipeline_prs"
        " WHERE pipeline = ? AND processed_by IS NOT NULL",
        (pipeline,),
    ):
        if run_id not in started:
            run = await kf.get_run(run_id)
            assert run is not None
            assert run.status is keyflow.RunStatus.COMPLETED
            assert run.started_at is not None
            started[run_id] = run.started_at
        if started[run_id] < fetched_at:
            wrong.append(pr)
    return wrong


def lateness(world: World, pipeline: Strategy) -> tuple[int, int, int]:
    """Fetched, fetched but never processed, processed more than half an hour late."""
    fetched, unprocessed, late = world.db.execute(
        "SELECT count(*), count(*) - count(processed_at),"
        " coalesce(sum(processed_at - fetched_at > 1800), 0)"
        " FROM pipeline_prs WHERE pipeline = ?",
        (pipeline,),
    ).fetchone()
    return fetched, unprocessed, late


@pytest.mark.parametrize("scenario", ["A", "B"])
async def test_queue_processes_every_fetched_pr_after_its_crawl(scenario: Scenario) -> None:
    story = await play(scenario)
    try:
        world, kf = story.world, story.kf
        fetched, unprocessed, late = lateness(world, "queue")
        assert fetched > 1000
        assert unprocessed == 0  # every PR a crawl fetched was processed
        assert late == 0  # and none waited for a later cycle
        assert await processing_started_after_fetch(world, kf, "queue") == []
        report = make_report(world, "queue", "q", story.time.now())
        assert report.new_repos > 0
        assert report.new_repos_delayed == 0  # every added repo's own crawl delivered
    finally:
        await close(story)


async def test_skip_in_a_leaves_prs_until_the_next_cycle() -> None:
    story = await play("A")
    try:
        rows = story.world.db.execute(
            "SELECT processed_at - fetched_at FROM pipeline_prs"
            " WHERE pipeline = 'skip' AND processed_at IS NOT NULL"
        ).fetchall()
        late = [wait for (wait,) in rows if wait > 1800]
        assert late, "a crawl that ended while process ran had its PRs wait a cycle"
        assert max(late) > 0.75 * HOUR
        report = make_report(story.world, "skip", "A/skip", story.time.now())
        assert report.coalesced > 0  # the skipped triggers
    finally:
        await close(story)


async def test_skip_in_b_delays_a_new_repositorys_first_crawl() -> None:
    story = await play("B")
    try:
        report = make_report(story.world, "skip", "B/skip", story.time.now())
        assert report.new_repos_delayed > 0  # their initial crawl was dropped
        assert report.first_data_max > 45  # minutes: until the next hourly crawl
    finally:
        await close(story)


async def test_both_pipelines_see_the_same_world_and_the_same_crawls() -> None:
    story = await play("A", hours=6)
    try:
        skip = make_report(story.world, "skip", "skip", story.time.now())
        queue = make_report(story.world, "queue", "queue", story.time.now())
        assert skip.opened == queue.opened
        assert skip.fetched == queue.fetched  # same crawls, at the same times
        assert skip.crawl_runs == queue.crawl_runs
        assert skip.process_runs < queue.process_runs  # queue ran the follow-ups
    finally:
        await close(story)


async def test_compare_is_reproducible_and_tells_the_story() -> None:
    first = await compare(12)
    again = await compare(12)
    assert first == again  # same seed, same story
    by_label = {r.label: r for r in first}
    assert list(by_label) == ["A/skip", "A/queue", "B/skip", "B/queue"]
    assert len({r.new_repos for r in first}) == 1  # one world: the same repositories added
    assert by_label["A/queue"].waiting == by_label["B/queue"].waiting == 0
    assert by_label["A/queue"].waited_a_cycle == 0
    assert by_label["A/skip"].waited_a_cycle > 0
    assert by_label["A/skip"].staleness_max > by_label["A/queue"].staleness_max


async def test_the_first_simulated_hour_of_the_default_demo_tells_the_story() -> None:
    """``make demo``'s settings, in virtual time: the story shows within an hour (a minute)."""
    lines: list[str] = []
    story, time = virtual_story(StorySettings(), out=lines.append)
    samples: list[tuple[dict[str, int], Scoreboard]] = []

    async def sample(at: float) -> None:
        samples.append((story.kf.lane_states(), story.board()))
        if at + 30 < START + HOUR:
            time.at(at + 30, partial(sample, at + 30))

    time.at(START, partial(sample, START))
    await story.kf.start()
    try:
        await story.play(START + HOUR - 1, asyncio.Event())
        assert any(lanes["running+queued"] for lanes, _ in samples)
        queued_lanes = {key for _, board in samples for key in board.queued_lanes}
        assert any(key.startswith("process_queue:") for key in queued_lanes)
        assert story.kf.statistics().triggers.coalesced > 0
        _, last = samples[-1]
        skip, queue = last.report("skip"), last.report("queue")
        assert skip is not None
        assert queue is not None
        assert skip.coalesced > 0
        assert queue.coalesced > 0
        assert queue.queued > 0  # follow-up runs
        assert skip.waited_a_cycle > 0  # PRs whose process trigger was dropped
        assert queue.waited_a_cycle == 0
        assert skip.staleness_max > 30 > queue.staleness_max
        # The console said it, one line per simulated ten minutes.
        assert len(lines) == 5  # 00:10 ... 00:50
        assert lines[-1].startswith("Thu 00:50 | ")
        assert f"PRs that waited a cycle: skip {skip.waited_a_cycle}, queue 0" in lines[-1]
    finally:
        await close(story)


async def test_one_pipeline_alone_is_the_same_as_beside_the_other() -> None:
    alone, _ = virtual_story(replace(StorySettings(), strategy="skip"), out=lambda _: None)
    await alone.kf.start()
    try:
        await alone.sim.run(START + 3 * HOUR, asyncio.Event())
        both = await play("A", hours=3)
        try:
            left = make_report(alone.world, "skip", "skip", alone.time.now())
            right = make_report(both.world, "skip", "skip", both.time.now())
            assert left.fetched == right.fetched
            assert left.waited_a_cycle == right.waited_a_cycle
        finally:
            await close(both)
    finally:
        await close(alone)


async def test_closed_simulated_time_fires_nothing_and_ends_its_events() -> None:
    """At a stop the world's events end before the scheduler stops taking triggers."""
    from keyflow.demo.simtime import VirtualTime

    time = VirtualTime(START)
    fired: list[str] = []
    blocked = asyncio.Event()

    async def event(name: str) -> None:
        fired.append(name)
        if name == "long":
            await blocked.wait()  # an event still going on at the stop
            fired.append("long went on")

    time.at(START + 1, partial(event, "long"))
    time.at(START + 2, partial(event, "late"))
    time.virtual.jump()
    await asyncio.sleep(0)  # the spawned event runs up to its wait
    assert fired == ["long"]
    time.close()
    blocked.set()
    time.virtual.jump()  # the later timer was cancelled: nothing is due
    await asyncio.sleep(0)
    assert fired == ["long"]
    assert time.at(START + 3, partial(event, "after")) is None
    assert time.virtual.next_timer() is None


async def test_the_console_line_tells_the_busiest_moment_of_its_ten_minutes() -> None:
    """A lane running+queued for a minute between two lines is told, not missed."""
    from keyflow.demo.console import Console
    from keyflow.demo.scoreboard import Scoreboard
    from keyflow.demo.simtime import VirtualTime

    time = VirtualTime(START)
    idle = {"idle": 3, "running": 0, "running+queued": 0}

    def board() -> Scoreboard:
        busy = START + 120 <= time.now() < START + 180  # one busy minute, then calm
        lanes = {"idle": 1, "running": 1, "running+queued": 1} if busy else idle
        queued = ("process_queue:org1",) if busy else ()
        return Scoreboard(time.now(), "A", (), lanes, queued)

    lines: list[str] = []
    console = Console(board, time, lines.append)
    console.start()
    while not lines:
        time.virtual.jump()
        await asyncio.sleep(0)  # the due events run
    assert "lanes at peak: 1 running, 1 running+queued (process_queue:org1)" in lines[0]
    while len(lines) < 2:
        time.virtual.jump()
        await asyncio.sleep(0)
    assert "lanes at peak: 0 running, 0 running+queued |" in lines[1]  # the peak was reset
