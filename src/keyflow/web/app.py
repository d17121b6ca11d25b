"""``create_app``: the dashboard as a Starlette app, mountable under any prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import SchedulerNotRunningError
from ..scheduler import Keyflow
from . import filters, views
from .charts import RateHistory
from .security import AccessMiddleware, Authorize
from .source import DashboardSource, KeyflowSource

HERE = Path(__file__).parent


@jinja2.pass_context
def _url_path(context: Any, name: str, /, **params: Any) -> str:
    """``url_for`` in templates: the path (with the mount prefix) of a named route."""
    request: Request = context["request"]
    return request.url_for(name, **params).path


async def _not_running(request: Request, exc: Exception) -> Response:
    # E.g. the app is mounted at import and the scheduler starts later (a lifespan).
    return PlainTextResponse(f"keyflow is not running: {exc}", status_code=503)


def create_app(
    kf: Keyflow | DashboardSource,
    *,
    read_only: bool = False,
    authorize: Authorize | None = None,
    min_interval: float = 0.25,
) -> Starlette:
    """The dashboard for ``kf`` (a scheduler in this process, or another source).

    Mount it anywhere (``Mount("/keyflow", create_app(kf))``): every URL it makes goes
    through ``url_for``, so a prefix just works. It needs no lifespan; its state lives
    on ``app.state.dashboard``.

    Args:
        kf: the scheduler (or a :class:`~keyflow.web.source.DashboardSource`).
        read_only: hide and refuse the actions (trigger, cancel, retrigger).
        authorize: ``authorize(request)`` returns ``"all"``, ``"read_only"`` or None
            (403); default: everyone gets ``"all"`` (or ``"read_only"``).
        min_interval: seconds between two live renders of one widget (~4 per second).
    """
    source = kf if isinstance(kf, DashboardSource) else KeyflowSource(kf, read_only=read_only)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
    )
    filters.install(environment)
    environment.globals["url_for"] = _url_path  # paths, not absolute URLs: proxy-proof
    templates = Jinja2Templates(env=environment)
    routes = [
        Route("/", views.overview, name="overview"),
        Route("/lanes", views.lanes, name="lanes"),
        Route("/keys/{key:path}", views.key_detail, name="key"),
        Route("/runs", views.runs, name="runs"),
        Route("/runs/{run_id}", views.run_detail, name="run"),
        Route("/runs/{run_id}/cancel", views.cancel, methods=["POST"], name="cancel"),
        Route("/runs/{run_id}/retrigger", views.retrigger, methods=["POST"], name="retrigger"),
        Route("/trigger", views.trigger, methods=["POST"], name="trigger"),
        Route("/partials/{widget}", views.partial, name="partial"),
        Route("/live", views.live, name="live"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(AccessMiddleware, authorize=authorize, read_only=read_only)],
        exception_handlers={SchedulerNotRunningError: _not_running},
    )
    app.state.dashboard = views.Dashboard(
        source=source,
        templates=templates,
        history=RateHistory("finished", "coalesced"),
        read_only=read_only or source.read_only,
        min_interval=min_interval,
    )
    return app
