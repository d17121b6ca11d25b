"""The dashboard's cookies: HttpOnly, SameSite=Strict, scoped to its mount path.

``Secure`` is added when the request came over https, so a cookie set behind TLS is
never sent back in clear.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.responses import Response


def cookie_path(conn: HTTPConnection) -> str:
    """Where the dashboard is mounted (``/`` at the root): its cookies' ``Path``."""
    return str(conn.scope.get("root_path") or "/")


def set_cookie(response: Response, conn: HTTPConnection, name: str, value: str) -> None:
    """Set cookie ``name`` for this dashboard only (its path, its scheme)."""
    response.set_cookie(
        name,
        value,
        path=cookie_path(conn),
        httponly=True,
        samesite="strict",
        secure=conn.url.scheme in ("https", "wss"),
    )
