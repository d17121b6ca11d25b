"""The settings that define a demo's story, kept in its world file.

A continued demo keeps the settings it was started with (the world was built from
them); options that ask for something else are reported as ignored, and
``keyflow demo --reset`` starts a new story with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from .sim import STRATEGIES, Scenario, SimConfig, Strategy
from .world import WorldConfig

Strategies = Literal["both", "skip", "queue"]


@dataclass(frozen=True, slots=True)
class StorySettings:
    """What a story is made of (the defaults are ``make demo``'s)."""

    scenario: Scenario = "A"
    """A: per-repository crawl keys; B: one crawl key per organisation."""
    strategy: Strategies = "both"
    """The pipelines: ``skip`` and ``queue`` side by side, or one of them."""
    orgs: int = 3
    repos: int = 4
    """Repositories per organisation at the start."""
    prs_per_hour: float = 6.0
    """Mean PRs opened per repository per simulated hour."""
    adds_per_hour: float = 0.5
    """Mean repositories added per organisation per simulated hour."""
    crawl_minutes: tuple[float, float] = (2.0, 7.0)
    """Range of an organisation-wide crawl's duration (one repository's takes a third)."""
    seed: int = 7

    @property
    def strategies(self) -> tuple[Strategy, ...]:
        """The pipelines' strategies."""
        return STRATEGIES if self.strategy == "both" else (self.strategy,)

    def world_config(self) -> WorldConfig:
        """The simulated GitHub these settings describe."""
        return WorldConfig(
            orgs=self.orgs, repos=self.repos, prs_per_hour=self.prs_per_hour, seed=self.seed
        )

    def sim_config(self) -> SimConfig:
        """The events and jobs these settings describe."""
        low, high = self.crawl_minutes
        return SimConfig(
            scenario=self.scenario,
            strategies=self.strategies,
            repos_added_per_hour=self.adds_per_hour,
            crawl_seconds=(low * 60, high * 60),
            seed=self.seed,
        )

    def describe(self) -> str:
        """One line: ``scenario A, pipelines skip and queue, 3 orgs x 4 repos, …``."""
        low, high = self.crawl_minutes
        return (
            f"scenario {self.scenario}, pipelines {' and '.join(self.strategies)}, "
            f"{self.orgs} orgs x {self.repos} repos, {self.prs_per_hour:g} PRs/repo/h, "
            f"{self.adds_per_hour:g} repos added/org/h, crawls {low:g}-{high:g} min, "
            f"seed {self.seed}"
        )

    def stored(self) -> dict[str, object]:
        """The settings as JSON values (for the world file)."""
        return asdict(self)

    @classmethod
    def from_stored(cls, values: dict[str, Any]) -> StorySettings:
        """Settings read back from the world file (unknown names are left out)."""
        known = {f.name for f in fields(cls)}
        kept = {name: value for name, value in values.items() if name in known}
        if "crawl_minutes" in kept:
            kept["crawl_minutes"] = tuple(kept["crawl_minutes"])
        return cls(**kept)


OPTION_NAMES = {f.name: "--" + f.name.replace("_", "-") for f in fields(StorySettings)}
"""The command-line option of each setting."""


def settle(given: dict[str, Any], stored: dict[str, Any] | None) -> tuple[StorySettings, list[str]]:
    """The settings to play with, and the options that a stored story overrides.

    Args:
        given: settings asked for on the command line (only those given).
        stored: the settings kept in the world file (None for a new story).

    Returns:
        The settings, and one ``--orgs 5 (the story has 3)`` per ignored option.
    """
    if stored is None:
        return StorySettings(**given), []
    settings = StorySettings.from_stored(stored)
    ignored = []
    for name, value in given.items():
        kept = getattr(settings, name)
        if value != kept:
            ignored.append(f"{OPTION_NAMES[name]} {_show(value)} (the story has {_show(kept)})")
    return settings, ignored


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return " ".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
