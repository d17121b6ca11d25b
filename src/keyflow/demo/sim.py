"""The crawl → process application on keyflow, and the events that drive it.

One *pipeline* per coalesce strategy, each with its own jobs and keys on the same world:
``crawl_skip`` → ``process_skip`` and ``crawl_queue`` → ``process_queue``. Every event
(an hourly crawl, a repository a user adds) is drawn once and triggered in every
pipeline with the same input, so the pipelines differ only by their strategy.

Scenario A (per-repository crawl keys): each hour every repository of an organisation
is crawled on its own key, ``crawl_<s>:<org>:<repo>``, all in parallel (fan-out), and so
is a repository a user adds. Scenario B (one crawl key per organisation): the hourly
crawl takes the whole organisation on ``crawl_<s>:<org>``, and an added repository's
initial crawl is triggered on that key with the pipeline's strategy. In both, every
crawl ends by triggering ``process_<s>`` on ``process_<s>:<org>`` with the strategy
("skip", as the seed's author had it, or "queue"). ``process`` takes the raw PRs there
are when it starts and needs time proportional to them.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from ..coalesce import Coalesce
from ..context import RunContext
from ..runs import JSONObject, TriggerResult
from ..scheduler import Keyflow
from .simtime import SimTime
from .world import HOUR, World

Scenario = Literal["A", "B"]
Strategy = Literal["skip", "queue"]
STRATEGIES: tuple[Strategy, ...] = ("skip", "queue")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the story goes."""

    scenario: Scenario = "A"
    strategies: tuple[Strategy, ...] = STRATEGIES
    """One pipeline per strategy, side by side on the same world."""
    repos_added_per_hour: float = 0.5
    """Mean repositories users add per organisation per simulated hour."""
    crawl_seconds: tuple[float, float] = (120.0, 420.0)
    """Range of an organisation-wide crawl's duration (one repository's takes a third)."""
    process_seconds: float = 120.0
    """Fixed part of a ``process`` run."""
    process_seconds_per_pr: float = 4.0
    seed: int = 7


def crawl_job(strategy: Strategy) -> str:
    """The crawl job of a pipeline: ``crawl_queue``."""
    return f"crawl_{strategy}"


def process_job(strategy: Strategy) -> str:
    """The process job of a pipeline: ``process_queue``."""
    return f"process_{strategy}"


def merge_crawls(old: JSONObject, new: JSONObject) -> JSONObject:
    """Coalesced crawl triggers of an org: crawl every repository any of them asked for."""
    initial = bool(old.get("initial") and new.get("initial"))
    seconds = max(float(old["seconds"]), float(new["seconds"]))
    if old.get("repos") is None or new.get("repos") is None:
        repos = None  # the whole organisation
    else:
        repos = sorted(set(old["repos"]) | set(new["repos"]))
    return {"org": old["org"], "repos": repos, "seconds": seconds, "initial": initial}


class Pipeline:
    """The crawl → process jobs of one strategy."""

    def __init__(self, sim: Simulation, strategy: Strategy) -> None:
        self.sim = sim
        self.strategy: Strategy = strategy
        self.crawl_coalesce = Coalesce(strategy, input=merge_crawls)
        """How B's crawls of an org coalesce (A's crawls do not: each repository has its key)."""
        self.process_coalesce = Coalesce(strategy)
        sim.kf.job(crawl_job(strategy), retries=2)(self.crawl)
        sim.kf.job(process_job(strategy), retries=2)(self.process)

    def counted(self, result: TriggerResult) -> TriggerResult:
        """Count the trigger's disposition in the world (``triggers:<job>:<disposition>``)."""
        self.sim.world.count(f"triggers:{result.job}:{result.disposition.value}")
        return result

    async def crawl(self, ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
        """Fetch the new PRs of some (or all) repositories of an org, then trigger process."""
        world, time = self.sim.world, self.sim.time
        org = input["org"]
        repos = input.get("repos") or world.repos(org, time.now())
        ctx.log.info("crawling", org=org, repos=len(repos))
        await time.sleep(float(input["seconds"]))  # GitHub's API, simulated
        kind = "initial" if input.get("initial") else "hourly"
        fetched = world.fetch(self.strategy, org, repos, time.now(), f"{kind}:{ctx.run_id}")
        job = process_job(self.strategy)
        self.counted(
            await ctx.trigger(
                job,
                {"org": org},
                concurrency_key=f"{job}:{org}",
                coalesce=self.process_coalesce,
                labels={"org": org, "pipeline": self.strategy},
            )
        )
        return {"fetched": fetched}

    async def process(self, ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
        """Aggregate the raw PRs of an org (those there are when the run starts)."""
        world, time, config = self.sim.world, self.sim.time, self.sim.config
        org = input["org"]
        prs = world.raw(self.strategy, org)
        seconds = config.process_seconds + config.process_seconds_per_pr * len(prs)
        steps = max(1, math.ceil(seconds / 60))
        for step in range(steps):
            ctx.progress(step, steps, f"{len(prs)} PRs")
            await time.sleep(seconds / steps)
        world.aggregate(self.strategy, prs, time.now(), ctx.run_id)
        return {"processed": len(prs)}

    async def trigger_crawl(
        self, org: str, repo: str | None, seconds: float, *, initial: bool
    ) -> None:
        """Trigger this pipeline's crawl of ``org`` (one ``repo``, or None: all of them)."""
        job = crawl_job(self.strategy)
        if self.sim.config.scenario == "A":
            key = f"{job}:{org}:{repo}" if repo else f"{job}:{org}"
            coalesce = None
        else:
            key, coalesce = f"{job}:{org}", self.crawl_coalesce
        kind = "initial" if initial else "hourly"
        self.counted(
            await self.sim.kf.trigger(
                job,
                {
                    "org": org,
                    "repos": [repo] if repo else None,
                    "seconds": seconds,
                    "initial": initial,
                },
                concurrency_key=key,
                coalesce=coalesce,
                labels={"org": org, "kind": kind, "pipeline": self.strategy},
            )
        )


class Simulation:
    """Builds the pipelines for a scenario and drives their events in simulated time."""

    def __init__(self, kf: Keyflow, world: World, time: SimTime, config: SimConfig) -> None:
        self.kf = kf
        self.world = world
        self.time = time
        self.config = config
        # Separate streams: the repositories users add are the same in both scenarios
        # (the world), however many crawl durations each scenario draws.
        self.adds = random.Random(f"{config.seed}/adds")
        self.durations = random.Random(f"{config.seed}/crawls")
        self.pipelines = [Pipeline(self, strategy) for strategy in config.strategies]

    # -- the events ------------------------------------------------------------------

    def schedule(self, until: float) -> None:
        """Arm the hourly crawls and the repository additions up to ``until``."""
        now = self.time.now()
        orgs = self.world.orgs()
        for index, org in enumerate(orgs):
            # The organisations' hourly crawls are spread over the hour (org0 at :00, ...).
            offset = HOUR * index / len(orgs)
            next_hour = self.world.recall(f"hourly:{org}") or now + offset
            self.time.at(next_hour, partial(self._hourly, org, next_hour, until))
            next_add = self.world.recall(f"add:{org}") or now + self._gap()
            self.time.at(next_add, partial(self._add, org, next_add, until))

    def _gap(self) -> float:
        return self.adds.expovariate(self.config.repos_added_per_hour / HOUR)

    def _crawl_seconds(self, *, one_repo: bool) -> float:
        low, high = self.config.crawl_seconds
        scale = 3 if one_repo else 1
        return self.durations.uniform(low / scale, high / scale)

    async def _hourly(self, org: str, at: float, until: float) -> None:
        if at > until:
            return
        self.world.remember(f"hourly:{org}", at + HOUR)
        self.time.at(at + HOUR, partial(self._hourly, org, at + HOUR, until))
        crawls: list[tuple[str | None, float]]
        if self.config.scenario == "A":  # fan-out: one crawl per repository
            crawls = [
                (repo, self._crawl_seconds(one_repo=True))
                for repo in self.world.repos(org, self.time.now())
            ]
        else:
            crawls = [(None, self._crawl_seconds(one_repo=False))]  # the whole org
        for repo, seconds in crawls:
            for pipeline in self.pipelines:
                await pipeline.trigger_crawl(org, repo, seconds, initial=False)

    async def _add(self, org: str, at: float, until: float) -> None:
        if at > until:
            return
        following = at + self._gap()
        self.world.remember(f"add:{org}", following)
        self.time.at(following, partial(self._add, org, following, until))
        repo = self.world.add_repo(org, self.time.now())
        seconds = self._crawl_seconds(one_repo=True)
        for pipeline in self.pipelines:
            await pipeline.trigger_crawl(org, repo, seconds, initial=True)

    async def run(self, until: float, stop: asyncio.Event) -> None:
        """Play the story until ``until`` (simulated), then let every run finish."""
        self.schedule(until)
        await self.time.run(self.kf, until, stop)
