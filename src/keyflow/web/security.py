"""Who may do what: the ``authorize`` callable, a token for ``keyflow dashboard``, CSRF.

Access is ``"all"`` (see and act), ``"read_only"`` (see) or None (forbidden: 403).
Actions are POSTs that must carry the CSRF token: a random value kept in an HttpOnly
cookie and rendered into the page, sent back as the ``X-CSRF-Token`` header (htmx) or
a ``csrf_token`` form field; a cross-site page can neither read nor forge it.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Literal, TypeAlias

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Access: TypeAlias = Literal["all", "read_only"]
Authorize: TypeAlias = Callable[[HTTPConnection], Access | None]

CSRF_COOKIE = "keyflow_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
TOKEN_COOKIE = "keyflow_token"


def token_authorizer(token: str) -> Authorize:
    """Full access for requests that show ``token``; nothing for the others.

    The token may come as ``?token=…`` (then it is kept in a cookie), as that cookie, or
    as ``Authorization: Bearer …``.
    """

    def authorize(conn: HTTPConnection) -> Access | None:
        shown = (
            conn.query_params.get("token")
            or conn.cookies.get(TOKEN_COOKIE)
            or conn.headers.get("authorization", "").removeprefix("Bearer ").strip()
        )
        return "all" if shown and hmac.compare_digest(shown, token) else None

    return authorize


class AccessMiddleware:
    """Decides each request's access (``request.state.access``); 403 when forbidden."""

    def __init__(self, app: ASGIApp, authorize: Authorize | None, read_only: bool) -> None:
        self.app = app
        self.authorize = authorize
        self.read_only = read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (or pass other scopes through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        access: Access | None = "all"
        if self.authorize is not None:
            access = self.authorize(conn)
        if access is None:
            await PlainTextResponse("forbidden", status_code=403)(scope, receive, send)
            return
        if self.read_only:
            access = "read_only"
        scope.setdefault("state", {})["access"] = access
        token = conn.query_params.get("token")
        if token is None or self.authorize is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def csrf_token(request: Request) -> str:
    """This client's CSRF token (a new one if it has none; the page sets the cookie)."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and len(existing) == 64:
        return existing
    token: str | None = getattr(request.state, "csrf", None)
    if token is None:
        token = request.state.csrf = secrets.token_hex(32)
    return token


async def csrf_ok(request: Request) -> bool:
    """Does this POST carry the token of its cookie?"""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie:
        return False
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    return sent is not None and hmac.compare_digest(sent, cookie)
