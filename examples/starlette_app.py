"""keyflow inside a Starlette app: a lifespan starts and drains the scheduler.

    uvicorn --factory examples.starlette_app:build

``POST /orgs/acme/process`` triggers ``process`` for an organisation (coalesce="queue":
never two at once, never a lost trigger); ``GET /runs/<id>?wait=5`` waits for a run and
returns it; the dashboard is mounted at ``/keyflow``: read-only for everyone, actions
for requests that carry the admin token (``Authorization: Bearer <token>``). The same
code works in FastAPI: pass the same ``lifespan`` to ``FastAPI(lifespan=...)`` and
``app.mount("/keyflow", dashboard)``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import keyflow
from keyflow.web import Access, create_app


def make_keyflow(storage: str) -> keyflow.Keyflow:
    """The scheduler and its jobs."""
    kf = keyflow.Keyflow(storage=storage, workers=8)

    @kf.job(retries=2)
    async def process(ctx: keyflow.RunContext, input: dict[str, Any]) -> dict[str, Any]:
        ctx.log.info("aggregating", org=input["org"])
        return {"org": input["org"], "ok": True}

    return kf


def build(storage: str | None = None, admin_token: str | None = None) -> Starlette:
    """The application (a factory: nothing starts before the lifespan does)."""
    storage = storage or os.environ.get("KEYFLOW_STORAGE", "sqlite:///keyflow-app.db")
    token = admin_token or os.environ.get("KEYFLOW_ADMIN_TOKEN", "")
    kf = make_keyflow(storage)

    async def trigger_process(request: Request) -> JSONResponse:
        org = request.path_params["org"]
        result = await kf.trigger(
            "process", {"org": org}, concurrency_key=f"process:{org}", coalesce="queue"
        )
        return JSONResponse({"run_id": result.run_id, "disposition": result.disposition.value})

    async def get_run(request: Request) -> JSONResponse:
        run_id = request.path_params["run_id"]
        try:
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            return JSONResponse({"error": "wait is a number of seconds"}, status_code=400)
        if not 0 <= wait <= 60:  # also refuses nan and inf
            return JSONResponse({"error": "wait is 0 to 60 seconds"}, status_code=400)
        try:
            run = await kf.wait(run_id, timeout=wait) if wait else await kf.get_run(run_id)
        except keyflow.WaitTimeoutError:
            run = await kf.get_run(run_id)
        except keyflow.RunNotFoundError:
            run = None
        if run is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse({"id": run.id, "status": run.status.value, "output": run.output})

    def authorize(conn: HTTPConnection) -> Access | None:
        shown = conn.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token and shown and hmac.compare_digest(shown, token):
            return "all"
        return "read_only"

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with kf:  # start storage and workers; on shutdown, drain and stop
            yield

    app = Starlette(
        routes=[
            Route("/orgs/{org}/process", trigger_process, methods=["POST"]),
            Route("/runs/{run_id}", get_run),
            Mount("/keyflow", create_app(kf, authorize=authorize)),
        ],
        lifespan=lifespan,
    )
    app.state.keyflow = kf
    return app
