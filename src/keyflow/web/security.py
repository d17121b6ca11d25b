"""Who may do what: the ``authorize`` callable, and a token for ``keyflow dashboard``.

Access is ``"all"`` (see and act), ``"read_only"`` (see) or None (forbidden: 403).
:class:`AccessMiddleware` decides it once per request. With a :func:`token_authorizer`,
a ``?token=…`` link is answered by a redirect to the same URL without the token, which
moves into an HttpOnly cookie scoped to the dashboard's mount path: the token does not
stay in the address bar, the history or a ``Referer``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Literal, TypeAlias
from urllib.parse import urlencode

from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .cookies import set_cookie

Access: TypeAlias = Literal["all", "read_only"]
Authorize: TypeAlias = Callable[[HTTPConnection], Access | None]
Forbidden: TypeAlias = Callable[[HTTPConnection], Response]
"""Builds the 403 response (a page that says how to authenticate)."""

TOKEN_COOKIE = "keyflow_token"
TOKEN_PARAM = "token"


def same_secret(shown: str, expected: str) -> bool:
    """Constant-time comparison of two strings of any characters (never raises)."""
    return hmac.compare_digest(
        shown.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
    )


class TokenAuthorizer:
    """Full access for requests that show the token; nothing for the others.

    The token counts as the cookie a ``?token=…`` link sets, as the header
    ``Authorization: Bearer <token>``, or (once, before its redirect) as ``?token=…``.
    Any one valid form is enough: a wrong ``?token=`` does not undo a valid cookie.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the dashboard token must not be empty")
        self._token = token

    def accepts(self, shown: str | None) -> bool:
        """Is ``shown`` the token?"""
        return shown is not None and same_secret(shown, self._token)

    def __call__(self, conn: HTTPConnection) -> Access | None:
        """``"all"`` for a request carrying the token, else None."""
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        shown = (
            conn.cookies.get(TOKEN_COOKIE),
            credentials.strip() if scheme.lower() == "bearer" else None,
            conn.query_params.get(TOKEN_PARAM),
        )
        return "all" if any(self.accepts(s) for s in shown) else None


def token_authorizer(token: str) -> TokenAuthorizer:
    """Full access for requests that show ``token`` (see :class:`TokenAuthorizer`)."""
    return TokenAuthorizer(token)


class AccessMiddleware:
    """Decides each request's access (``request.state.access``); 403 when forbidden."""

    def __init__(
        self,
        app: ASGIApp,
        authorize: Authorize | None,
        read_only: bool,
        forbidden: Forbidden,
    ) -> None:
        self.app = app
        self.authorize = authorize
        self.read_only = read_only
        self.forbidden = forbidden

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
            await self.forbidden(conn)(scope, receive, send)
            return
        if isinstance(self.authorize, TokenAuthorizer) and TOKEN_PARAM in conn.query_params:
            await self._move_token_to_cookie(conn, self.authorize)(scope, receive, send)
            return
        if self.read_only:
            access = "read_only"
        scope.setdefault("state", {})["access"] = access
        await self.app(scope, receive, send)

    @staticmethod
    def _move_token_to_cookie(conn: HTTPConnection, authorize: TokenAuthorizer) -> Response:
        """Redirect to the same URL without ``?token=``; a valid one becomes a cookie."""
        rest = [(k, v) for k, v in conn.query_params.multi_items() if k != TOKEN_PARAM]
        location = conn.scope["path"]  # the full path, mount prefix included (ASGI)
        if rest:
            location += "?" + urlencode(rest)
        response = RedirectResponse(location, status_code=303)
        shown = conn.query_params.get(TOKEN_PARAM)
        if authorize.accepts(shown) and shown is not None:
            set_cookie(response, conn, TOKEN_COOKIE, shown)
        return response
