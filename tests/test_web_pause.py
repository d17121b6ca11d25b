"""Pause and resume from the dashboard: the POST routes, the "paused" state on every
page, the storage dashboard's read-only view of pauses, and the live stream's wake-up."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from starlette.requests import HTTPConnection

import keyflow
from keyflow.cli import read_only_url
from keyflow.storage_backends import open_backend
from keyflow.storage_backends.jsonfile import JSONFileBackend
from keyflow.web import create_app, token_authorizer
from keyflow.web.security import Access
from keyflow.web.storage_source import opened
from keyflow.web.widgets import WIDGETS, Params, wants

from .conftest import MakeKeyflow, storage_url_for
from .webkit import Gate, client, csrf_of


@pytest.fixture
def storage_url() -> str:
    return "memory://"


@pytest.fixture
async def gated(make_keyflow: MakeKeyflow) -> tuple[keyflow.Keyflow, Gate]:
    gate = Gate()
    kf = make_keyflow(workers=2)
    kf.job("process")(gate.handler)
    kf.job("crawl")(gate.handler)
    await kf.start()
    return kf, gate


async def post(http: httpx.AsyncClient, path: str, data: dict[str, str]) -> httpx.Response:
    token = await csrf_of(http)
    return await http.post(path, data=data, headers={"X-CSRF-Token": token})


def lane_row(page: str, key: str) -> str:
    """The lanes table's row of ``key``."""
    found = re.search(rf'<tr [^>]*data-key="{re.escape(key)}".*?</tr>', page, re.S)
    assert found, key
    return found[0]


async def test_a_paused_lane_accepts_triggers_starts_nothing_and_resumes(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    gate.open()
    async with client(create_app(kf)) as http:
        paused = await post(http, "/pause", {"key": "lane-a"})
        assert paused.status_code == 200, paused.text
        assert "lane lane-a is paused" in paused.text
        assert kf.paused().keys == frozenset({"lane-a"})
        held = await kf.trigger("process", {}, concurrency_key="lane-a")
        other = await kf.trigger("process", {}, concurrency_key="lane-b")
        done = await kf.wait(other.run_id, timeout=5)  # triggered after, finished first
        assert done.status is keyflow.RunStatus.COMPLETED
        run = await kf.get_run(held.run_id)
        assert run is not None
        assert not run.is_terminal
        assert held.run_id not in gate.started
        lanes = (await http.get("/lanes")).text
        assert 'data-paused="lane"' in lane_row(lanes, "lane-a")
        assert "data-paused" not in lane_row(lanes, "lane-b")
        key_page = (await http.get("/key", params={"name": "lane-a"})).text
        assert 'data-paused="lane"' in key_page
        assert "Resume lane" in key_page
        assert "Pause lane" not in key_page
        overview = (await http.get("/")).text
        assert 'data-paused-total="1"' in overview
        assert 'data-paused-key="lane-a"' in overview
        again = await post(http, "/pause", {"key": "lane-a"})
        assert again.status_code == 200
        assert "lane lane-a was already paused" in again.text
        resumed = await post(http, "/resume", {"key": "lane-a"})
        assert resumed.status_code == 200, resumed.text
        assert "lane lane-a is resumed" in resumed.text
        finished = await kf.wait(held.run_id, timeout=5)
        assert finished.status is keyflow.RunStatus.COMPLETED
        key_page = (await http.get("/key", params={"name": "lane-a"})).text
        assert "data-paused" not in key_page
        assert "Pause lane" in key_page
        assert 'data-paused-total="0"' in (await http.get("/")).text
        not_paused = await post(http, "/resume", {"key": "lane-a"})
        assert "lane lane-a was not paused" in not_paused.text


async def test_a_paused_job_shows_on_its_page_its_lanes_and_the_overview(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    gate.open()
    async with client(create_app(kf)) as http:
        job_page = (await http.get("/jobs/process")).text
        assert "Pause job" in job_page
        assert "data-paused" not in job_page
        paused = await post(http, "/pause", {"job": "process"})
        assert paused.status_code == 200, paused.text
        assert kf.paused().jobs == frozenset({"process"})
        held = await kf.trigger("process", {}, concurrency_key="k1")
        crawled = await kf.trigger("crawl", {}, concurrency_key="k2")
        crawl_run = await kf.wait(crawled.run_id, timeout=5)
        assert crawl_run.status is keyflow.RunStatus.COMPLETED
        held_run = await kf.get_run(held.run_id)
        assert held_run is not None
        assert not held_run.is_terminal
        assert held.run_id not in gate.started
        job_page = (await http.get("/jobs/process")).text
        assert 'data-paused="job"' in job_page
        assert "Resume job" in job_page
        lanes = (await http.get("/lanes")).text
        assert "process paused" in lane_row(lanes, "k1")  # the lane's next run is held back
        assert "data-paused" not in lane_row(lanes, "k2")
        assert "process paused" in (await http.get("/key", params={"name": "k1"})).text
        overview = (await http.get("/")).text
        assert 'data-paused-job="process"' in overview
        assert "data-paused" not in (await http.get("/jobs/crawl")).text
        resumed = await post(http, "/resume", {"job": "process"})
        assert "job process is resumed" in resumed.text
        held_run = await kf.wait(held.run_id, timeout=5)
        assert held_run.status is keyflow.RunStatus.COMPLETED


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({}, 400, "give exactly one of job and key"),
        ({"job": "process", "key": "k"}, 400, "give exactly one of job and key"),
        ({"job": "", "key": ""}, 400, "give exactly one of job and key"),
        ({"job": "nope"}, 404, "no job nope"),
    ],
)
async def test_bad_pause_requests_get_a_clear_4xx(
    gated: tuple[keyflow.Keyflow, Gate], fields: dict[str, str], status: int, message: str
) -> None:
    kf, _ = gated
    async with client(create_app(kf)) as http:
        for path in ("/pause", "/resume"):
            response = await post(http, path, fields)
            if path == "/resume" and status == 404:
                # Resuming what is not paused harms nothing: said, not refused.
                assert response.status_code == 200
                assert "was not paused" in response.text
                continue
            assert response.status_code == status, (path, response.text)
            assert 'class="flash error"' in response.text
            assert message in response.text
    assert kf.paused() == keyflow.Paused(frozenset(), frozenset())


async def test_pause_needs_the_csrf_token_and_write_access(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, _ = gated
    async with client(create_app(kf)) as http:
        forged = await http.post("/pause", data={"key": "k"}, headers={"X-CSRF-Token": "x"})
        assert forged.status_code == 403
    async with client(create_app(kf, read_only=True)) as http:
        assert "Pause job" not in (await http.get("/jobs/process")).text
        refused = await post(http, "/pause", {"key": "k"})
        assert refused.status_code == 403
        assert "read-only" in refused.text

    def look_only(conn: HTTPConnection) -> Access:
        return "read_only"

    async with client(create_app(kf, authorize=look_only)) as http:
        assert "Pause job" not in (await http.get("/jobs/process")).text
        refused = await post(http, "/pause", {"job": "process"})
        assert refused.status_code == 403
    async with client(create_app(kf, authorize=token_authorizer("s3cret"))) as http:
        assert (await http.post("/resume", data={"job": "process"})).status_code == 403
    assert kf.paused() == keyflow.Paused(frozenset(), frozenset())


@pytest.mark.parametrize("backend", ["sqlite", "json"])
async def test_the_storage_dashboard_shows_the_writers_pauses_without_buttons(
    make_keyflow: MakeKeyflow, tmp_path: Path, backend: str
) -> None:
    url = storage_url_for(backend, tmp_path)
    gate = Gate()
    writer = make_keyflow(workers=2, storage=url)
    writer.job("process")(gate.handler)
    await writer.start()
    await writer.trigger("process", {}, concurrency_key="k1")
    await writer.pause(key="k1")
    await writer.pause(job="process")
    reader = open_backend(read_only_url(url), retention=1000)
    if isinstance(reader, JSONFileBackend):
        reader.refresh_seconds = 0.0  # re-read the files at every request
    async with opened(reader) as source:
        source.poll_seconds = 0.0
        async with client(create_app(source, read_only=True)) as http:
            overview = (await http.get("/")).text
            assert 'data-paused-key="k1"' in overview
            assert 'data-paused-job="process"' in overview
            assert "Resume" not in overview
            row = lane_row((await http.get("/lanes")).text, "k1")
            assert 'data-paused="lane"' in row
            assert "process paused" in row
            key_page = (await http.get("/key", params={"name": "k1"})).text
            assert 'data-paused="lane"' in key_page
            assert "Resume lane" not in key_page
            job_page = (await http.get("/jobs/process")).text
            assert 'data-paused="job"' in job_page
            assert "Resume job" not in job_page
            refused = await post(http, "/resume", {"key": "k1"})
            assert refused.status_code == 403
            assert "read-only" in refused.text
            await writer.resume(key="k1")
            await writer.resume(job="process")
            assert 'data-paused-total="0"' in (await http.get("/")).text
            assert "data-paused" not in (await http.get("/key", params={"name": "k1"})).text
    gate.open()


async def test_a_pause_wakes_the_widgets_that_show_it(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, _ = gated
    async with kf.changes() as watch:  # what the dashboard's live streams listen to
        feed = aiter(watch)
        await kf.pause(key="lane-a")
        changes = await anext(feed)
        lane_page, other_lane = Params(key="lane-a"), Params(key="lane-b")
        assert wants("lane", lane_page, changes)
        assert not wants("lane", other_lane, changes)
        assert wants("lanes", Params(), changes)
        assert wants("paused", Params(), changes)
        assert not wants("pause", Params.parse({"job": "process"}), changes)
        await kf.pause(job="process")
        changes = await anext(feed)
        job_page = Params.parse({"job": "process"})
        assert all(wants(name, job_page, changes) for name in WIDGETS)  # "everything"


async def test_a_lane_shows_the_pause_of_the_job_that_runs_next_in_it(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    first = await kf.trigger("crawl", {}, concurrency_key="mixed")
    await gate.any_started.wait()
    await kf.trigger("process", {}, concurrency_key="mixed")  # waits behind the crawl
    await kf.pause(job="process")
    async with client(create_app(kf)) as http:
        row = lane_row((await http.get("/lanes")).text, "mixed")
        assert "process paused" in row
        assert "crawl paused" not in row
    gate.release(first.run_id)
    gate.open()


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_lane_paused_before_its_first_run_has_a_page(
    make_keyflow: MakeKeyflow, tmp_path: Path, backend: str
) -> None:
    """The overview links a paused lane; its page exists though no run was made yet."""
    kf = make_keyflow(storage=storage_url_for(backend, tmp_path))
    kf.job("process")(Gate().handler)
    await kf.start()
    await kf.pause(key="lane-to-come")
    async with client(create_app(kf)) as http:
        overview = (await http.get("/")).text
        assert 'data-paused-key="lane-to-come"' in overview
        page = await http.get("/key", params={"name": "lane-to-come"})
        assert page.status_code == 200
        assert 'data-paused="lane"' in page.text
        assert (await http.get("/key", params={"name": "never-seen"})).status_code == 404
    if backend == "memory":
        return
    reader = open_backend(read_only_url(storage_url_for(backend, tmp_path)), retention=1000)
    async with opened(reader) as source, client(create_app(source, read_only=True)) as http:
        assert (await http.get("/key", params={"name": "lane-to-come"})).status_code == 200
