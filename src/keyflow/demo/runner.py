"""Running the story: in virtual time (``--compare``, tests) or live, with a dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ..scheduler import Keyflow
from .app import create_demo_app
from .console import Console
from .report import Report, make_report
from .scoreboard import Scoreboard, scoreboard, sim_clock
from .serve import bind, serve, url_of
from .settings import StorySettings, settle
from .sim import Scenario, Simulation
from .simtime import ScaledTime, SimTime, VirtualTime
from .store import world_path
from .world import HOUR, World

START = 1_767_225_600.0
"""Simulated time starts at 2026-01-01 00:00 UTC (a fresh world)."""
SCENARIOS: tuple[Scenario, ...] = ("A", "B")
WORKERS = 500
"""Enough for every crawl and process of both pipelines at once: no run waits for a worker."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Everything ``keyflow demo`` takes."""

    settings: dict[str, Any] = field(default_factory=dict)
    """The story's settings given on the command line (see :class:`.StorySettings`)."""
    seconds: float | None = None
    """Real seconds to run the live demo for (None: until Ctrl-C)."""
    speed: float = 60.0
    """Simulated seconds per real second in the live demo (60: an hour a minute)."""
    storage: str = "sqlite:///keyflow-demo.db"
    dashboard: bool = True
    host: str = "127.0.0.1"
    port: int = 8000


class Story:
    """A story being told: the world, the scheduler, the pipelines and the console."""

    def __init__(
        self,
        settings: StorySettings,
        world: World,
        time: SimTime,
        kf: Keyflow,
        out: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.world = world
        self.time = time
        self.kf = kf
        self.sim = Simulation(kf, world, time, settings.sim_config())
        self.console = Console(self.board, time, out)

    def board(self) -> Scoreboard:
        """The side-by-side now."""
        settings = self.settings
        return scoreboard(
            self.kf, self.world, settings.scenario, settings.strategies, self.time.now()
        )

    def reports(self, at: float | None = None) -> list[Report]:
        """One report per pipeline, as of ``at`` (default: now), labelled ``A/skip``..."""
        now = self.time.now() if at is None else at
        self.world.open_until(now)
        scenario = self.settings.scenario
        return [
            make_report(self.world, s, f"{scenario}/{s}", now) for s in self.settings.strategies
        ]

    async def play(self, until: float, stop: asyncio.Event) -> None:
        """Tell the story (console lines included) until ``until``, simulated."""
        self.console.start()
        await self.sim.run(until, stop)


def virtual_story(
    settings: StorySettings, out: Callable[[str], None] = print
) -> tuple[Story, VirtualTime]:
    """A story in virtual time, in memory (not started): deterministic and fast."""
    world = World(settings.world_config())
    time = VirtualTime(START)
    kf = Keyflow(workers=WORKERS, clock=time.clock, seed=settings.seed, retention=1_000_000)
    story = Story(settings, world, time, kf, out)
    world.create(START)
    return story, time


async def simulate(settings: StorySettings, hours: float) -> list[Report]:
    """Every pipeline of ``settings`` over ``hours`` of virtual time; one report each."""
    story, _ = virtual_story(settings, out=lambda _: None)
    await story.kf.start()
    try:
        until = START + hours * HOUR
        await story.sim.run(until, asyncio.Event())
        # Every story is told as of the same moment, half an hour after its last cycle
        # began (every run has ended by then), so the columns count the same PRs opened.
        return story.reports(at=max(until + HOUR / 2, story.time.now()))
    finally:
        story.time.close()
        await story.kf.stop(grace=0)
        story.world.close()


async def compare(hours: float, settings: StorySettings | None = None) -> list[Report]:
    """A/skip, A/queue, B/skip, B/queue on the same world, side by side."""
    base = settings or StorySettings()
    reports: list[Report] = []
    for scenario in SCENARIOS:
        both = replace(base, scenario=scenario, strategy="both")
        reports += await simulate(both, hours)
    return reports


async def live(options: DemoOptions, out: Callable[[str], None] = print) -> list[Report]:
    """The demo as a newcomer sees it: real storage, live dashboard, until stopped.

    Raises:
        KeyflowError: the port is taken, the storage is in use, or the world file is
            from another version (nothing was started or written then).
    """
    # Ctrl-C from the very start asks for a clean stop (even during the start itself).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        return await _live(options, out, stop)
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)


async def _live(
    options: DemoOptions, out: Callable[[str], None], stop: asyncio.Event
) -> list[Report]:
    path = world_path(options.storage)
    world = World(StorySettings().world_config(), path)
    stored = None if world.is_new else world.stored_settings()
    settings, ignored = settle(options.settings, stored)
    world.config = settings.world_config()
    start = world.recall("now") or START
    time = ScaledTime(start, options.speed)
    kf = Keyflow(storage=options.storage, workers=WORKERS, clock=time.clock)
    story = Story(settings, world, time, kf, out)
    sock: socket.socket | None = None
    try:
        if options.dashboard:
            sock = bind(options.host, options.port)  # a taken port stops us before anything
        await kf.start()  # takes the storage's lock: refuses while another demo runs
    except BaseException:
        if sock is not None:
            sock.close()
        world.close()
        raise
    if stored is None:
        world.create(start)
        world.store_settings(settings.stored())
    intro = partial(_introduce, story, options, path, stored is not None, ignored, out)
    return await _tell(story, options, sock, intro, out, stop)


def _introduce(
    story: Story,
    options: DemoOptions,
    path: str,
    continued: bool,
    ignored: list[str],
    out: Callable[[str], None],
) -> None:
    settings = story.settings
    out(f"keyflow demo: {settings.describe()}")
    out(f"1 simulated hour = {HOUR / options.speed:g} s; a line every simulated 10 minutes")
    if continued:
        out(
            f"continuing the story in {path} at {sim_clock(story.time.now())} (simulated), "
            "with its stored settings"
        )
    if ignored:
        out(f"ignored: {'; '.join(ignored)}; `keyflow demo --reset` starts a new story")
    out(f"state: {options.storage} (runs) and {path} (the simulated world)")


async def _tell(
    story: Story,
    options: DemoOptions,
    sock: socket.socket | None,
    introduce: Callable[[], None],
    out: Callable[[str], None],
    stop: asyncio.Event,
) -> list[Report]:
    kf, world, time = story.kf, story.world, story.time
    tasks: list[asyncio.Task[None]] = []
    server = None
    try:
        introduce()
        if sock is not None:
            server, serving = serve(create_demo_app(kf, story.board), sock)
            tasks.append(serving)
            out(f"dashboard: {url_of(sock)}  ·  the story side by side: {url_of(sock)}story")
        tasks.append(asyncio.ensure_future(story.console.show_live(stop)))
        tasks.append(asyncio.ensure_future(_keep_time(world, time, stop)))
        seconds = options.seconds
        until = float("inf") if seconds is None else time.now() + seconds * options.speed
        await story.play(until, stop)
        return story.reports()
    finally:
        stop.set()
        time.close()  # no more crawls: the scheduler is about to stop taking triggers
        world.remember("now", time.now())
        if server is not None:
            server.should_exit = True
        await kf.stop(grace=5)  # interrupted runs wait, stored, for the next start
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        world.close()


async def _keep_time(world: World, time: SimTime, stop: asyncio.Event) -> None:
    """Store the simulated time every second, so a restart continues from there."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        world.remember("now", time.now())
