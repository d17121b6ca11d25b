"""Security headers on every response of the dashboard.

The Content-Security-Policy allows scripts, styles and live connections from the
dashboard itself only: no inline script or style, no ``eval`` (htmx runs with
``allowEval`` off), and no framing by any other page (``frame-ancestors 'none'``, so a
cross-site iframe cannot show, or click through, the live tables). Pages, partials and
the live stream are ``no-store``: run data never lands in a shared or disk cache.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
"""Everything from the dashboard's own origin, nothing inline."""

_ALWAYS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),  # frame-ancestors for browsers without CSP level 2
)


class SecurityHeadersMiddleware:
    """Adds the security headers; ``Cache-Control: no-store`` except on static files."""

    def __init__(self, app: ASGIApp, static_prefix: str = "/static/") -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (or pass other scopes through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path: str = scope["path"]
        static = path.removeprefix(root).startswith(self.static_prefix)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _ALWAYS:
                    headers[name] = value
                if not static:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)
