"""The dashboard's endpoints: pages, widget partials, the live stream, actions."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.templating import Jinja2Templates

from ..errors import KeyflowError, RunNotFoundError
from .charts import RateHistory
from .live import widget_updates
from .security import CSRF_COOKIE, csrf_ok, csrf_token
from .source import DashboardSource
from .widgets import PERIODIC, WIDGETS, Params, context, wants

STRATEGIES = ("", "none", "skip", "queue", "cancel")


@dataclass
class Dashboard:
    """What the app keeps on ``app.state.dashboard``."""

    source: DashboardSource
    templates: Jinja2Templates
    history: RateHistory
    read_only: bool
    min_interval: float = 0.25
    """Seconds between two renders of one widget on one live stream."""
    renders: dict[tuple[str, Params, bool, str], tuple[float, str]] = field(default_factory=dict)
    """Recent widget renders, shared by the pages that show the same thing."""


def dashboard(request: Request) -> Dashboard:
    """The dashboard state of the app serving ``request``."""
    state: Dashboard = request.app.state.dashboard
    return state


def can_act(request: Request) -> bool:
    """May this request trigger, cancel or retrigger?"""
    return request.state.access == "all" and not dashboard(request).source.read_only


async def render_widget(
    request: Request, name: str, params: Params, *, shared: bool = False
) -> str:
    """The HTML of widget ``name`` for ``params``.

    With ``shared`` (live streams), a render younger than half the live interval is
    reused: five pages watching the same widget cost the scheduler about one.
    """
    dash = dashboard(request)
    acting = can_act(request)
    key = (name, params, acting, request.scope.get("root_path", ""))
    now = time.monotonic()
    cached = dash.renders.get(key)
    if shared and cached is not None and now - cached[0] < dash.min_interval / 2:
        return cached[1]
    data = await context(name, dash.source, params, dash.history)
    template = dash.templates.get_template(f"partials/{name}.html")
    html = template.render({**data, "request": request, "params": params, "can_act": acting})
    if len(dash.renders) > 256:
        dash.renders.clear()
    dash.renders[key] = (now, html)
    return html


async def _page(
    request: Request, template: str, widgets: tuple[str, ...], **extra: Any
) -> Response:
    dash = dashboard(request)
    params = Params.parse(request.query_params)
    html = {name: await render_widget(request, name, params) for name in widgets}
    query = {**params.as_query(), "w": ",".join(widgets)}
    token = csrf_token(request)
    response = dash.templates.TemplateResponse(
        request,
        template,
        {
            "params": params,
            "html": html,
            "live_url": f"{request.url_for('live').path}?{urlencode(query)}",
            "partial_query": urlencode(params.as_query()),
            "csrf": token,
            "can_act": can_act(request),
            "jobs": dash.source.jobs(),
            "strategies": STRATEGIES,
            **extra,
        },
    )
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
    return response


async def overview(request: Request) -> Response:
    """Counts, rates and the coalesced feed."""
    return await _page(request, "overview.html", ("counts", "rates", "feed"))


async def lanes(request: Request) -> Response:
    """Every key's lane, paginated, filtered by prefix."""
    return await _page(request, "lanes.html", ("lanes",))


async def key_detail(request: Request) -> Response:
    """One key: its lane and the timeline of its runs."""
    key = request.path_params["key"]
    request.scope["query_string"] = urlencode({"key": key}).encode()
    return await _page(request, "key.html", ("lane", "timeline"), key=key)


async def runs(request: Request) -> Response:
    """Runs, filtered and paginated."""
    return await _page(request, "runs.html", ("runs",))


async def run_detail(request: Request) -> Response:
    """One run."""
    run_id = request.path_params["run_id"]
    if await dashboard(request).source.run(run_id) is None:
        return PlainTextResponse(f"no run {run_id}", status_code=404)
    request.scope["query_string"] = urlencode({"run": run_id}).encode()
    return await _page(request, "run.html", ("run",), run_id=run_id)


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


async def _flash(request: Request, ok: bool, message: str, **extra: Any) -> Response:
    template = dashboard(request).templates.get_template("partials/flash.html")
    html = template.render({"request": request, "ok": ok, "message": message, **extra})
    return HTMLResponse(html, status_code=200 if ok else 400)


async def _guard(request: Request) -> Response | None:
    if not can_act(request):
        return Response("this dashboard is read-only", status_code=403, media_type="text/plain")
    if not await csrf_ok(request):
        return Response("missing or wrong CSRF token", status_code=403, media_type="text/plain")
    return None


async def trigger(request: Request) -> Response:
    """The trigger form: job, JSON input, key, strategy."""
    refused = await _guard(request)
    if refused is not None:
        return refused
    form = await request.form()
    job = str(form.get("job", ""))
    raw = str(form.get("input", "") or "{}")
    key = str(form.get("key", "")).strip() or None
    strategy = str(form.get("coalesce", ""))
    if strategy not in STRATEGIES:
        return await _flash(request, False, f"unknown strategy {strategy!r}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return await _flash(request, False, f"the input is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return await _flash(request, False, "the input must be a JSON object, like {}")
    try:
        result = await dashboard(request).source.trigger(job, data, key, strategy or None)
    except KeyflowError as exc:
        return await _flash(request, False, str(exc))
    return await _flash(request, True, f"{result.disposition.value}", result=result)


async def cancel(request: Request) -> Response:
    """Cancel a run."""
    refused = await _guard(request)
    if refused is not None:
        return refused
    try:
        run = await dashboard(request).source.cancel(request.path_params["run_id"])
    except (RunNotFoundError, KeyflowError) as exc:
        return await _flash(request, False, str(exc))
    return await _flash(request, True, f"run {run.id} is {run.status.value}", run=run)


async def retrigger(request: Request) -> Response:
    """Trigger a run's job again."""
    refused = await _guard(request)
    if refused is not None:
        return refused
    try:
        result = await dashboard(request).source.retrigger(request.path_params["run_id"])
    except (RunNotFoundError, KeyflowError) as exc:
        return await _flash(request, False, str(exc))
    return await _flash(request, True, f"{result.disposition.value}", result=result)
