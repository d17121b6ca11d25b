"""What happened to one pipeline, in numbers, read from the world's tables (the ground truth).

The same numbers serve the live side-by-side (a report at "now") and the final table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from .sim import Strategy, crawl_job, process_job
from .world import World

TEMPLATES = Path(__file__).parent / "templates"
CYCLE_MINUTES = 60.0
"""The hourly crawl's period."""


@dataclass(frozen=True, slots=True)
class Report:
    """The story of one pipeline on one world, up to some moment."""

    label: str
    opened: int
    """PRs opened on the simulated GitHub."""
    fetched: int
    """PRs some crawl of the pipeline fetched into its raw store."""
    processed: int
    """PRs a ``process`` run of the pipeline aggregated."""
    waiting: int
    """Fetched, not processed (yet: at the end of a story, left behind)."""
    waited_a_cycle: int
    """Processed more than half an hour after being fetched, or waiting that long now:
    left for a later cycle."""
    staleness_p50: float
    """Minutes (simulated) from fetched to processed (or to now, while waiting), median."""
    staleness_p95: float
    staleness_max: float
    new_repos: int
    """Repositories users added."""
    new_repos_delayed: int
    """…whose first data came only with a later hourly crawl (their own crawl was lost)."""
    first_data_max: float
    """Longest wait, in minutes, from adding a repository to its first processed PR."""
    crawl_runs: int
    """Crawl runs the pipeline's triggers created."""
    process_runs: int
    """Process runs the pipeline's triggers created."""
    queued: int
    """Triggers (crawl and process) that created a run waiting behind a running one."""
    coalesced: int
    """Triggers (crawl and process) that joined an existing run."""


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _triggers(world: World, job: str, *dispositions: str) -> int:
    return sum(int(world.recall(f"triggers:{job}:{d}") or 0) for d in dispositions)


def make_report(world: World, strategy: Strategy, label: str, now: float) -> Report:
    """Count what the world's tables say about ``strategy``'s pipeline at ``now``."""
    db = world.db
    (opened,) = db.execute("SELECT count(*) FROM prs WHERE opened_at <= ?", (now,)).fetchone()
    rows = db.execute(
        "SELECT fetched_at, processed_at FROM pipeline_prs WHERE pipeline = ?", (strategy,)
    ).fetchall()
    waits = [((done if done is not None else now) - got) / 60 for got, done in rows]
    processed = sum(1 for _, done in rows if done is not None)
    firsts = db.execute(
        """
        SELECT r.added_at,
               (SELECT min(processed_at) FROM pipeline_prs p
                  WHERE p.pipeline = ? AND p.org = r.org AND p.repo = r.repo),
               (SELECT fetched_by FROM pipeline_prs p
                  WHERE p.pipeline = ? AND p.org = r.org AND p.repo = r.repo
                  ORDER BY fetched_at LIMIT 1)
        FROM repos r WHERE r.added_live = 1 AND r.added_at <= ?
        """,
        (strategy, strategy, now),
    ).fetchall()
    delayed = sum(1 for *_, by in firsts if by is None or by.startswith("hourly:"))
    first_waits = [(first - added) / 60 for added, first, _ in firsts if first is not None]
    crawl, process = crawl_job(strategy), process_job(strategy)
    return Report(
        label=label,
        opened=opened,
        fetched=len(rows),
        processed=processed,
        waiting=len(rows) - processed,
        waited_a_cycle=sum(1 for wait in waits if wait > CYCLE_MINUTES / 2),
        staleness_p50=_percentile(waits, 0.5),
        staleness_p95=_percentile(waits, 0.95),
        staleness_max=max(waits, default=0.0),
        new_repos=len(firsts),
        new_repos_delayed=delayed,
        first_data_max=max(first_waits, default=0.0),
        crawl_runs=_triggers(world, crawl, "created", "queued"),
        process_runs=_triggers(world, process, "created", "queued"),
        queued=_triggers(world, crawl, "queued") + _triggers(world, process, "queued"),
        coalesced=_triggers(world, crawl, "coalesced") + _triggers(world, process, "coalesced"),
    )


ROWS: tuple[tuple[str, str, str], ...] = (
    ("PRs opened", "opened", "{:,}"),
    ("PRs fetched by a crawl", "fetched", "{:,}"),
    ("PRs processed", "processed", "{:,}"),
    ("fetched, not processed at the end", "waiting", "{:,}"),
    ("PRs that waited a cycle (> 30 min)", "waited_a_cycle", "{:,}"),
    ("staleness p50 (fetched → processed)", "staleness_p50", "{:.1f} min"),
    ("staleness p95", "staleness_p95", "{:.1f} min"),
    ("staleness max", "staleness_max", "{:.1f} min"),
    ("repositories added", "new_repos", "{:,}"),
    ("…first data only with a later cycle", "new_repos_delayed", "{:,}"),
    ("longest wait for a new repo's data", "first_data_max", "{:.1f} min"),
    ("crawl runs", "crawl_runs", "{:,}"),
    ("process runs", "process_runs", "{:,}"),
    ("triggers queued (a follow-up run)", "queued", "{:,}"),
    ("triggers coalesced (joined a run)", "coalesced", "{:,}"),
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
