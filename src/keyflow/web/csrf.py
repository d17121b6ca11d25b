"""Cross-site request forgery: signed tokens, and same-origin POSTs only.

Each browser gets a random session id (an HttpOnly cookie). Its CSRF token is an HMAC
of that id under a secret only this app knows, rendered into the page and sent back as
the ``X-CSRF-Token`` header (htmx) or a ``csrf_token`` form field. An attacker can set
cookies for our host from another port (cookies ignore ports) but cannot compute the
token of any session without the secret, nor read the one in our pages. A POST must
also come from our own origin: its ``Origin`` matches the ``Host`` it was sent to and
``Sec-Fetch-Site``, when the browser sends it, says ``same-origin``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection, Request

from .security import same_secret

SESSION_COOKIE = "keyflow_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_SESSION = re.compile(r"[0-9a-f]{32}")


class CsrfSigner:
    """Issues and checks the CSRF tokens of one app (one secret).

    Args:
        secret: the signing key; random per app by default. Give the same one to every
            process that serves the dashboard behind one address.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret else secrets.token_bytes(32)

    def session(self, conn: HTTPConnection) -> str:
        """This browser's session id (a new one if it has none, kept for the request)."""
        existing = conn.cookies.get(SESSION_COOKIE, "")
        if _SESSION.fullmatch(existing):
            return existing
        state = conn.scope.setdefault("state", {})
        fresh: str = state.setdefault("csrf_session", secrets.token_hex(16))
        return fresh

    def is_new(self, conn: HTTPConnection) -> bool:
        """Must the response set the session cookie?"""
        return conn.cookies.get(SESSION_COOKIE) != self.session(conn)

    def token(self, session: str) -> str:
        """The CSRF token of ``session``."""
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest()

    async def refusal(self, request: Request) -> str | None:
        """Why this POST must be refused, or None when it is a genuine one of ours."""
        foreign = cross_origin(request)
        if foreign is not None:
            return foreign
        session = request.cookies.get(SESSION_COOKIE, "")
        if not _SESSION.fullmatch(session):
            return "no dashboard session: reload the page and try again"
        sent = request.headers.get(CSRF_HEADER)
        if sent is None:
            form = await request.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if sent is None or not same_secret(sent, self.token(session)):
            return "missing or wrong CSRF token: reload the page and try again"
        return None


def cross_origin(conn: HTTPConnection) -> str | None:
    """Why this request is not from our own origin, or None when it is (or cannot tell).

    Browsers send ``Origin`` with every POST; ``Sec-Fetch-Site`` in recent ones. A client
    that sends neither (curl, a script) is no browser an attacker could drive.
    """
    site = conn.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return f"a {site} request: actions come from the dashboard's own pages only"
    origin = conn.headers.get("origin")
    if origin is not None:
        host = conn.headers.get("host", "").lower()
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:  # not even a URL
            netloc = ""
        if origin == "null" or netloc != host:
            return "a request from another origin: actions come from the dashboard's pages only"
    return None
