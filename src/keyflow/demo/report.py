"""What happened, in numbers: read from the world's tables (the ground truth)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from .world import World

TEMPLATES = Path(__file__).parent / "templates"
CYCLE_MINUTES = 60.0
"""The hourly crawl's period."""


@dataclass(frozen=True, slots=True)
class Report:
    """The story of one run of the simulation."""

    label: str
    opened: int
    """PRs opened on the simulated GitHub."""
    fetched: int
    """PRs some crawl fetched into the raw store."""
    processed: int
    """PRs a ``process`` run aggregated."""
    left_behind: int
    """Fetched, never processed although every run has ended."""
    waited_a_cycle: int
    """Processed only more than half an hour after being fetched: left for a later cycle."""
    staleness_p50: float
    """Minutes from fetched to processed (simulated), median."""
    staleness_p95: float
    staleness_max: float
    new_repos: int
    """Repositories users added during the simulation."""
    new_repos_delayed: int
    """…whose first data came only with a later hourly crawl (their own crawl was lost)."""
    first_data_max: float
    """Longest wait, in minutes, from adding a repository to its first processed PR."""
    crawl_runs: int
    process_runs: int
    coalesced: int
    """Triggers that joined an existing run."""


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def make_report(
    world: World, label: str, crawl_runs: int, process_runs: int, coalesced: int
) -> Report:
    """Count what the world's tables say."""
    db = world.db
    opened, fetched, processed = db.execute(
        "SELECT count(*), count(fetched_at), count(processed_at) FROM prs"
    ).fetchone()
    waits = [
        (done - got) / 60
        for done, got in db.execute(
            "SELECT processed_at, fetched_at FROM prs WHERE processed_at IS NOT NULL"
        )
    ]
    firsts = db.execute(
        """
        SELECT r.org, r.repo, r.added_at,
               (SELECT min(processed_at) FROM prs p WHERE p.org = r.org AND p.repo = r.repo),
               (SELECT fetched_by FROM prs p WHERE p.org = r.org AND p.repo = r.repo
                  AND fetched_at IS NOT NULL ORDER BY fetched_at LIMIT 1)
        FROM repos r WHERE r.added_live = 1
        """
    ).fetchall()
    delayed = sum(1 for *_, by in firsts if by is None or by.startswith("hourly:"))
    first_waits = [(first - added) / 60 for _, _, added, first, _ in firsts if first is not None]
    return Report(
        label=label,
        opened=opened,
        fetched=fetched,
        processed=processed,
        left_behind=fetched - processed,
        waited_a_cycle=sum(1 for wait in waits if wait > CYCLE_MINUTES / 2),
        staleness_p50=_percentile(waits, 0.5),
        staleness_p95=_percentile(waits, 0.95),
        staleness_max=max(waits, default=0.0),
        new_repos=len(firsts),
        new_repos_delayed=delayed,
        first_data_max=max(first_waits, default=0.0),
        crawl_runs=crawl_runs,
        process_runs=process_runs,
        coalesced=coalesced,
    )


ROWS: tuple[tuple[str, str, str], ...] = (
    ("PRs opened", "opened", "{:,}"),
    ("PRs fetched by a crawl", "fetched", "{:,}"),
    ("PRs processed", "processed", "{:,}"),
    ("fetched, left unprocessed at the end", "left_behind", "{:,}"),
    ("processed only in a later cycle (> 30 min)", "waited_a_cycle", "{:,}"),
    ("staleness p50 (fetched → processed)", "staleness_p50", "{:.1f} min"),
    ("staleness p95", "staleness_p95", "{:.1f} min"),
    ("staleness max", "staleness_max", "{:.1f} min"),
    ("repositories added", "new_repos", "{:,}"),
    ("…first data only with a later cycle", "new_repos_delayed", "{:,}"),
    ("longest wait for a new repo's data", "first_data_max", "{:.1f} min"),
    ("crawl runs", "crawl_runs", "{:,}"),
    ("process runs", "process_runs", "{:,}"),
    ("triggers coalesced", "coalesced", "{:,}"),
)


def table(reports: list[Report]) -> str:
    """The reports side by side, as a plain-text table."""
    width = max(len(name) for name, _, _ in ROWS) + 2
    columns = [max(14, len(r.label) + 2) for r in reports]
    pairs = list(zip(reports, columns, strict=True))
    lines = ["".ljust(width) + "".join(r.label.rjust(c) for r, c in pairs)]
    for name, field, fmt in ROWS:
        cells = [fmt.format(getattr(r, field)).rjust(c) for r, c in pairs]
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def staleness_svg(reports: list[Report]) -> str:
    """A small SVG bar chart of staleness (p50, p95, max) per combination."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    peak = max([r.staleness_max for r in reports] + [1.0])
    return environment.get_template("staleness.svg").render(reports=reports, peak=peak)
