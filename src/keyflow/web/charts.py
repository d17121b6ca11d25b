"""Numbers for the server-rendered SVG charts: sparklines of rates, and key timelines.

Only geometry lives here; the templates draw it (no markup in Python).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from ..runs import Run

WINDOW_SECONDS = 600.0
"""Sparklines cover the last 10 minutes."""
BUCKETS = 60
"""Of 10 seconds each."""


@dataclass(frozen=True, slots=True)
class Sparkline:
    """A polyline in a ``width`` x ``height`` box, and the numbers to label it with."""

    points: str
    """``"x,y x,y …"`` for an SVG polyline."""
    width: int
    height: int
    latest: float
    """The rate in the newest bucket (per second)."""
    peak: float
    """The highest bucket rate shown (per second)."""


class RateHistory:
    """Samples of ever-growing counters; rates per bucket over the last 10 minutes.

    Sampled whenever the dashboard looks (page views and live ticks, at most once a
    second); a stretch nobody watched is spread over the bucket where it ends.
    """

    def __init__(self, *names: str) -> None:
        self.names = names
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()

    def sample(self, now: float, *values: int) -> None:
        """Record the counters' values at ``now`` (ignored within a second of the last)."""
        samples = self._samples
        if samples and now - samples[-1][0] < 1.0:
            return
        samples.append((now, values))
        # Keep one sample from before the window: the first difference needs it.
        while len(samples) > 1 and samples[1][0] < now - WINDOW_SECONDS:
            samples.popleft()

    def rates(self, name: str, now: float) -> list[float]:
        """Per-second rate of counter ``name`` in each bucket, oldest first."""
        index = self.names.index(name)
        start = now - WINDOW_SECONDS
        size = WINDOW_SECONDS / BUCKETS
        totals = [0.0] * BUCKETS
        samples = list(self._samples)
        for (_, v0), (t1, v1) in itertools.pairwise(samples):
            if t1 < start:
                continue
            bucket = min(BUCKETS - 1, max(0, int((t1 - start) // size)))
            totals[bucket] += max(0, v1[index] - v0[index])
        return [total / size for total in totals]

    def sparkline(self, name: str, now: float, width: int = 240, height: int = 40) -> Sparkline:
        """The sparkline of counter ``name``."""
        rates = self.rates(name, now)
        peak = max(rates) if rates else 0.0
        step = width / (BUCKETS - 1)
        points = " ".join(
            f"{i * step:.1f},{height - 2 - (r / peak * (height - 4) if peak else 0):.1f}"
            for i, r in enumerate(rates)
        )
        return Sparkline(points, width, height, rates[-1] if rates else 0.0, peak)


@dataclass(frozen=True, slots=True)
class Bar:
    """One run in a key's timeline: a waiting segment, a running segment, ticks."""

    run: Run
    y: float
    wait_x: float
    """Where the run was created."""
    start_x: float | None
    """Where its latest attempt started (None: never)."""
    end_x: float
    """Where it finished, or now."""
    ticks: tuple[float, ...]
    """Where coalesced triggers joined it."""


@dataclass(frozen=True, slots=True)
class Timeline:
    """A key's runs as bars over time (newest at the bottom)."""

    bars: tuple[Bar, ...]
    width: int
    height: int
    row: int
    start: float
    end: float
    axis: tuple[tuple[float, str], ...]
    """(x, label) marks along the time axis."""


def timeline(runs: list[Run], now: float, width: int = 900, row: int = 26) -> Timeline:
    """Lay ``runs`` (any order) out on a shared time axis ending at ``now``."""
    ordered = sorted(runs, key=lambda r: (r.created_at, r.id))
    start = min((r.created_at for r in ordered), default=now - 60)
    for run in ordered:
        start = min([start, *(t.at for t in run.coalesced)])
    end = max(now, start + 1.0)
    scale = (width - 20) / (end - start)

    def x(t: float) -> float:
        return round(10 + (t - start) * scale, 1)

    bars = tuple(
        Bar(
            run=run,
            y=10 + i * row,
            wait_x=x(run.created_at),
            start_x=None if run.started_at is None else x(run.started_at),
            end_x=x(run.finished_at if run.finished_at is not None else now),
            ticks=tuple(x(t.at) for t in run.coalesced),
        )
        for i, run in enumerate(ordered)
    )
    span = end - start
    axis = tuple(
        (x(start + span * f), _ago(now - (start + span * f))) for f in (0, 0.25, 0.5, 0.75)
    )
    return Timeline(bars, width, 30 + len(bars) * row, row, start, end, (*axis, (x(end), "now")))


def _ago(seconds: float) -> str:
    if seconds >= 3600:
        return f"-{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"-{seconds / 60:.1f}m"
    return f"-{seconds:.0f}s"
