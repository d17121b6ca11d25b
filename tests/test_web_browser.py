"""A real browser (Debian's Chromium, driven by Playwright) watching lanes change live."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Dialog, Page, async_playwright, expect

from keyflow.web import create_app

from .conftest import MakeKeyflow
from .webkit import CHROMIUM, Gate, needs_chromium, serving

pytestmark = needs_chromium


@pytest.fixture
def storage_url() -> str:
    return "memory://"


async def trigger_from_form(page: Page, input: str, coalesce: str) -> None:
    form = page.locator("form.trigger")
    await form.locator("select[name=job]").select_option("process")
    await form.locator("input[name=key]").fill("process:acme")
    await form.locator("select[name=coalesce]").select_option(coalesce)
    await form.locator("textarea[name=input]").fill(input)
    await form.locator("button[type=submit]").click()  # the confirm dialog is accepted
    await expect(page.locator("#flash .flash.ok")).to_be_visible()


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


async def test_a_lane_goes_idle_running_queued_idle_without_reloading(
    make_keyflow: MakeKeyflow, tmp_path: Path
) -> None:
    gate = Gate()
    kf = make_keyflow(workers=4, clock=None)
    kf.job("process")(gate.handler)
    await kf.start()
    app = create_app(kf, min_interval=0.05)
    async with serving(app) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            control, lanes = await context.new_page(), await context.new_page()
            control.on("dialog", accept)
            await control.goto(f"{base}/")
            await lanes.goto(f"{base}/lanes?prefix=process:")
            await expect(lanes.locator("#live-state")).to_have_text("live")
            await lanes.evaluate("window.keyflowMarker = 'no reload'")
            row = lanes.locator('tr[data-key="process:acme"]')
            await expect(lanes.locator("#w-lanes")).to_contain_text("No keys")

            await trigger_from_form(control, '{"n": 1}', "none")
            await expect(row.locator("[data-state]")).to_have_attribute("data-state", "running")
            await trigger_from_form(control, '{"n": 2}', "queue")
            await expect(row.locator("[data-state]")).to_have_attribute(
                "data-state", "running+queued"
            )
            await expect(row.locator("[data-coalesced]")).to_have_text("0")
            await trigger_from_form(control, '{"n": 3}', "queue")  # joins the queued run
            await expect(row.locator("[data-coalesced]")).to_have_text("1")
            await trigger_from_form(control, '{"n": 4}', "queue")
            await expect(row.locator("[data-coalesced]")).to_have_text("2")
            await lanes.screenshot(path=tmp_path / "lanes-running-queued.png", full_page=True)

            gate.open()
            await expect(row.locator("[data-state]")).to_have_attribute("data-state", "idle")
            assert await lanes.evaluate("window.keyflowMarker") == "no reload"
            await control.goto(f"{base}/keys/process:acme")
            await expect(control.locator("svg.timeline .tick")).to_have_count(2)
            await control.screenshot(path=tmp_path / "key-timeline.png", full_page=True)
            assert (tmp_path / "lanes-running-queued.png").stat().st_size > 10_000
        finally:
            await browser.close()
    await kf.run_until_idle()


async def test_user_data_stays_inert_in_the_browser(make_keyflow: MakeKeyflow) -> None:
    gate = Gate()
    gate.open()
    kf = make_keyflow(workers=2, clock=None)
    kf.job("process")(gate.handler)
    await kf.start()
    script = "<script>window.keyflowOwned = 1</script><img src=x onerror='window.keyflowOwned=2'>"
    result = await kf.trigger("process", {"note": script, "fail": script}, concurrency_key=script)
    await kf.run_until_idle()
    app = create_app(kf)
    async with serving(app) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = await browser.new_page()
            for path in (f"/runs/{result.run_id}", "/runs", "/lanes", "/"):
                await page.goto(f"{base}{path}")
                await expect(page.locator("main")).to_be_visible()
                assert await page.evaluate("window.keyflowOwned") is None, path
            await page.goto(f"{base}/runs/{result.run_id}")
            await expect(page.locator("details.error summary")).to_contain_text("<script>")
        finally:
            await browser.close()
