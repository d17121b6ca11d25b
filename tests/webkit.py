"""Helpers for the dashboard tests: a gated job, an ASGI client, a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import keyflow

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium, which the browser tests drive through Playwright."""

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium); CI installs it",
)
"""Marks a browser test: skipped where Chromium is missing, except on CI (a failure)."""


class Gate:
    """Handlers that run until the test releases them (all at once, or one run)."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.any_started = asyncio.Event()
        self.opened = False

    async def handler(self, ctx: keyflow.RunContext, input: dict[str, Any]) -> dict[str, Any]:
        self.started.append(ctx.run_id)
        self.any_started.set()
        if input.get("fail"):
            ctx.log.error("about to fail", detail=input["fail"])
            raise RuntimeError(input["fail"])
        if not self.opened:
            await self.events.setdefault(ctx.run_id, asyncio.Event()).wait()
        return input

    def release(self, run_id: str) -> None:
        self.events.setdefault(run_id, asyncio.Event()).set()

    def release_all(self) -> None:
        for run_id in self.started:
            self.release(run_id)

    def open(self) -> None:
        """Release every run, now and from now on."""
        self.opened = True
        self.release_all()


class CaptureTemplates:
    """ASGI wrapper recording each TemplateResponse's template name and context."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.rendered: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("extensions", {})["http.response.debug"] = {}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.debug":
                info = message["info"]
                self.rendered.append((info["template"].name, info["context"]))
                return
            await send(message)

        await self.app(scope, receive, capture)


def client(app: ASGIApp, base_url: str = "http://127.0.0.1") -> httpx.AsyncClient:
    """An httpx client calling ``app`` in process (on a loopback Host by default)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


async def csrf_of(http: httpx.AsyncClient, path: str = "/") -> str:
    """The CSRF token a page hands this client (fetching ``path`` for it)."""
    page = await http.get(path)
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', page.text)
    assert found, "a page carries its CSRF token for htmx"
    return found[1]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in this loop; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)  # uvicorn offers no started event; bounded by the test
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
