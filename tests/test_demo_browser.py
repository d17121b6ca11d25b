"""The live demo's dashboard in Chromium: ``keyflow demo`` started as a user starts it.

The demo stamps its runs in simulated time (2026-01-01 on, an hour every few real
seconds here). Its dashboard must read time from that clock: ages of minutes since the
simulated start, a key's timeline over the simulated window, never "7986h ago" or
"-7986h" (issue 11). Each time shown is checked against two bounds: the simulated time
of the last console line read before the page (the clock was at least there), and the
most the simulated clock can read after it (real seconds since launch x speed).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Page, async_playwright, expect

from keyflow.demo.runner import START

from .webkit import CHROMIUM, needs_chromium

SPEED = 600.0
"""Simulated seconds per real second: an hour every six seconds."""
KEY = "crawl_skip:org0:repo0"
"""A lane with a run from the very start: org0's first hourly crawl."""
SLACK = 2.0
"""Simulated seconds of rounding in what a page prints (whole seconds)."""

pytestmark = needs_chromium


class Demo:
    """``keyflow demo`` in a subprocess, and the lines it prints, as they come."""

    def __init__(self, process: asyncio.subprocess.Process, launched: float) -> None:
        self.process = process
        self.launched = launched
        """``time.monotonic()`` before the demo was launched."""
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            async for raw in self.process.stdout:
                async with self._changed:
                    self.lines.append(raw.decode().rstrip("\n"))
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()  # the end of the output: no line will come

    async def line(self, pattern: str) -> re.Match[str]:
        """The first line printed (so far or within a minute) that ``pattern`` matches."""
        async with asyncio.timeout(60), self._changed:
            seen = 0
            while True:
                for text in self.lines[seen:]:
                    if found := re.search(pattern, text):
                        return found
                seen = len(self.lines)
                assert not self.reader.done(), "the demo ended:\n" + "\n".join(self.lines)
                await self._changed.wait()

    def latest_possible(self) -> float:
        """The most the demo's simulated clock can read now (it started after launch)."""
        return START + (time.monotonic() - self.launched) * SPEED


@contextlib.asynccontextmanager
async def keyflow_demo(directory: Path) -> AsyncIterator[Demo]:
    """The demo on a free port with its own storage; stopped with Ctrl-C at the end."""
    command = Path(sys.executable).with_name("keyflow")  # the installed command
    storage = f"sqlite:///{directory / 'demo.db'}"
    with (directory / "stderr.txt").open("wb") as stderr:
        launched = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            str(command),
            *("demo", "--port", "0", "--storage", storage, "--speed", str(SPEED)),
            cwd=directory,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        demo = Demo(process, launched)
        try:
            yield demo
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops cleanly
            try:
                async with asyncio.timeout(60):
                    await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await demo.reader
    errors = (directory / "stderr.txt").read_text()
    assert process.returncode == 0, errors
    assert "Traceback" not in errors, errors


def seconds(duration: str) -> float:
    """``"340ms"``, ``"4.0s"``, ``"2m05s"``, ``"1h05m"`` (the dashboard's durations)."""
    if found := re.fullmatch(r"(\d+)ms", duration):
        return int(found[1]) / 1000
    if found := re.fullmatch(r"(\d+(?:\.\d+)?)s", duration):
        return float(found[1])
    if found := re.fullmatch(r"(\d+)m(\d\d)s", duration):
        return int(found[1]) * 60 + int(found[2])
    found = re.fullmatch(r"(\d+)h(\d\d)m", duration)
    assert found, f"not a duration: {duration!r}"
    return int(found[1]) * 3600 + int(found[2]) * 60


def clock_time(text: str) -> float:
    """``HH:MM:SS`` of the simulated first day, as epoch seconds."""
    hours, minutes, secs = (int(part) for part in text.split(":"))
    return START + hours * 3600 + minutes * 60 + secs


def axis_seconds(label: str) -> tuple[float, float]:
    """A timeline axis label (``"-25.3m"``) in seconds, and its rounding."""
    found = re.fullmatch(r"-(\d+(?:\.\d)?)([smh])", label)
    assert found, f"not an axis label: {label!r}"
    unit = {"s": 1.0, "m": 60.0, "h": 3600.0}[found[2]]
    rounding = unit / 2 if found[2] == "s" else unit / 20
    return float(found[1]) * unit, rounding


async def the_overview(page: Page, demo: Demo, base: str) -> None:
    await page.goto(base)
    # The overview shows no age: the times of the coalesced triggers, in the window.
    times = page.locator("#w-feed li > span.muted:first-child")
    await expect(times.first).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
    for text in await times.all_inner_texts():
        assert START <= clock_time(text) <= demo.latest_possible() + SLACK, text


async def the_runs(page: Page, demo: Demo, base: str) -> None:
    await page.goto(f"{base}runs")
    ages = page.locator("table.runs tbody td").filter(has_text=re.compile(r" ago$"))
    await expect(ages.first).to_be_visible()
    for text in await ages.all_inner_texts():
        age = seconds(text.removesuffix(" ago"))
        assert 0 <= age <= demo.latest_possible() - START + SLACK, text


async def the_key_and_its_first_run(page: Page, demo: Demo, base: str, seen: float) -> None:
    await page.goto(f"{base}key?name={KEY}")
    axis = page.locator("svg.timeline .axis-label")
    await expect(axis.last).to_have_text("now")
    first_label = await axis.first.text_content()  # SVG text: no inner_text
    first_run = await page.locator("svg.timeline g.bar a").first.get_attribute("href")
    assert first_label is not None
    assert first_run is not None
    span, rounding = axis_seconds(first_label)  # from the key's first run to now

    await page.goto(f"{base}{first_run.lstrip('/')}")
    created = page.locator("dl.facts dt:text-is('created') + dd")
    await expect(created).to_have_text(re.compile(r"^\d\d:\d\d:\d\d \(.+ ago\)$"))
    found = re.fullmatch(r"(\S+) \((.+) ago\)", await created.inner_text())
    assert found
    at, age = clock_time(found[1]), seconds(found[2])
    latest = demo.latest_possible()
    assert START <= at <= latest  # a run of the simulated window
    assert span <= latest - START + rounding, first_label  # the axis spans the window
    assert seen - rounding <= at + span <= latest + rounding  # "now" as the timeline saw it
    assert seen - SLACK <= at + age <= latest + SLACK  # ... and the run page


async def the_story_from_the_navigation(page: Page, base: str) -> None:
    await page.goto(base)
    await page.get_by_role("link", name="Story", exact=True).click()
    await expect(page).to_have_url(f"{base}story")
    headers = page.locator("table.story thead th")
    await expect(headers).to_have_text(["", "skip", "queue"])
    await expect(page.locator('[data-waited="skip"]')).to_have_text(re.compile(r"^[1-9][\d,]*$"))
    await expect(page.locator('[data-waited="queue"]')).to_have_text("0")
    await expect(page.locator("[data-sim-time]")).to_have_text(re.compile(r"^Thu \d\d:\d\d$"))


async def test_the_demos_dashboard_reads_simulated_time(tmp_path: Path) -> None:
    async with keyflow_demo(tmp_path) as demo, async_playwright() as playwright:
        base = (await demo.line(r"^dashboard: (http://127\.0\.0\.1:\d+/) "))[1]
        # The console's line at the simulated moment skip has left PRs for a later
        # cycle (queue never does): the story is on screen from then on.
        # Thu: the first simulated day (2026-01-01), the one this test plays in.
        told = await demo.line(r"^Thu (\d\d):(\d\d) \|.* PRs that waited a cycle: skip [1-9]")
        seen = START + int(told[1]) * 3600 + int(told[2]) * 60
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = await browser.new_page()
            await the_overview(page, demo, base)
            await the_runs(page, demo, base)
            await the_key_and_its_first_run(page, demo, base, seen)
            await the_story_from_the_navigation(page, base)
        finally:
            await browser.close()
