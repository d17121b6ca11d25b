"""Clean stops (issue: first contact): a stop's grace finishes the runs' work.

During ``stop(grace)`` a running handler's triggers (``ctx.trigger``) are still taken
and stored: a chained trigger is part of its run's work. A run still executing when
the grace ends goes back to the head of its lane as the same attempt, with no error
recorded and no retry used. Checked with the demo's own crawl → process pipeline.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.cli import read_only_url
from keyflow.demo.sim import SimConfig, Simulation
from keyflow.demo.simtime import SimTime
from keyflow.demo.world import World, WorldConfig
from keyflow.storage_backends import open_backend
from keyflow.testing import VirtualClock

from .conftest import DURABLE, MakeKeyflow, fresh_storage_url


class GatedTime(SimTime):
    """Simulated time that moves only when the test opens a crawl's gate."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.sleeping: dict[float, asyncio.Event] = {}
        self.asleep = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        gate = self.sleeping.setdefault(seconds, asyncio.Event())
        self.asleep.set()
        await gate.wait()

    async def run(self, kf: keyflow.Keyflow, until: float, stop: asyncio.Event) -> None:
        raise NotImplementedError  # the test drives the story itself


@pytest.fixture(params=DURABLE)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_storage_url(request, tmp_path)


async def test_a_stop_lets_crawls_trigger_process_and_requeues_the_cut_ones_unharmed(
    storage_url: str, clock: VirtualClock
) -> None:
    world = World(WorldConfig(orgs=1, repos=2))
    world.create(clock.now())
    time = GatedTime(clock)
    kf = keyflow.Keyflow(storage=storage_url, workers=4, clock=clock, grace=60)
    sim = Simulation(kf, world, time, SimConfig(scenario="A", strategies=("queue",)))
    pipeline = sim.pipelines[0]
    await kf.start()
    await pipeline.trigger_crawl("org0", "repo0", 10.0, initial=False)  # finishes in grace
    await pipeline.trigger_crawl("org0", "repo1", 20.0, initial=False)  # cut by the stop
    while len(time.sleeping) < 2:
        time.asleep.clear()
        await time.asleep.wait()

    stopping = asyncio.ensure_future(kf.stop(grace=0.2))
    await asyncio.sleep(0)  # the stop has begun: no new trigger from outside ...
    with pytest.raises(keyflow.SchedulerNotRunningError, match="stopping"):
        await kf.trigger("crawl_queue", {"org": "org0", "seconds": 1.0})
    time.sleeping[10.0].set()  # ... but this crawl ends in its grace and triggers process
    await stopping

    reader = open_backend(read_only_url(storage_url), retention=100)
    await reader.open()
    try:
        runs = await reader.list_runs(keyflow.storage_backends.RunQuery())
    finally:
        await reader.close()
    by_job: dict[str, list[keyflow.Run]] = {}
    for run in runs:
        by_job.setdefault(run.job, []).append(run)
    (process,) = by_job["process_queue"]  # the chained trigger was taken and stored
    assert process.status is RunStatus.PENDING
    crawls = {run.input["repos"][0]: run for run in by_job["crawl_queue"]}
    assert crawls["repo0"].status is RunStatus.COMPLETED
    cut = crawls["repo1"]
    assert cut.status is RunStatus.PENDING  # back at the head of its lane
    assert (cut.attempt, cut.errors, cut.interruptions) == (1, (), 1)  # no error, no retry
    assert "interrupted by stop" in cut.logs[-1].message

    # The next start runs it again as that same attempt, and process after it.
    attempts: dict[str, list[int]] = {}
    again = keyflow.Keyflow(storage=storage_url, workers=4, clock=clock)

    async def record(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        attempts.setdefault(ctx.job, []).append(ctx.attempt)

    again.job("crawl_queue")(record)
    again.job("process_queue")(record)
    async with again:
        await again.run_until_idle(timeout=10)
        done = await again.get_run(cut.id)
    assert attempts == {"crawl_queue": [1], "process_queue": [1]}
    assert done is not None
    assert (done.status, done.attempt, done.errors) == (RunStatus.COMPLETED, 1, ())


async def test_a_handler_may_trigger_while_the_grace_lasts(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(workers=2)
    started = asyncio.Event()
    release = asyncio.Event()
    results: list[keyflow.TriggerResult] = []

    @kf.job()
    async def parent(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        await release.wait()
        results.append(await ctx.trigger("child", {"from": ctx.run_id}))

    @kf.job()
    async def child(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    await parent.trigger({})
    await started.wait()
    stopping = asyncio.ensure_future(kf.stop(grace=5))
    await asyncio.sleep(0)
    release.set()
    await stopping
    (made,) = results  # taken during the grace (it would raise "stopping" otherwise)
    assert made.disposition is keyflow.Disposition.CREATED
    assert made.job == "child"


PROGRAM_THAT_FAILS = """
import asyncio, sys
import keyflow

async def noop(ctx, input):
    return None

async def main():
    kf = keyflow.Keyflow(storage=sys.argv[1])
    kf.job("noop")(noop)
    await kf.start()
    await kf.trigger("noop", {})
    raise RuntimeError("a bug in the application")  # never reaches kf.stop()

asyncio.run(main())
"""


@pytest.mark.parametrize("scheme", ["memory", "sqlite", "json"])
def test_a_program_that_fails_without_stopping_keyflow_still_ends(
    scheme: str, tmp_path: Path
) -> None:
    """asyncio.run() cancels every task at the end: idle workers must let it."""
    url = "memory://" if scheme == "memory" else f"{scheme}:///{tmp_path / 'runs'}"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM_THAT_FAILS, url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "RuntimeError: a bug in the application" in done.stderr
