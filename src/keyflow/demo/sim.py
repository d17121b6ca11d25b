"""The crawl → process application on keyflow, and the events that drive it.

Scenario A: the hourly crawl of an organisation uses ``crawl:<org>``; a repository a user
adds gets its initial crawl at once on ``crawl:<org>:<repo>`` (so both may run side by
side). Scenario B: every crawl of an organisation uses ``crawl:<org>`` with the chosen
strategy. ``process`` always uses ``process:<org>`` with the chosen strategy ("skip", as
the seed's author had it, or "queue"). A crawl takes its list of repositories when it
starts, fetches after a random time, and triggers ``process`` when it ends; ``process``
takes the raw PRs there are when it starts and needs time proportional to them.
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
from ..runs import JSONObject
from ..scheduler import Keyflow
from .simtime import SimTime
from .world import World

Scenario = Literal["A", "B"]
Strategy = Literal["skip", "queue"]
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the story goes."""

    scenario: Scenario = "A"
    strategy: Strategy = "queue"
    repos_added_per_hour: float = 0.5
    """Mean repositories users add per organisation per simulated hour."""
    crawl_seconds: tuple[float, float] = (120.0, 420.0)
    """Range of an org-wide crawl's duration (an added repo's crawl takes a third)."""
    process_seconds: float = 120.0
    """Fixed part of a ``process`` run."""
    process_seconds_per_pr: float = 4.0
    seed: int = 7


def merge_repos(old: JSONObject, new: JSONObject) -> JSONObject:
    """Coalesced crawl triggers of an org: crawl every repository any of them asked for."""
    initial = bool(old.get("initial") and new.get("initial"))
    if old.get("repos") is None or new.get("repos") is None:
        return {"org": old["org"], "repos": None, "initial": initial}  # None: the whole org
    repos = sorted(set(old["repos"]) | set(new["repos"]))
    return {"org": old["org"], "repos": repos, "initial": initial}


class Simulation:
    """Builds the keyflow app for a scenario and drives its events in simulated time."""

    def __init__(self, kf: Keyflow, world: World, time: SimTime, config: SimConfig) -> None:
        self.kf = kf
        self.world = world
        self.time = time
        self.config = config
        self.rng = random.Random(f"{config.seed}/jobs")
        self.events = random.Random(f"{config.seed}/events")
        self.strategy: Coalesce = Coalesce(config.strategy, input=merge_repos)
        kf.job("crawl", retries=2)(self.crawl)
        kf.job("process", retries=2)(self.process)

    # -- the jobs ------------------------------------------------------------------

    async def crawl(self, ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
        """Fetch the new PRs of some (or all) repositories of an org, then trigger process."""
        org = input["org"]
        repos = input.get("repos") or self.world.repos(org, self.time.now())
        low, high = self.config.crawl_seconds
        if input.get("repos"):
            low, high = low / 3, high / 3
        ctx.log.info("crawling", org=org, repos=len(repos))
        await self.time.sleep(self.rng.uniform(low, high))  # GitHub's API, simulated
        kind = "initial" if input.get("initial") else "hourly"
        fetched = self.world.fetch(org, repos, self.time.now(), f"{kind}:{ctx.run_id}")
        await ctx.trigger(
            "process", {"org": org}, concurrency_key=f"process:{org}", coalesce=self.strategy
        )
        return {"fetched": fetched}

    async def process(self, ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
        """Aggregate the raw PRs of an org (those there are when the run starts)."""
        org = input["org"]
        prs = self.world.raw(org)
        seconds = self.config.process_seconds + self.config.process_seconds_per_pr * len(prs)
        steps = max(1, math.ceil(seconds / 60))
        for step in range(steps):
            ctx.progress(step, steps, f"{len(prs)} PRs")
            await self.time.sleep(seconds / steps)
        self.world.aggregate(prs, self.time.now(), ctx.run_id)
        return {"processed": len(prs)}

    # -- the events ------------------------------------------------------------------

    def schedule(self, until: float) -> None:
        """Arm the hourly crawls and the repository additions up to ``until``."""
        now = self.time.now()
        for org in self.world.orgs():
            next_hour = self.world.recall(f"hourly:{org}") or now
            self.time.at(next_hour, partial(self._hourly, org, next_hour, until))
            next_add = self.world.recall(f"add:{org}") or now + self._gap()
            self.time.at(next_add, partial(self._add, org, next_add, until))

    def _gap(self) -> float:
        return self.events.expovariate(self.config.repos_added_per_hour / HOUR)

    async def _hourly(self, org: str, at: float, until: float) -> None:
        if at > until:
            return
        self.world.remember(f"hourly:{org}", at + HOUR)
        self.time.at(at + HOUR, partial(self._hourly, org, at + HOUR, until))
        coalesce = self.strategy if self.config.scenario == "B" else None
        await self.kf.trigger(
            "crawl",
            {"org": org, "repos": None},
            concurrency_key=f"crawl:{org}",
            coalesce=coalesce,
            labels={"org": org, "kind": "hourly"},
        )

    async def _add(self, org: str, at: float, until: float) -> None:
        if at > until:
            return
        following = at + self._gap()
        self.world.remember(f"add:{org}", following)
        self.time.at(following, partial(self._add, org, following, until))
        repo = self.world.add_repo(org, self.time.now())
        if self.config.scenario == "A":
            key, coalesce = f"crawl:{org}:{repo}", None
        else:
            key, coalesce = f"crawl:{org}", self.strategy
        await self.kf.trigger(
            "crawl",
            {"org": org, "repos": [repo], "initial": True},
            concurrency_key=key,
            coalesce=coalesce,
            labels={"org": org, "kind": "initial"},
        )

    async def run(self, until: float, stop: asyncio.Event) -> None:
        """Play the story until ``until`` (simulated), then let every run finish."""
        self.schedule(until)
        await self.time.run(self.kf, until, stop)
