"""TLS to a PostgreSQL server: libpq's ``sslmode`` names, as asyncpg takes them.

``?sslmode=`` in a storage URL chooses it for every connection keyflow opens to the
server (reads, the writer or the shared pool, the listener, the probe).
"""

from __future__ import annotations

from typing import Literal, get_args

from ..errors import ConfigurationError

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
"""TLS to the server, as libpq's ``sslmode`` names it (``verify-full`` checks the
server's certificate and its name; ``require`` only refuses a server without TLS)."""

SSL_MODES: tuple[str, ...] = get_args(SSLMode)
"""Every ``sslmode``, weakest first."""


def check_sslmode(sslmode: str | None) -> SSLMode | None:
    """``sslmode`` if it is one of :data:`SSL_MODES` (or None: asyncpg's default).

    Raises:
        ConfigurationError: it is not.
    """
    if sslmode is None:
        return None
    for mode in get_args(SSLMode):
        if sslmode == mode:
            return mode  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"sslmode must be one of {', '.join(SSL_MODES)}, got {str(sslmode)[:80]!r}"
    )


def ssl_args(sslmode: str | None) -> dict[str, str]:
    """Asyncpg's connect arguments for ``sslmode`` (none: its default)."""
    return {} if sslmode is None else {"ssl": sslmode}
