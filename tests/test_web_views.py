"""The dashboard's pages, partials and actions, through an in-process HTTP client."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import keyflow
from keyflow.web import create_app, token_authorizer
from keyflow.web.charts import RateHistory
from keyflow.web.source import KeyflowSource
from keyflow.web.widgets import Params, context

from .conftest import MakeKeyflow
from .webkit import CaptureTemplates, Gate, client, csrf_of

XSS = "<script>alert('owned')</script>"


@pytest.fixture
def storage_url() -> str:
    return "memory://"  # the views are storage-agnostic; the contract suite covers storage


@pytest.fixture
async def gated(make_keyflow: MakeKeyflow) -> tuple[keyflow.Keyflow, Gate]:
    gate = Gate()
    kf = make_keyflow(workers=2)
    kf.job("process")(gate.handler)
    kf.job("crawl")(gate.handler)
    await kf.start()
    return kf, gate


async def test_every_page_renders_with_its_context(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    first = await kf.trigger("process", {"org": "acme"}, concurrency_key="process:acme")
    await gate.any_started.wait()
    queued = await kf.trigger(
        "process", {"org": "acme"}, concurrency_key="process:acme", coalesce="queue"
    )
    await kf.trigger("process", {"org": "acme2"}, concurrency_key="process:acme", coalesce="queue")
    app = CaptureTemplates(create_app(kf))
    async with client(app) as http:
        for path, template in [
            ("/", "overview.html"),
            ("/lanes", "lanes.html"),
            ("/key?name=process:acme", "key.html"),
            ("/runs", "runs.html"),
            (f"/runs/{first.run_id}", "run.html"),
        ]:
            response = await http.get(path)
            assert response.status_code == 200, path
            assert app.rendered[-1][0] == template
        page = app.rendered[-1][1]
        assert page["can_act"] is True
        assert page["live_url"].startswith("/live?")
        lanes = await http.get("/lanes")
        assert 'data-state="running+queued"' in lanes.text
        assert 'data-coalesced="1"' in lanes.text
        key_page = await http.get("/key", params={"name": "process:acme"})
        assert key_page.text.count('class="tick"') == 1  # the joined trigger, on its run
        assert "\u00d72" in key_page.text  # "times 2": two triggers in one run
        assert (await http.get("/runs/nope")).status_code == 404
        assert (await http.get("/partials/nope")).status_code == 404
    # the widgets' contexts: what the templates are given
    source, history = KeyflowSource(kf), RateHistory("finished", "coalesced")
    lanes_ctx = await context("lanes", source, Params(), history)
    assert [row.lane.key for row in lanes_ctx["rows"]] == ["process:acme"]
    assert lanes_ctx["rows"][0].lane.waiting == (queued.run_id,)
    assert [r.id for r in lanes_ctx["rows"][0].running] == [first.run_id]
    counts = (await context("counts", source, Params(), history))["counts"]
    assert counts.by_status["running"] == 1
    assert counts.by_status["queued"] == 1
    assert counts.lanes_by_state == {"idle": 0, "running": 0, "running+queued": 1}
    feed = (await context("feed", source, Params(), history))["feed"]
    assert [(t.input, run.id) for t, run in feed] == [({"org": "acme2"}, queued.run_id)]
    gate.release_all()


async def test_runs_filters_combine_and_page(gated: tuple[keyflow.Keyflow, Gate]) -> None:
    kf, _ = gated
    for n in range(60):
        await kf.trigger("crawl", {"repo": f"r{n}"}, concurrency_key=f"crawl:r{n % 3}", delay=60)
    await kf.trigger("process", {"repo": "needle"}, concurrency_key="p", delay=60)
    source, history = KeyflowSource(kf), RateHistory("finished", "coalesced")
    page1 = await context("runs", source, Params.parse({"job": "crawl"}), history)
    assert (page1["total"], page1["last_page"], len(page1["runs"])) == (60, 2, 50)
    page2 = await context("runs", source, Params.parse({"job": "crawl", "page": "2"}), history)
    assert len(page2["runs"]) == 10
    assert {r.id for r in page1["runs"]}.isdisjoint(r.id for r in page2["runs"])
    combined = Params.parse({"job": "crawl", "key": "crawl:r1", "status": "scheduled"})
    assert (await context("runs", source, combined, history))["total"] == 20
    text = await context("runs", source, Params.parse({"q": "NEEDLE"}), history)
    assert [r.input for r in text["runs"]] == [{"repo": "needle"}]
    async with client(create_app(kf)) as http:
        response = await http.get("/runs", params={"job": "crawl", "page": "2", "status": "bogus"})
        assert response.status_code == 200
        assert "10 matching" not in response.text  # status=bogus is ignored: all 60 crawls
        assert 'data-total="60"' in response.text
        assert 'href="?job=crawl"' in response.text  # back to page 1, filters kept


async def test_user_data_is_escaped_everywhere(gated: tuple[keyflow.Keyflow, Gate]) -> None:
    kf, _ = gated
    result = await kf.trigger(
        "process", {"note": XSS, "fail": XSS}, concurrency_key=XSS, labels={"x": XSS}
    )
    await kf.run_until_idle()
    async with client(create_app(kf)) as http:
        for path in ["/", "/lanes", "/runs", f"/runs/{result.run_id}", "/key"]:
            body = (await http.get(path, params={"name": XSS} if path == "/key" else {})).text
            assert XSS not in body, path
            assert "<script>alert" not in body, path
        run_page = (await http.get(f"/runs/{result.run_id}")).text
        assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in run_page  # the error
        assert "RuntimeError" in run_page


async def test_actions_need_the_csrf_token_and_bad_json_stores_nothing(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, gate = gated
    async with client(create_app(kf)) as http:
        token = await csrf_of(http)
        form = {"job": "process", "input": '{"org": "acme"}', "key": "process:acme"}
        assert (await http.post("/trigger", data=form)).status_code == 403
        wrong = await http.post("/trigger", data=form, headers={"X-CSRF-Token": "0" * 64})
        assert wrong.status_code == 403
        bad = await http.post(
            "/trigger", data={**form, "input": "{oops"}, headers={"X-CSRF-Token": token}
        )
        assert bad.status_code == 400
        assert "not valid JSON" in bad.text
        not_object = await http.post("/trigger", data={**form, "input": "[1]", "csrf_token": token})
        assert not_object.status_code == 400
        unknown = await http.post("/trigger", data={**form, "job": "nope", "csrf_token": token})
        assert unknown.status_code == 400
        assert "unknown job" in unknown.text
        assert await kf.count_runs() == 0
        ok = await http.post(
            "/trigger", data={**form, "coalesce": "queue"}, headers={"X-CSRF-Token": token}
        )
        assert ok.status_code == 200
        run_id = re.search(r"/runs/([\w-]+)", ok.text)
        assert run_id is not None
        await gate.any_started.wait()
        retriggered = await http.post(
            f"/runs/{run_id[1]}/retrigger", headers={"X-CSRF-Token": token}
        )
        assert retriggered.status_code == 200
        assert "queued" in retriggered.text
        cancelled = await http.post(f"/runs/{run_id[1]}/cancel", headers={"X-CSRF-Token": token})
        assert cancelled.status_code == 200
        assert "cancelled" in cancelled.text
    assert await kf.count_runs() == 2
    gate.release_all()


async def test_read_only_hides_and_refuses_actions(gated: tuple[keyflow.Keyflow, Gate]) -> None:
    kf, _ = gated
    result = await kf.trigger("process", {}, concurrency_key="k", delay=60)
    async with client(create_app(kf, read_only=True)) as http:
        page = await http.get("/")
        assert "Trigger" not in page.text
        assert "read-only" in page.text
        run_page = await http.get(f"/runs/{result.run_id}")
        assert "Cancel" not in run_page.text
        token = await csrf_of(http)
        refused = await http.post(f"/runs/{result.run_id}/cancel", headers={"X-CSRF-Token": token})
        assert refused.status_code == 403
    run = await kf.get_run(result.run_id)
    assert run is not None
    assert run.status is keyflow.RunStatus.SCHEDULED


async def test_authorize_and_token(gated: tuple[keyflow.Keyflow, Gate]) -> None:
    kf, _ = gated

    def authorize(conn: object) -> str | None:
        who = conn.headers.get("x-user")  # type: ignore[attr-defined]
        return {"admin": "all", "viewer": "read_only"}.get(who)

    async with client(create_app(kf, authorize=authorize)) as http:  # type: ignore[arg-type]
        assert (await http.get("/")).status_code == 403
        viewer = await http.get("/", headers={"x-user": "viewer"})
        assert viewer.status_code == 200
        assert "Trigger" not in viewer.text
        admin = await http.get("/", headers={"x-user": "admin"})
        assert "Trigger" in admin.text
    async with client(create_app(kf, authorize=token_authorizer("s3cret"))) as http:
        assert (await http.get("/lanes")).status_code == 403
        assert (await http.get("/lanes?token=wrong")).status_code == 403
        assert (await http.get("/lanes?token=s3cret")).status_code == 303  # into a cookie
        assert (await http.get("/lanes")).status_code == 200  # the cookie remembers it
        bearer = await client(create_app(kf, authorize=token_authorizer("s3cret"))).get(
            "/", headers={"Authorization": "Bearer s3cret"}
        )
        assert bearer.status_code == 200


async def test_mounted_under_a_prefix_every_link_keeps_it(
    gated: tuple[keyflow.Keyflow, Gate],
) -> None:
    kf, _ = gated
    await kf.trigger("process", {}, concurrency_key="k", delay=60)
    outer = Starlette(routes=[Mount("/ops/keyflow", create_app(kf))])
    async with client(outer) as http:
        page = await http.get("/ops/keyflow/lanes")
        assert page.status_code == 200
        links = re.findall(r'(?:href|src|hx-get|sse-connect|hx-post)="([^"?]+)', page.text)
        local = [link for link in links if link.startswith("/")]
        assert local
        assert all(link.startswith("/ops/keyflow/") for link in local), local
        assert (await http.get("/ops/keyflow/static/style.css")).status_code == 200


def test_vendored_files_match_their_manifest() -> None:
    vendor = Path(keyflow.__file__).parent / "web" / "static" / "vendor"
    manifest = json.loads((vendor / "manifest.json").read_text())
    names = {entry["package"]: entry["version"] for entry in manifest["files"]}
    assert names["htmx.org"].startswith("2.0.")
    assert names["htmx-ext-sse"].startswith("2.2.")
    for entry in manifest["files"]:
        data = (vendor / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]
        assert (vendor / entry["license"]).exists()
    templates = (Path(keyflow.__file__).parent / "web" / "templates").rglob("*.html")
    for template in templates:
        assert "://" not in re.sub(r"http://www\.w3\.org[^\"]*", "", template.read_text()), (
            f"{template.name} loads something from outside (a CDN?)"
        )


async def test_a_scheduler_not_running_yet_gets_a_503(tmp_path: Path) -> None:
    kf = keyflow.Keyflow(storage=f"sqlite:///{tmp_path / 'runs.db'}")
    kf.job("process")(Gate().handler)
    async with client(create_app(kf)) as http:  # mounted before the scheduler starts
        response = await http.get("/runs")
        assert response.status_code == 503
        assert "not running" in response.text
        await kf.start()
        assert (await http.get("/runs")).status_code == 200
        await kf.stop()
        assert (await http.get("/runs")).status_code == 503
