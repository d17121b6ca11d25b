"""The live demo's web app: keyflow's dashboard, plus the story page beside it.

``/story`` shows the side-by-side of the pipelines (PRs that waited a cycle, staleness,
coalesced triggers, lanes running+queued) and reloads itself every two seconds; every
other path is the dashboard (:func:`keyflow.web.create_app`), whose navigation links
to the story.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates

from ..scheduler import Keyflow
from ..web import create_app
from ..web.app import LOOPBACK_HOSTS
from ..web.headers import SecurityHeadersMiddleware
from .scoreboard import Scoreboard, sim_clock

TEMPLATES = Path(__file__).parent / "templates"


def create_demo_app(
    kf: Keyflow, board: Callable[[], Scoreboard], *, allowed_hosts: Sequence[str] | None = None
) -> Starlette:
    """The dashboard of ``kf`` with ``/story``, which renders ``board()``.

    The story page is served as safely as the dashboard beside it: the same Host check
    (``allowed_hosts``, loopback names by default) and security headers, links as paths.
    """
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters["sim_clock"] = sim_clock

    async def story(request: Request) -> Response:
        def path_for(name: str, **params: str) -> str:
            return str(request.app.url_path_for(name, **params))

        context = {"board": board(), "path_for": path_for}
        return templates.TemplateResponse(request, "story.html", context)

    hosts = list(allowed_hosts or LOOPBACK_HOSTS)
    return Starlette(
        routes=[
            Route("/story", story, name="story"),
            Mount("/", create_app(kf, links=[("Story", "/story")], allowed_hosts=hosts)),
        ],
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        ],
    )
