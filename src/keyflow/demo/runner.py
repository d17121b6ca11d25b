"""Running the story: one combination, the four side by side, or live with a dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn

from ..scheduler import Keyflow
from ..web import create_app
from .report import Report, make_report
from .sim import HOUR, Scenario, SimConfig, Simulation, Strategy
from .simtime import ScaledTime, SimTime, VirtualTime
from .world import World, WorldConfig

START = 1_767_225_600.0
"""Simulated time starts at 2026-01-01 00:00 UTC (a fresh world)."""
COMBINATIONS: tuple[tuple[Scenario, Strategy], ...] = (
    ("A", "skip"),
    ("A", "queue"),
    ("B", "skip"),
    ("B", "queue"),
)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Everything ``keyflow demo`` takes."""

    scenario: Scenario = "A"
    strategy: Strategy = "queue"
    seconds: float | None = None
    """Real seconds to run the live demo for (None: until Ctrl-C)."""
    speed: float = 600.0
    """Simulated seconds per real second in the live demo (600: an hour in 6 s)."""
    storage: str = "sqlite:///keyflow-demo.db"
    dashboard: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    world: WorldConfig = field(default_factory=WorldConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    """Rates and durations (its scenario and strategy are the two fields above)."""
    workers: int = 16


def label(scenario: Scenario, strategy: Strategy) -> str:
    """``"A/queue"``."""
    return f"{scenario}/{strategy}"


async def _report(kf: Keyflow, world: World, name: str) -> Report:
    crawls = await kf.count_runs(job="crawl")
    processes = await kf.count_runs(job="process")
    return make_report(world, name, crawls, processes, kf.statistics().triggers.coalesced)


async def simulate(
    scenario: Scenario,
    strategy: Strategy,
    hours: float,
    world_config: WorldConfig,
    sim_config: SimConfig | None = None,
) -> Report:
    """One combination in virtual time, in memory: fast and the same on every run."""
    world = World(world_config)
    time = VirtualTime(START)
    kf = Keyflow(workers=16, clock=time.clock, seed=world_config.seed, retention=1_000_000)
    base = sim_config or SimConfig(seed=world_config.seed)
    sim = Simulation(kf, world, time, replace(base, scenario=scenario, strategy=strategy))
    world.create(START)
    await kf.start()
    try:
        await sim.run(START + hours * HOUR, asyncio.Event())
        world.open_until(START + hours * HOUR)
        return await _report(kf, world, label(scenario, strategy))
    finally:
        await kf.stop(grace=0)
        world.close()


async def compare(
    hours: float, world_config: WorldConfig, sim_config: SimConfig | None = None
) -> list[Report]:
    """The four combinations on the same seed, side by side."""
    return [await simulate(s, t, hours, world_config, sim_config) for s, t in COMBINATIONS]


def world_path(storage: str) -> str:
    """Where the live demo keeps its world: beside the scheduler's storage file."""
    if storage.startswith("memory:"):
        return ":memory:"
    path = storage.split(":///", 1)[-1].split("?", 1)[0]
    return str(Path(path).with_suffix("")) + ".world.db"


async def live(options: DemoOptions, out: Callable[[str], None] = print) -> Report:
    """The demo as a newcomer sees it: real storage, live dashboard, until stopped."""
    world = World(options.world, world_path(options.storage))
    fresh = world.is_new
    start = world.recall("now") or START
    time: SimTime = ScaledTime(start, options.speed)
    config = replace(options.sim, scenario=options.scenario, strategy=options.strategy)
    kf = Keyflow(storage=options.storage, workers=options.workers, clock=time.clock)
    sim = Simulation(kf, world, time, config)
    if fresh:
        world.create(start)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    await kf.start()
    server: uvicorn.Server | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        out(
            f"keyflow demo: scenario {options.scenario}, process coalesce={options.strategy!r}, "
            f"{len(world.orgs())} orgs; 1 simulated hour = {HOUR / options.speed:.1f} s"
            + ("" if fresh else " (continuing from the stored state)")
        )
        if options.dashboard:
            server, serving = await _dashboard(kf, options)
            tasks.append(serving)
            out(f"dashboard: http://{options.host}:{options.port}/")
        until = start + options.seconds * options.speed if options.seconds else float("inf")
        tasks.append(asyncio.ensure_future(_progress(kf, world, time, stop, out)))
        await sim.run(until, stop)
        report = await _report(kf, world, label(options.scenario, options.strategy))
    finally:
        stop.set()
        world.remember("now", time.now())
        if server is not None:
            server.should_exit = True
        await kf.stop(grace=5)  # interrupted runs wait, stored, for the next start
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
        world.close()
    return report


async def _dashboard(
    kf: Keyflow, options: DemoOptions
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(
        create_app(kf), host=options.host, port=options.port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    return server, asyncio.ensure_future(server.serve())


async def _progress(
    kf: Keyflow, world: World, time: SimTime, stop: asyncio.Event, out: Callable[[str], None]
) -> None:
    """A status line every second: rich's live display if installed, else a rewritten line."""
    interactive = sys.stdout.isatty()
    live_display = _rich_live() if interactive else None
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)  # a refresh period
            world.remember("now", time.now())
            line = _status(kf, world, time)
            if live_display is not None:
                live_display.update(line)
            elif interactive:
                sys.stdout.write("\r" + line.ljust(110))
                sys.stdout.flush()
            else:
                out(line)
    finally:
        if live_display is not None:
            live_display.stop()
        elif interactive:
            sys.stdout.write("\n")


def _status(kf: Keyflow, world: World, time: SimTime) -> str:
    stats = kf.statistics()
    _, fetched, processed = world.db.execute(
        "SELECT count(*), count(fetched_at), count(processed_at) FROM prs"
    ).fetchone()
    return (
        f"sim {_clock(time.now())} | running {stats.unfinished['running']:>2} "
        f"queued {stats.unfinished['queued']:>2} | PRs fetched {fetched} "
        f"processed {processed} waiting {fetched - processed} | "
        f"coalesced {stats.triggers.coalesced}"
    )


def _rich_live() -> Any:
    """Rich's live display, started, when rich is installed (it is optional)."""
    try:
        live_module = importlib.import_module("rich.live")
    except ImportError:
        return None
    display = live_module.Live("", refresh_per_second=4, transient=False)
    display.start()
    return display


def _clock(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).strftime("%a %H:%M")
