"""A job's statistics over a window: throughput, failures, waits, run times, coalescing.

Computed from the runs' times in storage (the source's ``run_timings``: a few columns
per run, the newest :data:`MAX_RUNS`), so a durable backend gives the same numbers
after a restart. Only geometry for the SVG chart is made here;
the template draws it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..runs import TERMINAL_STATUSES, Run, RunStatus
from ..storage_backends.summaries import RunTiming

if TYPE_CHECKING:
    from .source import DashboardSource

WINDOWS = {"5m": 300.0, "1h": 3600.0, "24h": 86400.0}
"""The windows a stats page offers, by name."""
MAX_RUNS = 5_000
"""Runs' times read at most (the newest); the page says when a window hit the cap.

Reading them costs ~3 µs a run (~15 ms for 5,000 on SQLite): a cold page stays well
under 50 ms however busy the job. A window with more runs shows the newest 5,000's
numbers, marked "5,000+"."""
CACHE_SECONDS = 10.0
"""How long one computation serves every page that shows the same job and window."""
CHART_BUCKETS = 30


Timed = RunTiming | Run
"""What the statistics read of a run: its times (or a whole run)."""


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Column:
    """One bucket of the throughput chart: completed and failed runs stacked."""

    x: float
    width: float
    completed_y: float
    completed_height: float
    failed_y: float
    failed_height: float
    completed: int
    failed: int
    label: str


@dataclass(frozen=True, slots=True)
class WindowStats:
    """A job's numbers over one window, from the runs created in it."""

    name: str
    seconds: float
    runs: int
    """Runs created in the window (at most :data:`MAX_RUNS`)."""
    capped: bool
    """True when more runs were created than were read."""
    finished: int
    completed: int
    failed: int
    cancelled: int
    per_minute: float
    """Finished runs per minute."""
    failure_rate: float | None
    """Failed / (completed + failed)."""
    wait_p50: float | None
    """Seconds from due to the start of the latest attempt."""
    wait_p95: float | None
    run_p50: float | None
    """Seconds from the latest start to the finish."""
    run_p95: float | None
    triggers: int
    """Triggers covered by these runs (each run's ``trigger_count``)."""
    coalesced_ratio: float | None
    """Share of the triggers that joined an existing run."""


@dataclass(frozen=True, slots=True)
class JobStats:
    """Every window's numbers, and the chart of the selected one."""

    job: str
    windows: tuple[WindowStats, ...]
    selected: str
    chart: tuple[Column, ...]
    chart_width: int
    chart_height: int
    peak: int


def window_stats(name: str, seconds: float, runs: Sequence[Timed], capped: bool) -> WindowStats:
    """The numbers of ``runs`` (all created in the window)."""
    finished = [r for r in runs if r.status in TERMINAL_STATUSES and r.finished_at is not None]
    completed = sum(1 for r in finished if r.status is RunStatus.COMPLETED)
    failed = sum(1 for r in finished if r.status is RunStatus.FAILED)
    waits = [r.started_at - r.due_at for r in runs if r.started_at is not None]
    took = [
        r.finished_at - r.started_at
        for r in finished
        if r.started_at is not None and r.finished_at is not None
        and r.status is not RunStatus.CANCELLED
    ]  # fmt: skip
    triggers = sum(r.trigger_count for r in runs)
    return WindowStats(
        name=name,
        seconds=seconds,
        runs=len(runs),
        capped=capped,
        finished=len(finished),
        completed=completed,
        failed=failed,
        cancelled=len(finished) - completed - failed,
        per_minute=len(finished) / (seconds / 60),
        failure_rate=failed / (completed + failed) if completed + failed else None,
        wait_p50=percentile([max(0.0, w) for w in waits], 0.5),
        wait_p95=percentile([max(0.0, w) for w in waits], 0.95),
        run_p50=percentile(took, 0.5),
        run_p95=percentile(took, 0.95),
        triggers=triggers,
        coalesced_ratio=(triggers - len(runs)) / triggers if triggers else None,
    )


def throughput_chart(
    runs: Sequence[Timed], now: float, seconds: float, width: int = 600, height: int = 120
) -> tuple[tuple[Column, ...], int]:
    """Completed and failed runs per bucket of the window, as stacked columns."""
    size = seconds / CHART_BUCKETS
    start = now - seconds
    completed = [0] * CHART_BUCKETS
    failed = [0] * CHART_BUCKETS
    for run in runs:
        if run.finished_at is None or run.finished_at < start:
            continue
        bucket = min(CHART_BUCKETS - 1, int((run.finished_at - start) // size))
        if run.status is RunStatus.COMPLETED:
            completed[bucket] += 1
        elif run.status is RunStatus.FAILED:
            failed[bucket] += 1
    peak = max((c + f for c, f in zip(completed, failed, strict=True)), default=0)
    step = width / CHART_BUCKETS
    inner = height - 4
    columns = []
    for i, (c, f) in enumerate(zip(completed, failed, strict=True)):
        ch = c / peak * inner if peak else 0.0
        fh = f / peak * inner if peak else 0.0
        columns.append(
            Column(
                x=round(i * step + 1, 1),
                width=round(step - 2, 1),
                completed_y=round(height - ch, 1),
                completed_height=round(ch, 1),
                failed_y=round(height - ch - fh, 1),
                failed_height=round(fh, 1),
                completed=c,
                failed=f,
                label=f"-{_short(seconds - i * size)}",
            )
        )
    return tuple(columns), peak


def _short(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


async def job_stats(source: DashboardSource, job: str, now: float, selected: str) -> JobStats:
    """``job``'s numbers over every window; the chart of the ``selected`` one."""
    longest = max(WINDOWS.values())
    runs = await source.run_timings(job, now - longest, MAX_RUNS)
    capped = len(runs) >= MAX_RUNS
    oldest_read = runs[-1].created_at if runs else now
    windows = []
    for name, seconds in WINDOWS.items():
        inside = [r for r in runs if r.created_at >= now - seconds]
        # Capped: a window reaching past the oldest run read is missing runs.
        windows.append(window_stats(name, seconds, inside, capped and oldest_read > now - seconds))
    chart, peak = throughput_chart(runs, now, WINDOWS[selected])
    return JobStats(job, tuple(windows), selected, chart, 600, 120, peak)


class StatsCache:
    """Recent :func:`job_stats` results, shared by every page and live stream of an app.

    The numbers come from reading up to :data:`MAX_RUNS` runs' times: once per
    :data:`CACHE_SECONDS` per job and window, however many pages watch.
    """

    def __init__(self, seconds: float = CACHE_SECONDS, size: int = 64) -> None:
        self._seconds = seconds
        self._size = size
        self._entries: dict[tuple[str, str], tuple[float, JobStats]] = {}

    async def get(self, source: DashboardSource, job: str, now: float, selected: str) -> JobStats:
        """The stats of ``job``, computed at most every ``seconds``."""
        key = (job, selected)
        found = self._entries.get(key)
        tick = time.monotonic()
        if found is not None and tick - found[0] < self._seconds:
            return found[1]
        stats = await job_stats(source, job, now, selected)
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (tick, stats)
        return stats
