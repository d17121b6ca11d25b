"""The live demo's web app: the story page beside the dashboard."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from keyflow.demo.app import create_demo_app
from keyflow.demo.runner import START, virtual_story
from keyflow.demo.scoreboard import Scoreboard
from keyflow.demo.settings import StorySettings
from keyflow.demo.world import HOUR

from .webkit import CaptureTemplates, client


async def test_the_story_page_shows_both_pipelines_beside_the_dashboard() -> None:
    story, _ = virtual_story(StorySettings(), out=lambda _: None)
    await story.kf.start()
    try:
        await story.sim.run(START + HOUR - 1, asyncio.Event())
        app = CaptureTemplates(create_demo_app(story.kf, story.board))
        async with client(app) as http:
            page = await http.get("/story")
            assert page.status_code == 200
            name, context = app.rendered[-1]
            assert name == "story.html"
            board = context["board"]
            assert isinstance(board, Scoreboard)
            assert [r.label for r in board.reports] == ["skip", "queue"]
            skip, queue = board.reports
            assert skip.waited_a_cycle > 0
            assert queue.waited_a_cycle == 0
            assert f'data-waited="skip">{skip.waited_a_cycle:,}<' in page.text
            assert 'data-waited="queue">0<' in page.text
            assert 'http-equiv="refresh"' in page.text  # it follows the story
            assert (await http.get("/")).status_code == 200  # the dashboard, beside it
            assert (await http.get("/lanes")).status_code == 200
    finally:
        await story.kf.stop(grace=0)
        story.world.close()


async def test_the_dashboards_navigation_leads_to_the_story() -> None:
    story, _ = virtual_story(StorySettings(), out=lambda _: None)
    await story.kf.start()
    try:
        app = CaptureTemplates(create_demo_app(story.kf, story.board))
        async with client(app) as http:
            for path in ("/", "/lanes", "/runs"):
                page = await http.get(path)
                assert '<a href="/story">Story</a>' in page.text, path
            story_page = await http.get("/story")
            assert story_page.status_code == 200
            assert app.rendered[-1][0] == "story.html"
    finally:
        await story.kf.stop(grace=0)
        story.world.close()


async def test_the_story_links_its_running_and_queued_lanes_safely() -> None:
    """The moment the story is about (lanes running+queued) renders, with safe links."""
    story, _ = virtual_story(StorySettings(), out=lambda _: None)
    await story.kf.start()
    try:
        board = replace(story.board(), queued_lanes=("process_queue:org-1", "a&b?c=/d"))
        app = create_demo_app(story.kf, lambda: board)
        async with client(app) as http:
            page = await http.get("/story")
            assert page.status_code == 200
            assert 'href="/key?name=process_queue%3Aorg-1"' in page.text
            assert 'href="/key?name=a%26b%3Fc%3D/d"' in page.text
            followed = await http.get("/key", params={"name": "process_queue:org-1"})
            assert followed.status_code in (200, 404)  # a real dashboard page, not a 5xx
            assert 'href="http' not in page.text  # paths, never built from the Host header
            assert "<style" not in page.text  # the CSP allows no inline style
            assert page.headers["content-security-policy"].startswith("default-src 'none'")
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["cache-control"] == "no-store"
        async with client(app, base_url="http://rebind.attacker.test") as foreign:
            assert (await foreign.get("/story")).status_code == 400
            assert (await foreign.get("/")).status_code == 400
    finally:
        await story.kf.stop(grace=0)
        story.world.close()
