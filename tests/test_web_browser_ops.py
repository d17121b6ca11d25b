"""Real Chromium (Debian's, through Playwright): phone layout on every page, dark mode,
an action's error shown, a bulk cancel, focus and selection kept across live updates,
Back restoring the filter controls, "/" focusing search, and no CSP violation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

import keyflow
from keyflow.web import create_app

from .conftest import MakeKeyflow
from .webkit import CHROMIUM, Gate, needs_chromium, serving

PHONE: ViewportSize = {"width": 390, "height": 844}
LONG_KEY = "process:" + "an-organisation-with-a-very-long-name-" * 3 + "x"

pytestmark = needs_chromium


@pytest.fixture
def storage_url() -> str:
    return "memory://"


@dataclass
class Served:
    kf: keyflow.Keyflow
    gate: Gate
    base: str
    browser: Browser
    run_id: str


@pytest.fixture
async def served(make_keyflow: MakeKeyflow) -> AsyncIterator[Served]:
    """A busy-looking scheduler (wall clock), its dashboard on uvicorn, and Chromium."""
    gate = Gate()
    kf = make_keyflow(workers=8, clock=None)
    kf.job("process", retries=1)(gate.handler)
    kf.job("crawl")(gate.handler)
    await kf.start()
    done = Gate()
    done.open()
    kf.job("quick")(done.handler)
    first = await kf.trigger("quick", {"note": "x" * 400, "org": "acme"}, concurrency_key=LONG_KEY)
    await kf.trigger("quick", {"fail": "a failure message " * 20}, concurrency_key=LONG_KEY)
    for n in range(12):
        await kf.trigger("quick", {"n": n}, concurrency_key=f"crawl:repo{n}", labels={"n": str(n)})
    await kf.run_until_idle()
    await kf.trigger("process", {"org": "acme"}, concurrency_key="process:acme")
    await gate.any_started.wait()
    await kf.trigger("process", {"org": "acme"}, concurrency_key="process:acme", coalesce="queue")
    await kf.trigger("process", {"org": "acme"}, concurrency_key="process:acme", coalesce="queue")
    app = create_app(kf, min_interval=0.05)
    async with serving(app) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield Served(kf, gate, base, browser, first.run_id)
        finally:
            await browser.close()
            gate.open()


def watch_console(page: Page) -> list[str]:
    """Console errors (CSP violations among them) of ``page``."""
    errors: list[str] = []

    def record(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", record)
    return errors


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


def pages(served: Served) -> list[str]:
    return [
        "/",
        "/lanes",
        f"/key?name={LONG_KEY}",
        "/key?name=process:acme",
        "/runs",
        f"/runs/{served.run_id}",
        "/jobs/quick",
        "/key?name=nope",
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_every_page_fits_a_phone_without_console_errors(
    served: Served, scheme: Any, tmp_path: Path
) -> None:
    context = await served.browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, color_scheme=scheme
    )
    page = await context.new_page()
    errors = watch_console(page)
    for path in pages(served):
        await page.goto(served.base + path)
        await expect(page.locator("main")).to_be_visible()
        if path != "/key?name=nope":
            await expect(page.locator("#live-state")).to_have_text("live")
        overflow = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert overflow[0] <= overflow[1], (path, overflow)
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(11, 15, 23)" if scheme == "dark" else "rgb(246, 247, 249)")
    await page.goto(served.base + "/key?name=process:acme")
    await page.screenshot(path=tmp_path / f"phone-{scheme}.png", full_page=True)
    assert (tmp_path / f"phone-{scheme}.png").stat().st_size > 10_000
    assert [e for e in errors if "404" not in e] == []  # no CSP violation, no script error
    await context.close()


async def test_an_actions_error_is_shown_and_replaces_an_earlier_success(served: Served) -> None:
    page = await served.browser.new_page()
    page.on("dialog", accept)
    await page.goto(served.base + "/")
    form = page.locator("form.trigger")
    await form.locator("select[name=job]").select_option("quick")
    await form.locator("textarea[name=input]").fill('{"n": 1}')
    await form.locator("button[type=submit]").click()
    await expect(page.locator("#flash .flash.ok")).to_contain_text("Triggered")
    await form.locator("textarea[name=input]").fill("{oops")
    await form.locator("button[type=submit]").click()
    error = page.locator("#flash .flash.error")
    await expect(error).to_contain_text("not valid JSON")
    await expect(page.locator("#flash .flash.ok")).to_have_count(0)
    await form.locator("select[name=job]").select_option("crawl")
    await form.locator("textarea[name=input]").fill("[1, 2]")
    await form.locator("button[type=submit]").click()
    await expect(error).to_contain_text("must be a JSON object")
    await page.goto(f"{served.base}/runs/{served.run_id}")  # a finished run
    await page.locator("button", has_text="Retrigger").click()
    await expect(page.locator("#flash .flash.ok")).to_be_visible()


async def test_a_bulk_cancel_confirms_with_the_count_and_keeps_selection_live(
    served: Served,
) -> None:
    kf = served.kf
    waiting = [
        (await kf.trigger("crawl", {"n": n}, concurrency_key=f"later{n}", delay=600)).run_id
        for n in range(3)
    ]
    page = await served.browser.new_page()
    questions: list[str] = []

    async def confirm(dialog: Dialog) -> None:
        questions.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await page.goto(served.base + "/runs?job=crawl")
    await expect(page.locator("#live-state")).to_have_text("live")
    first, second = (page.locator(f"#pick-{run_id}") for run_id in waiting[:2])
    await first.check()
    await second.check()
    await second.focus()
    await expect(page.locator("[data-selected-count]")).to_have_text("2 selected")
    # A live update arrives (a new run in the table): selection and focus stay.
    newer = await kf.trigger("crawl", {"n": 99}, concurrency_key="later99", delay=600)
    await expect(page.locator(f"#pick-{newer.run_id}")).to_be_visible()
    await expect(first).to_be_checked()
    await expect(second).to_be_checked()
    await expect(second).to_be_focused()
    await page.locator("form[data-bulk] button", has_text="Cancel").click()
    await expect(page.locator("#flash .flash.ok")).to_contain_text("cancelled 2 runs")
    assert questions == ["Cancel 2 runs?"]
    row = page.locator(f'tr[data-run="{waiting[0]}"] .status')
    await expect(row).to_have_text("cancelled")
    await expect(page.locator(f'tr[data-run="{waiting[2]}"] .status')).to_have_text("scheduled")
    statuses = [(await kf.get_run(r)).status.value for r in waiting]  # type: ignore[union-attr]
    assert statuses == ["cancelled", "cancelled", "scheduled"]


async def test_back_restores_the_filter_controls_and_slash_focuses_search(
    served: Served,
) -> None:
    page = await served.browser.new_page()
    await page.goto(served.base + "/runs")
    job = page.locator("#filters select[name=job]")
    status = page.locator("#filters select[name=status]")
    await job.select_option("quick")
    await expect(page).to_have_url(f"{served.base}/runs?job=quick")
    await status.select_option("failed")
    await expect(page).to_have_url(f"{served.base}/runs?job=quick&status=failed")
    await expect(page.locator("#w-runs [data-total]")).to_have_attribute("data-total", "1")
    await page.go_back()
    await expect(page).to_have_url(f"{served.base}/runs?job=quick")
    await expect(job).to_have_value("quick")
    await expect(status).to_have_value("")
    await page.go_back()
    await expect(job).to_have_value("")
    await page.locator("h2").first.click()
    await page.keyboard.press("/")
    await expect(page.locator("#filters input[name=q]")).to_be_focused()


async def test_back_restores_the_key_prefix_and_time_filters(served: Served) -> None:
    page = await served.browser.new_page()
    await page.goto(served.base + "/runs")
    prefix = page.locator("#filters input[name=key_prefix]")
    after = page.locator("#filters input[name=created_after]")
    await prefix.fill("crawl:")
    await expect(page).to_have_url(f"{served.base}/runs?key_prefix=crawl%3A")
    await expect(page.locator("#w-runs [data-total]")).to_have_attribute("data-total", "12")
    await after.fill("2000-01-01")
    await after.press("Tab")  # a text field applies on change
    await expect(page).to_have_url(
        f"{served.base}/runs?key_prefix=crawl%3A&created_after=2000-01-01"
    )
    await after.fill("soon")
    await after.press("Tab")
    problem = page.locator('#w-runs [data-problem="created_after"]')
    await expect(problem).to_contain_text("is not a date or time")
    await page.go_back()
    await expect(page).to_have_url(
        f"{served.base}/runs?key_prefix=crawl%3A&created_after=2000-01-01"
    )
    await expect(after).to_have_value("2000-01-01")
    await expect(prefix).to_have_value("crawl:")
    await expect(problem).to_have_count(0)
    await page.go_back()
    await expect(after).to_have_value("")
    await expect(prefix).to_have_value("crawl:")
    await page.go_back()
    await expect(page).to_have_url(f"{served.base}/runs")
    await expect(prefix).to_have_value("")
