"""``create_app``: the dashboard as a Starlette app, mountable under any prefix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from ..clock import Clock
from ..errors import SchedulerNotRunningError
from ..scheduler import Keyflow
from . import actions, filters, views
from .charts import RateHistory
from .csrf import CsrfSigner
from .dashboard import Dashboard
from .headers import SecurityHeadersMiddleware
from .security import AccessMiddleware, Authorize
from .source import DashboardSource, KeyflowSource

HERE = Path(__file__).parent

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""The Host names a dashboard answers by default: a page on another name that resolves
to 127.0.0.1 (DNS rebinding) gets a 400."""


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
    allowed_hosts: Sequence[str] | None = None,
    secret: bytes | None = None,
    clock: Clock | None = None,
    links: Sequence[tuple[str, str]] = (),
) -> Starlette:
    """The dashboard for ``kf`` (a scheduler in this process, or another source).

    Mount it anywhere (``Mount("/keyflow", create_app(kf))``): every URL it makes goes
    through ``url_for``, so a prefix just works. It needs no lifespan; its state lives
    on ``app.state.dashboard``.

    Args:
        kf: the scheduler (or a :class:`~keyflow.web.source.DashboardSource`).
        read_only: hide and refuse the actions (trigger, cancel, retrigger, bulk, pause,
            resume).
        authorize: ``authorize(request)`` returns ``"all"``, ``"read_only"`` or None
            (403); default: everyone gets ``"all"`` (or ``"read_only"``).
        min_interval: seconds between two live renders of one widget (~4 per second).
        allowed_hosts: the ``Host`` names it answers (``"*.example.com"`` patterns, or
            ``"*"`` for any); default: loopback names only (localhost, 127.0.0.1, [::1]).
        secret: the key that signs CSRF tokens (random per app by default; give every
            process behind one address the same).
        clock: the time pages show ages, timelines and rates against; default: the
            scheduler's clock (``Keyflow(clock=...)``), so a virtual or simulated clock
            reads right.
        links: extra entries for the navigation bar of every page, ``(label, href)``
            pairs shown after Runs, e.g. ``[("Story", "/story")]`` for a page the
            application serves beside the dashboard. The href is used as given (it is
            not under the dashboard's mount prefix); both are escaped.
    """
    source = (
        kf
        if isinstance(kf, DashboardSource)
        else KeyflowSource(kf, read_only=read_only, clock=clock)
    )
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
    )
    filters.install(environment)
    environment.globals["url_for"] = _url_path  # paths, not absolute URLs: proxy-proof
    # In the environment, not a page's context: the 403 and 404 pages show them too.
    environment.globals["nav_links"] = tuple((label, href) for label, href in links)
    templates = Jinja2Templates(env=environment)
    routes = [
        Route("/", views.overview, name="overview"),
        Route("/lanes", views.lanes, name="lanes"),
        Route("/key", views.key_detail, name="key"),
        Route("/keys/{key:path}", views.old_key_link, name="old_key"),
        Route("/runs", views.runs, name="runs"),
        Route("/runs/{run_id}", views.run_detail, name="run"),
        Route("/jobs/{job:path}", views.job_stats, name="job"),  # names may hold "/"
        Route("/runs/{run_id}/cancel", actions.cancel, methods=["POST"], name="cancel"),
        Route("/runs/{run_id}/retrigger", actions.retrigger, methods=["POST"], name="retrigger"),
        Route("/trigger", actions.trigger, methods=["POST"], name="trigger"),
        Route("/bulk", actions.bulk, methods=["POST"], name="bulk"),
        Route("/pause", actions.pause, methods=["POST"], name="pause"),
        Route("/resume", actions.resume, methods=["POST"], name="resume"),
        Route("/partials/{widget}", views.partial, name="partial"),
        Route("/live", views.live, name="live"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    dashboard = Dashboard(
        source=source,
        templates=templates,
        history=RateHistory("finished", "coalesced"),
        read_only=read_only or source.read_only,
        csrf=CsrfSigner(secret),
        min_interval=min_interval,
    )

    def forbidden(conn: HTTPConnection) -> Response:
        return views.forbidden(dashboard, conn)

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOOPBACK_HOSTS)),
            Middleware(
                AccessMiddleware, authorize=authorize, read_only=read_only, forbidden=forbidden
            ),
        ],
        exception_handlers={SchedulerNotRunningError: _not_running},
    )
    # Starlette's own trailing-slash redirect builds an absolute URL from the Host
    # header; ours answers with a path, whatever the Host.
    app.router.redirect_slashes = False
    app.router.default = _slash_redirect_or_404(app)
    app.state.dashboard = dashboard
    return app


def _slash_redirect_or_404(app: Starlette) -> Any:
    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["type"] == "http" and path.endswith("/") and path.rstrip("/"):
            stripped = {**scope, "path": path.rstrip("/")}
            if any(route.matches(stripped)[0] is not Match.NONE for route in app.router.routes):
                location = quote(stripped["path"])
                if scope.get("query_string"):
                    location += "?" + scope["query_string"].decode("latin-1")
                await RedirectResponse(location, status_code=307)(scope, receive, send)
                return
        await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)

    return default
