"""Real Chromium: pause a lane from its page, watch another page show it live, trigger
(accepted, held back), resume from the overview, watch the run complete."""

from __future__ import annotations

import pytest
from playwright.async_api import Dialog, async_playwright, expect

from keyflow.web import create_app

from .conftest import MakeKeyflow
from .webkit import CHROMIUM, Gate, needs_chromium, serving

pytestmark = needs_chromium


@pytest.fixture
def storage_url() -> str:
    return "memory://"


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


async def test_pausing_a_lane_shows_live_holds_its_runs_and_resuming_runs_them(
    make_keyflow: MakeKeyflow,
) -> None:
    gate = Gate()
    gate.open()
    kf = make_keyflow(workers=2, clock=None)
    kf.job("process")(gate.handler)
    await kf.start()
    await kf.trigger("process", {}, concurrency_key="process:acme")
    await kf.run_until_idle()
    app = create_app(kf, min_interval=0.05)
    async with serving(app) as base, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            key_page, lanes = await context.new_page(), await context.new_page()
            key_page.on("dialog", accept)
            await key_page.goto(f"{base}/key?name=process:acme")
            await lanes.goto(f"{base}/lanes")
            await expect(lanes.locator("#live-state")).to_have_text("live")
            row = lanes.locator('tr[data-key="process:acme"]')
            await expect(row.locator("[data-paused]")).to_have_count(0)

            await key_page.locator("button[data-pause-button]", has_text="Pause lane").click()
            await expect(key_page.locator("#flash .flash.ok")).to_contain_text("is paused")
            await expect(row.locator('[data-paused="lane"]')).to_have_text("paused")  # live
            await expect(key_page.locator("#w-lane [data-paused=lane]")).to_be_visible()
            assert kf.paused().keys == frozenset({"process:acme"})

            held = await kf.trigger("process", {"n": 1}, concurrency_key="process:acme")
            run_page = await context.new_page()
            await run_page.goto(f"{base}/runs/{held.run_id}")
            await expect(run_page.locator("#live-state")).to_have_text("live")
            status = run_page.locator("#w-run [data-status]")
            await expect(status).not_to_have_attribute("data-status", "completed")
            assert held.run_id not in gate.started  # accepted, waiting for the resume

            overview = await context.new_page()
            await overview.goto(f"{base}/")
            item = overview.locator('[data-paused-key="process:acme"]')
            await item.locator("button", has_text="Resume lane").click()
            await expect(overview.locator("#flash .flash.ok")).to_contain_text("is resumed")
            await expect(status).to_have_attribute("data-status", "completed")  # live
            await expect(row.locator("[data-paused]")).to_have_count(0)
            await expect(item).to_have_count(0)
            await expect(
                key_page.locator("button[data-pause-button]", has_text="Pause lane")
            ).to_be_visible()
        finally:
            await browser.close()
