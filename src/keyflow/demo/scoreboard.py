"""The live side-by-side: each pipeline's numbers and the lanes, at one simulated moment.

What the console prints every simulated ten minutes and the demo's story page shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ..scheduler import Keyflow
from .natural import natural_key
from .report import Report, make_report
from .sim import Scenario, Strategy
from .world import World


@dataclass(frozen=True, slots=True)
class Scoreboard:
    """The story so far: one report per pipeline, and the lanes right now."""

    at: float
    """Simulated time (epoch seconds)."""
    scenario: Scenario
    reports: tuple[Report, ...]
    """One per pipeline (labelled by strategy: ``skip``, ``queue``)."""
    lanes: dict[str, int]
    """Keys by state: ``idle``, ``running``, ``running+queued``."""
    queued_lanes: tuple[str, ...]
    """Keys whose lane is running and has a run waiting behind, in natural order."""

    def report(self, label: str) -> Report | None:
        """The report of the pipeline labelled ``label``, if it runs."""
        return next((r for r in self.reports if r.label == label), None)


def scoreboard(
    kf: Keyflow, world: World, scenario: Scenario, strategies: tuple[Strategy, ...], now: float
) -> Scoreboard:
    """The numbers of every pipeline at ``now`` and the scheduler's lanes."""
    queued = [k for k in kf.key_names() if kf.lane(k).state == "running+queued"]
    return Scoreboard(
        at=now,
        scenario=scenario,
        reports=tuple(make_report(world, s, s, now) for s in strategies),
        lanes=kf.lane_states(),
        queued_lanes=tuple(sorted(queued, key=natural_key)),
    )


def sim_clock(at: float) -> str:
    """Simulated time as ``Thu 01:10`` (UTC)."""
    return datetime.fromtimestamp(at, UTC).strftime("%a %H:%M")


def _each(board: Scoreboard, text: str) -> str:
    return ", ".join(f"{r.label} {text.format(r)}" for r in board.reports)


def busier(peak: Scoreboard | None, board: Scoreboard) -> Scoreboard:
    """Whichever shows more lanes running+queued (then running): ``board`` on a tie."""

    def weight(b: Scoreboard) -> tuple[int, int]:
        return b.lanes["running+queued"], b.lanes["running"]

    return board if peak is None or weight(board) >= weight(peak) else peak


def line(busiest: Scoreboard, now: Scoreboard | None = None) -> str:
    """The console's one line: lanes at their peak, triggers, PRs that waited, staleness.

    ``busiest`` is the busiest look at the lanes over the last ten minutes; the rest is
    as of ``now`` (default: ``busiest``).
    """
    board = now or busiest
    lanes = busiest.lanes
    queued = f" ({', '.join(busiest.queued_lanes)})" if busiest.queued_lanes else ""
    return (
        f"{sim_clock(board.at)} | lanes at peak: {lanes['running']} running, "
        f"{lanes['running+queued']} running+queued{queued} | "
        f"follow-ups queued: {_each(board, '{0.queued}')} | "
        f"coalesced: {_each(board, '{0.coalesced}')} | "
        f"PRs that waited a cycle: {_each(board, '{0.waited_a_cycle}')} | "
        f"staleness max: {_each(board, '{0.staleness_max:.0f} min')}"
    )
