"""The live demo's web app: keyflow's dashboard, plus the story page beside it.

``/story`` shows the side-by-side of the pipelines (PRs that waited a cycle, staleness,
coalesced triggers, lanes running+queued) and reloads itself every two seconds; every
other path is the dashboard (:func:`keyflow.web.create_app`), whose navigation links
to the story.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates

from ..scheduler import Keyflow
from ..web import create_app
from .scoreboard import Scoreboard, sim_clock

TEMPLATES = Path(__file__).parent / "templates"


def create_demo_app(kf: Keyflow, board: Callable[[], Scoreboard]) -> Starlette:
    """The dashboard of ``kf`` with ``/story``, which renders ``board()``."""
    templates = Jinja2Templates(directory=TEMPLATES)
    templates.env.filters["sim_clock"] = sim_clock

    async def story(request: Request) -> Response:
        return templates.TemplateResponse(request, "story.html", {"board": board()})

    return Starlette(
        routes=[
            Route("/story", story, name="story"),
            Mount("/", create_app(kf, links=[("Story", "/story")])),
        ],
    )
