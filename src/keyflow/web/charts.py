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

    Sampled in the background every bucket (see :mod:`.sampler`) and whenever the
    dashboard looks, at most once a second. Should a stretch go unsampled anyway, its
    increase is spread evenly over the buckets it spans (its average rate), never piled
    into the bucket where it ends.
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
        for (t0, v0), (t1, v1) in itertools.pairwise(list(self._samples)):
            increase = max(0, v1[index] - v0[index])
            if t1 <= start or t1 <= t0 or not increase:
                continue
            per_second = increase / (t1 - t0)
            lo, hi = max(t0, start), min(t1, now)
            first = max(0, int((lo - start) // size))
            last = min(BUCKETS - 1, int((hi - start) // size))
            for bucket in range(first, last + 1):
                b0 = start + bucket * size
                overlap = min(hi, b0 + size) - max(lo, b0)
                if overlap > 0:
                    totals[bucket] += per_second * overlap
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
    label_x: float
    """Where its label is anchored: after its start, or before its end near the right."""
    label_anchor: str
    """``start`` or ``end`` (SVG ``text-anchor``), so the label stays inside the chart."""


@dataclass(frozen=True, slots=True)
class AxisMark:
    """A time mark on the axis; its label is anchored so it stays inside the chart."""

    x: float
    label: str
    anchor: str


@dataclass(frozen=True, slots=True)
class Timeline:
    """A key's runs as bars over time (newest at the bottom)."""

    bars: tuple[Bar, ...]
    width: int
    height: int
    row: int
    start: float
    end: float
    axis: tuple[AxisMark, ...]
    """Marks along the time axis, oldest first, ``now`` last."""


LABEL_ROOM = 180
"""Pixels a bar label may need; a bar starting closer to the right edge is labelled to
its left."""


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

    bars = []
    for i, run in enumerate(ordered):
        wait_x = x(run.created_at)
        end_x = x(run.finished_at if run.finished_at is not None else now)
        near_right = wait_x > width - LABEL_ROOM
        bars.append(
            Bar(
                run=run,
                y=10 + i * row,
                wait_x=wait_x,
                start_x=None if run.started_at is None else x(run.started_at),
                end_x=end_x,
                ticks=tuple(x(t.at) for t in run.coalesced),
                label_x=round(max(end_x, wait_x) - 4, 1) if near_right else wait_x + 4,
                label_anchor="end" if near_right else "start",
            )
        )
    span = end - start
    marks = [
        AxisMark(x(start + span * f), _ago(now - (start + span * f)), "middle")
        for f in (0, 0.25, 0.5, 0.75)
    ]
    marks[0] = AxisMark(marks[0].x, marks[0].label, "start")
    axis = (*marks, AxisMark(x(end), "now", "end"))
    return Timeline(tuple(bars), width, 30 + len(bars) * row, row, start, end, axis)


def _ago(seconds: float) -> str:
    if seconds >= 3600:
        return f"-{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"-{seconds / 60:.1f}m"
    return f"-{seconds:.0f}s"
