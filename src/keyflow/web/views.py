"""The dashboard's pages, widget partials, and the live stream."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sse_starlette import EventSourceResponse
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .dashboard import Dashboard, dashboard, flash, page, render_widget
from .live import widget_updates
from .source import RunFilters
from .widgets import PERIODIC, WIDGETS, Params, wants


async def overview(request: Request) -> Response:
    """Counts, rates, the coalesced feed, the pauses, the jobs."""
    widgets = ("counts", "rates", "feed", "paused")
    return await page(request, "overview.html", widgets, active="overview")


async def lanes(request: Request) -> Response:
    """Every key's lane, paginated, filtered by prefix and state, sorted."""
    return await page(request, "lanes.html", ("lanes",), active="lanes")


async def key_detail(request: Request) -> Response:
    """One key (``?name=``): its lane and the timeline of its runs; 404 if unknown."""
    key = request.query_params.get("name", "")
    if not key or not await dashboard(request).source.has_key(key):
        return not_found(request, "key", key)
    params = Params(key=key)
    return await page(request, "key.html", ("lane", "timeline"), params, key=key, active="lanes")


async def old_key_link(request: Request) -> Response:
    """``/keys/<key>`` (links of earlier versions): the same page at ``/key?name=``."""
    location = f"{request.url_for('key').path}?{urlencode({'name': request.path_params['key']})}"
    return RedirectResponse(location, status_code=301)


async def runs(request: Request) -> Response:
    """Runs, filtered and paginated, with bulk actions."""
    return await page(request, "runs.html", ("runs",), active="runs")


async def run_detail(request: Request) -> Response:
    """One run."""
    run_id = request.path_params["run_id"]
    if await dashboard(request).source.run(run_id) is None:
        return not_found(request, "run", run_id)
    params = Params(run_id=run_id)
    return await page(request, "run.html", ("run",), params, run_id=run_id, active="runs")


async def job_stats(request: Request) -> Response:
    """One job's throughput, failures, waits, run times and coalescing, per window."""
    job = request.path_params["job"]
    source = dashboard(request).source
    known = job in source.jobs() or bool(await source.run_timings(job, 0.0, 1))
    if not known:
        return not_found(request, "job", job)
    query: dict[str, Any] = {"job": job, "window": request.query_params.get("window", "1h")}
    params = Params.parse(query)
    failed = await source.count_runs(RunFilters(job=job, status="failed"))
    return await page(
        request, "job.html", ("stats", "pause"), params, job=job, failed=failed, active="overview"
    )


def not_found(conn: HTTPConnection, what: str, name: str) -> Response:
    """The 404 page of an unknown key, run or job."""
    dash = dashboard(conn)
    template = dash.templates.get_template("missing.html")
    html = template.render(
        {"request": conn, "what": what, "name": name, "can_act": False, "active": ""}
    )
    return HTMLResponse(html, status_code=404)


def forbidden(dash: Dashboard, conn: HTTPConnection) -> Response:
    """The 403 answer: a page saying how to authenticate (a flash for htmx requests)."""
    message = (
        "Not authorized. Open the link with ?token=\u2026 that `keyflow dashboard` printed, "
        "or send the header Authorization: Bearer <token>."
    )
    if conn.headers.get("hx-request"):
        return flash(conn, False, message, status=403)
    template = dash.templates.get_template("forbidden.html")
    return HTMLResponse(template.render({"request": conn}), status_code=403)


async def partial(request: Request) -> Response:
    """One widget's HTML (the polling fallback)."""
    name = request.path_params["widget"]
    if name not in WIDGETS:
        return Response("unknown widget", status_code=404, media_type="text/plain")
    params = Params.parse(request.query_params)
    return HTMLResponse(await render_widget(request, name, params))


async def live(request: Request) -> Response:
    """The page's SSE stream: one named event per widget, throttled."""
    dash = dashboard(request)
    names = [w for w in request.query_params.get("w", "").split(",") if w in WIDGETS]
    params = Params.parse(request.query_params)

    async def render(name: str) -> str:
        return await render_widget(request, name, params, shared=True)

    async def events() -> Any:
        updates = widget_updates(
            dash.source.changes(),
            names,
            render,
            lambda name, feed: wants(name, params, feed),
            min_interval=dash.min_interval,
            periodic=[n for n in names if n in PERIODIC],
        )
        async for name, html in updates:
            yield {"event": name, "data": html}

    return EventSourceResponse(events(), ping=10)
