"""The app's state (``app.state.dashboard``) and how pages and widgets are rendered."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from ..errors import KeyflowError
from .charts import RateHistory
from .cookies import set_cookie
from .csrf import SESSION_COOKIE, CsrfSigner
from .jobstats import StatsCache
from .sampler import RateSampler
from .source import LANE_SORTS, LANE_STATES, DashboardSource
from .widgets import Params, context

STRATEGIES = ("", "none", "skip", "queue", "cancel")
RENDER_CACHE_SIZE = 256


@dataclass
class Dashboard:
    """What the app keeps on ``app.state.dashboard``."""

    source: DashboardSource
    templates: Jinja2Templates
    history: RateHistory
    read_only: bool
    csrf: CsrfSigner
    min_interval: float = 0.25
    """Seconds between two renders of one widget on one live stream."""
    renders: dict[tuple[str, Params, bool, str], tuple[float, str]] = field(default_factory=dict)
    """Recent widget renders, shared by the pages that show the same thing."""
    stats: StatsCache = field(default_factory=StatsCache)
    """Job statistics, computed at most every 10 s per job and window."""
    sampler: RateSampler = field(init=False)

    def __post_init__(self) -> None:
        self.sampler = RateSampler(self._sample)

    async def _sample(self) -> bool:
        if not self.source.alive:
            return False
        try:
            counts = await self.source.counts()
        except KeyflowError:
            # Storage closed or failing: stop; the next request starts sampling again.
            return False
        self.history.sample(self.source.now(), counts.finished_total, counts.coalesced_total)
        return True


def dashboard(conn: HTTPConnection) -> Dashboard:
    """The dashboard state of the app serving ``conn``."""
    state: Dashboard = conn.app.state.dashboard
    return state


def can_act(conn: HTTPConnection) -> bool:
    """May this request trigger, cancel or retrigger?"""
    return conn.state.access == "all" and not dashboard(conn).read_only


async def render_widget(
    request: Request, name: str, params: Params, *, shared: bool = False
) -> str:
    """The HTML of widget ``name`` for ``params``.

    With ``shared`` (live streams), a render younger than half the live interval is
    reused: five pages watching the same widget cost the scheduler about one.
    """
    dash = dashboard(request)
    if dash.source.alive:
        dash.sampler.ensure_running()
    acting = can_act(request)
    key = (name, params, acting, request.scope.get("root_path", ""))
    now = time.monotonic()
    cached = dash.renders.get(key)
    if shared and cached is not None and now - cached[0] < dash.min_interval / 2:
        return cached[1]
    data = await context(name, dash.source, params, dash.history, dash.stats)
    template = dash.templates.get_template(f"partials/{name}.html")
    html = template.render({**data, "request": request, "params": params, "can_act": acting})
    if len(dash.renders) > RENDER_CACHE_SIZE:
        dash.renders.clear()
    dash.renders[key] = (now, html)
    return html


async def page(
    request: Request,
    template: str,
    widgets: tuple[str, ...],
    params: Params | None = None,
    **extra: Any,
) -> Response:
    """A full page: its widgets rendered in, the live stream's URL, the CSRF token."""
    dash = dashboard(request)
    params = params or Params.parse(request.query_params)
    await dash.source.refresh()
    html = {name: await render_widget(request, name, params) for name in widgets}
    query = {**params.as_query(), "w": ",".join(widgets)}
    csrf = dash.csrf
    session = csrf.session(request)
    response = dash.templates.TemplateResponse(
        request,
        template,
        {
            "params": params,
            "html": html,
            "live_url": f"{request.url_for('live').path}?{urlencode(query)}",
            "partial_query": urlencode(params.as_query()),
            "csrf": csrf.token(session),
            "can_act": can_act(request),
            "jobs": dash.source.jobs(),
            "strategies": STRATEGIES,
            "lane_states": LANE_STATES,
            "lane_sorts": LANE_SORTS,
            **extra,
        },
    )
    if csrf.is_new(request):
        set_cookie(response, request, SESSION_COOKIE, session)
    return response


def flash(
    conn: HTTPConnection, ok: bool, message: str, *, status: int | None = None, **extra: Any
) -> Response:
    """The answer to an action: a message for the page's flash area.

    Errors keep their status code (400, 403, 404): the page's htmx configuration swaps
    them in too, so a failed action never fails silently.
    """
    template = dashboard(conn).templates.get_template("partials/flash.html")
    html = template.render({"request": conn, "ok": ok, "message": message, **extra})
    return HTMLResponse(html, status_code=status or (200 if ok else 400))
