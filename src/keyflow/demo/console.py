"""What the demo says on the terminal: one scoreboard line per simulated ten minutes.

Where rich is installed (it is optional: keyflow does not depend on it) and the output
is a terminal, a live table of the side-by-side stays at the bottom, refreshed every
second, and the lines scroll above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from .scoreboard import Scoreboard, busier, line, sim_clock
from .simtime import SimTime

PERIOD = 600.0
"""Simulated seconds between two lines."""
SAMPLE = 30.0
"""Simulated seconds between two looks at the lanes (a line tells the busiest look)."""


class Console:
    """Prints :func:`~.scoreboard.line` at every simulated ten minutes."""

    def __init__(
        self,
        board: Callable[[], Scoreboard],
        time: SimTime,
        out: Callable[[str], None] = print,
        period: float = PERIOD,
    ) -> None:
        self.board = board
        self.time = time
        self.out = out
        self.period = period
        self._live: Any = None
        self._peak: Scoreboard | None = None
        """The busiest look at the lanes since the last line."""

    def start(self) -> None:
        """Arm the first line, at the next multiple of the period (simulated)."""
        first = math.floor(self.time.now() / self.period + 1) * self.period
        self.time.at(first, partial(self._tick, first))
        self.time.at(self.time.now() + SAMPLE, partial(self._sample, self.time.now() + SAMPLE))

    async def _sample(self, at: float) -> None:
        board = self.board()
        self._peak = busier(self._peak, board)
        self.time.at(at + SAMPLE, partial(self._sample, at + SAMPLE))

    async def _tick(self, at: float) -> None:
        board = self.board()
        # A snapshot at :x0 would often fall between two waves of crawls: the line
        # tells the busiest moment of the ten minutes (now included).
        self.say(line(busier(self._peak, board), now=board))
        self._peak = None
        self.time.at(at + self.period, partial(self._tick, at + self.period))

    def say(self, text: str) -> None:
        """Print a line (above rich's live table, when it shows)."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            self.out(text)

    async def show_live(self, stop: asyncio.Event) -> None:
        """Rich's live table, refreshed each second until ``stop``: only in a terminal with rich."""
        live = _rich_live() if sys.stdout.isatty() else None
        if live is None:
            return
        self._live = live
        try:
            while not stop.is_set():
                live.update(_table(self.board()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)  # the refresh period
        finally:
            live.stop()
            self._live = None


def _rich_live() -> Any:
    """Rich's live display, started, when rich is installed (it is optional)."""
    try:
        live_module = importlib.import_module("rich.live")
    except ImportError:
        return None
    display = live_module.Live("", refresh_per_second=4, transient=True)
    display.start()
    return display


def _table(board: Scoreboard) -> Any:
    """The side-by-side as a rich table."""
    table_module = importlib.import_module("rich.table")
    table = table_module.Table(
        title=f"{sim_clock(board.at)} (simulated) · scenario {board.scenario}",
        title_justify="left",
    )
    table.add_column("")
    for report in board.reports:
        table.add_column(report.label, justify="right")
    rows: tuple[tuple[str, Callable[[Any], str]], ...] = (
        ("PRs fetched", lambda r: f"{r.fetched:,}"),
        ("PRs processed", lambda r: f"{r.processed:,}"),
        ("PRs that waited a cycle", lambda r: f"{r.waited_a_cycle:,}"),
        ("staleness p50", lambda r: f"{r.staleness_p50:.1f} min"),
        ("staleness max", lambda r: f"{r.staleness_max:.1f} min"),
        ("triggers queued (follow-ups)", lambda r: f"{r.queued:,}"),
        ("triggers coalesced", lambda r: f"{r.coalesced:,}"),
        ("process runs", lambda r: f"{r.process_runs:,}"),
    )
    for name, cell in rows:
        table.add_row(name, *(cell(r) for r in board.reports))
    lanes = board.lanes
    table.caption = (
        f"lanes: {lanes['running']} running, {lanes['running+queued']} running+queued"
        + (f" ({', '.join(board.queued_lanes)})" if board.queued_lanes else "")
    )
    return table
