"""The operator's tools and the pages' correctness: keys in URLs, failed actions shown,
bulk actions, lane filters and order, label filters, per-job statistics, numbers."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import keyflow
from keyflow.web import create_app
from keyflow.web.source import KeyflowSource, RunFilters

from .conftest import MakeKeyflow
from .webkit import CaptureTemplates, Gate, client, csrf_of

ODD_KEYS = ("q?x=1", "a/b/../c", "space & ampersand", "100%", "#hash")


@pytest.fixture
def storage_url() -> str:
    return "memory://"


@pytest.fixture
async def gated(make_keyflow: MakeKeyflow) -> tuple[keyflow.Keyflow, Gate]:
    gate = Gate()
    kf = make_keyflow(workers=4)
    kf.job("process", retries=0)(gate.handler)
    kf.job("crawl")(gate.handler)
    await kf.start()
    return kf, gate


async def post(http: httpx.AsyncClient, path: str, data: Any = None) -> httpx.Response:
    token = await csrf_of(http)
    return await http.post(path, data=data, headers={"X-CSRF-Token": token})


async def test_keys_in_urls_are_encoded_and_an_unknown_key_is_a_404(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    gate.open()
    for key in ODD_KEYS:
        await kf.trigger("process", {}, concurrency_key=key)
    await kf.run_until_idle()
    async with client(create_app(kf)) as http:
        runs_page = (await http.get("/runs")).text
        for key in ODD_KEYS:
            link = re.search(
                r'href="(/key\?name=[^"]*)"><code>' + re.escape(escape(key)), runs_page
            )
            assert link, key
            page = await http.get(link[1].replace("&amp;", "&"))
            assert page.status_code == 200, key
            assert f"Key <code>{escape(key)}</code>" in page.text
        assert (await http.get("/key", params={"name": "never-seen"})).status_code == 404
        assert (await http.get("/key")).status_code == 404
        old = await http.get("/keys/process:acme")  # an earlier version's link
        assert old.status_code == 301
        assert old.headers["location"] == "/key?name=" + quote("process:acme", safe="")


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&#34;")


async def test_failed_actions_answer_with_their_reason(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    gate.open()
    done = await kf.trigger("process", {}, concurrency_key="k")
    await kf.run_until_idle()
    async with client(create_app(kf)) as http:
        finished = await post(http, f"/runs/{done.run_id}/cancel")
        assert finished.status_code == 409
        assert 'class="flash error"' in finished.text
        assert "already completed" in finished.text
        missing = await post(http, "/runs/nope/cancel")
        assert missing.status_code == 404
        assert "no run nope" in missing.text
        again = await post(http, "/runs/nope/retrigger")
        assert again.status_code == 404
        forged = await http.post("/trigger", data={"job": "process"}, headers={"HX-Request": "1"})
        assert forged.status_code == 403
        assert 'class="flash error"' in forged.text  # htmx swaps it into the page
    async with client(create_app(kf, read_only=True)) as http:
        refused = await post(http, f"/runs/{done.run_id}/retrigger")
        assert refused.status_code == 403
        assert "read-only" in refused.text


async def test_bulk_cancel_selected_runs_and_the_waiting_runs_of_a_lane(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    first = await kf.trigger("process", {}, concurrency_key="lane")
    await gate.any_started.wait()
    waiting = [
        (await kf.trigger("process", {"n": n}, concurrency_key="lane")).run_id for n in (1, 2)
    ]
    delayed = await kf.trigger("process", {}, concurrency_key="lane", delay=600)
    others = [
        (await kf.trigger("crawl", {}, concurrency_key=f"c{n}", delay=600)).run_id
        for n in (1, 2, 3)
    ]
    app = CaptureTemplates(create_app(kf))
    async with client(app) as http:
        key_page = await http.get("/key", params={"name": "lane"})
        assert "Cancel the 3 waiting runs of this key?" in key_page.text  # confirm, with count
        picked = await post(
            http, "/bulk", {"action": "cancel", "scope": "selected", "run": others[:2]}
        )
        assert picked.status_code == 200, picked.text
        assert "cancelled 2 runs" in picked.text
        lane = await post(http, "/bulk", {"action": "cancel", "scope": "waiting", "key": "lane"})
        assert "cancelled 3 runs" in lane.text
        nothing = await post(http, "/bulk", {"action": "cancel", "scope": "selected"})
        assert nothing.status_code == 400
        assert "no runs selected" in nothing.text
        everything = await post(http, "/bulk", {"action": "cancel", "scope": "matching"})
        assert everything.status_code == 400  # no filter: never "every run"
        bogus = await post(http, "/bulk", {"action": "delete", "run": others})
        assert bogus.status_code == 400
    statuses = {r: (await kf.get_run(r)).status for r in [*waiting, delayed.run_id, *others]}  # type: ignore[union-attr]
    cancelled = keyflow.RunStatus.CANCELLED
    assert [statuses[r] for r in waiting] == [cancelled, cancelled]
    assert statuses[delayed.run_id] is cancelled
    assert [statuses[r] for r in others] == [cancelled, cancelled, keyflow.RunStatus.SCHEDULED]
    running = await kf.get_run(first.run_id)
    assert running is not None
    assert running.status is keyflow.RunStatus.RUNNING  # the lane's running run is left alone
    gate.release_all()


async def test_retry_all_failed_runs_of_a_job(gated: tuple[keyflow.Keyflow, Gate]) -> None:
    kf, gate = gated
    gate.open()
    for n in range(3):
        await kf.trigger("process", {"fail": f"boom {n}"}, concurrency_key=f"p{n}")
    await kf.trigger("process", {}, concurrency_key="ok")
    await kf.trigger("crawl", {"fail": "other job"}, concurrency_key="c")
    await kf.run_until_idle()
    async with client(create_app(kf)) as http:
        page = await http.get("/jobs/process")
        assert "Retry all 3 failed" in page.text
        assert "Retrigger all 3 failed runs of process?" in page.text
        form = {"action": "retrigger", "scope": "matching", "job": "process", "status": "failed"}
        retried = await post(http, "/bulk", form)
        assert retried.status_code == 200
        assert "retriggered 3 runs" in retried.text
    await kf.run_until_idle()
    assert await kf.count_runs(job="process", status="failed") == 6  # they failed again
    assert await kf.count_runs(job="crawl") == 1


async def test_lanes_filter_by_state_and_sort_naturally_by_wait_and_by_coalescing(
    gated: tuple[keyflow.Keyflow, Gate], clock: keyflow.testing.VirtualClock
) -> None:
    kf, gate = gated
    for key in ("repo10", "repo4", "repo2"):
        await kf.trigger("process", {}, concurrency_key=key)
        await gate.any_started.wait()  # running: a "queue" trigger now waits behind it
        gate.any_started.clear()
    await kf.trigger("process", {}, concurrency_key="repo2", coalesce="queue")
    clock.advance(5)
    await kf.trigger("process", {}, concurrency_key="repo10", coalesce="queue")
    for _ in range(3):
        await kf.trigger("process", {}, concurrency_key="repo10", coalesce="queue")

    async def keys(query: str) -> list[str]:
        page = await http.get("/lanes?" + query)
        assert page.status_code == 200
        return re.findall(r'<tr class="lane-[^"]*" data-key="([^"]+)"', page.text)

    async with client(create_app(kf)) as http:
        assert await keys("") == ["repo2", "repo4", "repo10"]  # natural order
        assert await keys("state=running%2Bqueued") == ["repo2", "repo10"]
        assert await keys("state=running") == ["repo4"]
        assert await keys("sort=wait") == ["repo2", "repo10", "repo4"]  # longest wait first
        assert await keys("sort=coalesced") == ["repo10", "repo2", "repo4"]
        assert await keys("sort=bogus&state=bogus") == ["repo2", "repo4", "repo10"]
    gate.open()
    await kf.run_until_idle()


async def test_runs_filter_by_labels_and_show_attempts(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    gate.open()
    await kf.trigger("process", {}, concurrency_key="a", labels={"org": "acme", "env": "prod"})
    await kf.trigger("process", {}, concurrency_key="b", labels={"org": "acme", "env": "dev"})
    await kf.trigger("process", {}, concurrency_key="c", labels={"org": "zeta"})
    await kf.run_until_idle()
    async with client(create_app(kf)) as http:
        acme = await http.get("/runs", params={"labels": "org=acme"})
        assert 'data-total="2"' in acme.text
        prod = await http.get("/runs", params={"labels": "org=acme, env=prod"})
        assert 'data-total="1"' in prod.text
        assert 'value="env=prod, org=acme"' in prod.text  # the control shows the filter
        assert 'data-attempt="1"' in prod.text
        assert ">1/1<" in prod.text


async def test_a_job_stats_page_counts_from_storage(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow(clock=None)  # the dashboard reads the wall clock (see the report)
    gate = Gate()
    gate.open()
    kf.job("process")(gate.handler)
    await kf.start()
    await kf.trigger("process", {}, concurrency_key="a")
    await kf.trigger("process", {"fail": "x"}, concurrency_key="b")
    await kf.run_until_idle()
    app = CaptureTemplates(create_app(kf))
    async with client(app) as http:
        page = await http.get("/jobs/process", params={"window": "5m"})
        assert page.status_code == 200
        assert 'data-window="24h"' in page.text
        assert 'data-runs="2"' in page.text
        assert 'data-failure-rate="0.5"' in page.text
        assert app.rendered[-1][1]["params"].window == "5m"
        assert (await http.get("/jobs/nope")).status_code == 404
        assert (await http.get("/jobs/process", params={"window": "1y"})).status_code == 200


async def test_a_finished_run_shows_no_stale_progress_and_integers_stay_integers(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    release = Gate()

    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ctx.progress(8, 9, "almost")
        await release.handler(ctx, input)

    kf.job("work")(work)
    result = await kf.trigger("work", {}, concurrency_key="w")
    await release.any_started.wait()
    async with client(create_app(kf)) as http:
        running = (await http.get(f"/runs/{result.run_id}")).text
        assert "<progress" in running
        assert "8 / 9" in running
        assert "8.0" not in running
        release.open()
        await kf.run_until_idle()
        done = (await http.get(f"/runs/{result.run_id}")).text
        assert 'data-status="completed"' in done
        assert "<progress" not in done
    gate.open()


async def test_free_text_counts_stop_at_a_cap_and_a_short_first_page_needs_no_count(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, _ = gated
    for n in range(1_030):
        await kf.trigger("crawl", {"word": "common", "n": n}, concurrency_key=f"c{n}", delay=600)
    await kf.trigger("crawl", {"word": "rare"}, concurrency_key="r", delay=600)
    counted: list[RunFilters] = []

    class Counting(KeyflowSource):
        async def count_runs(self, filters: RunFilters) -> int:
            counted.append(filters)
            return await super().count_runs(filters)

    async with client(create_app(Counting(kf))) as http:
        rare = await http.get("/runs", params={"q": "rare"})
        assert 'data-total="1"' in rare.text
        assert counted == []  # one short page: the whole answer
        common = await http.get("/runs", params={"q": "common"})
        assert 'data-label="1,000+"' in common.text
        assert counted == []  # the 1,001st match exists: no full count
        assert "next" in common.text
        far = await http.get("/runs", params={"q": "common", "page": "21"})
        assert "data-run=" in far.text  # runs 1,001 to 1,030
        assert "next" not in far.text
        exact = await http.get("/runs", params={"job": "crawl"})
        assert 'data-total="1031"' in exact.text  # an index-backed filter: counted exactly
        assert len(counted) == 1
