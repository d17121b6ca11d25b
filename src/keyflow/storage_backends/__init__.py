"""Storage backends, chosen by URL scheme.

``memory://`` is built in. Durable backends (``sqlite:///…``, ``json:///…``,
``postgresql://…``) are added in their own modules and imported only when their scheme
is used.
"""

from __future__ import annotations

import math

from .base import RunQuery, StorageBackend, StoredState, WriteBatch
from .memory import MemoryBackend

__all__ = [
    "MemoryBackend",
    "RunQuery",
    "StorageBackend",
    "StoredState",
    "WriteBatch",
    "open_backend",
]


def open_backend(storage: str | StorageBackend, *, retention: int) -> StorageBackend:
    """Return the backend for ``storage``: a URL, or a backend instance used as is.

    Raises:
        ConfigurationError: the URL's scheme is unknown or not available yet.
    """
    from ..errors import ConfigurationError

    if isinstance(storage, StorageBackend):
        return storage
    if not isinstance(storage, str):
        raise ConfigurationError(f"storage must be a URL or a StorageBackend, got {storage!r}")
    scheme, sep, rest = storage.partition("://")
    if not sep:
        raise ConfigurationError(f"storage URL {storage!r} has no scheme (e.g. 'memory://')")
    if scheme == "memory":
        if rest:
            raise ConfigurationError(f"memory:// takes no path or options, got {storage!r}")
        return MemoryBackend(retention=retention)
    if scheme in ("sqlite", "json"):
        path, options = _file_url(storage, rest)
        if scheme == "sqlite":
            from .sqlite import SQLiteBackend

            synchronous = options.pop("synchronous", "NORMAL").upper()
            if synchronous not in ("NORMAL", "FULL"):
                raise ConfigurationError(
                    f"synchronous must be NORMAL or FULL in {storage!r}, got {synchronous!r}"
                )
            read_only = _read_only(storage, options)
            _no_more(storage, options)
            return SQLiteBackend(
                path,
                retention=retention,
                synchronous="FULL" if synchronous == "FULL" else "NORMAL",
                read_only=read_only,
            )
        from .jsonfile import JSONFileBackend

        read_only = _read_only(storage, options)
        _no_more(storage, options)
        return JSONFileBackend(path, retention=retention, read_only=read_only)
    if scheme in ("postgresql", "postgresql+asyncpg"):
        return _postgres(storage, rest, retention)
    raise ConfigurationError(
        f"unknown storage scheme {scheme!r} in {storage!r}; available: 'memory://', "
        "'sqlite:///path.db', 'json:///path.json', 'postgresql://user@host:port/db'"
    )


def _postgres(url: str, rest: str, retention: int) -> StorageBackend:
    """``postgresql://user@host:port/db?schema=name&mode=ro`` (also ``postgresql+asyncpg``)."""
    from ..errors import ConfigurationError
    from .postgres_tls import check_sslmode

    try:
        from .postgres import PostgreSQLBackend
    except ImportError as exc:
        raise ConfigurationError(
            f"{url.partition('://')[0]}:// storage needs asyncpg ({exc}): "
            "pip install 'keyflow-scheduler[postgres]'"
        ) from None
    location, _, query = rest.partition("?")
    user, at, host = location.rpartition("@")
    if ":" in user:  # messages never show a password
        url = url.replace(location, f"{user.partition(':')[0]}:***{at}{host}", 1)
    if len(url) > 200:  # messages quote it: not a megabyte of it
        url = url[:200] + "…"
    _check_port(host, url)
    options = _options(url, query)
    schema = options.pop("schema", "public")
    mode = options.pop("mode", "shared")
    if mode not in ("shared", "single", "ro"):
        raise ConfigurationError(
            f"mode must be 'shared' (many processes, the default), 'single' (one writing "
            f"process) or 'ro' (read only) in {url!r}, got {mode!r}"
        )
    lease = options.pop("lease", None)
    pool = options.pop("pool", None)
    name = options.pop("application_name", "keyflow")
    sslmode = check_sslmode(options.pop("sslmode", None))
    if not (0 < len(name) <= 63 and name.isascii() and name.isprintable()):
        # PostgreSQL shows other characters as '?' (or cuts the name): no one finds it
        raise ConfigurationError(
            f"application_name must be 1 to 63 printable ASCII characters in {url!r}, "
            f"got {name[:80]!r}"
        )
    _no_more(url, options)
    dsn = f"postgresql+asyncpg://{location}"
    if mode != "shared":
        if lease is not None or pool is not None:
            raise ConfigurationError(f"lease= and pool= apply to mode=shared only, in {url!r}")
        return PostgreSQLBackend(
            dsn, schema=schema, retention=retention, read_only=mode == "ro", sslmode=sslmode
        )
    from ..shared.backend import SharedPostgreSQLBackend

    return SharedPostgreSQLBackend(
        dsn,
        schema=schema,
        retention=retention,
        lease_seconds=_number(url, "lease", lease, 30.0, _LEASE_RANGE),
        pool_size=int(_number(url, "pool", pool, 10, _POOL_RANGE, integer=True)),
        application_name=name,
        sslmode=sslmode,
    )


_LEASE_RANGE = (1.0, 86_400.0)
"""``lease=`` in seconds, at least and at most: renewals come every third of it, so a
shorter lease is lost to any stall; a longer one leaves a dead process's runs for days."""

_POOL_RANGE = (1, 1_000)
"""``pool=`` (connections per process), at least and at most: more is surely a typo
(PostgreSQL allows 100 connections in all by default)."""


def _number(
    url: str,
    name: str,
    text: str | None,
    default: float,
    bounds: tuple[float, float],
    *,
    integer: bool = False,
) -> float:
    """A URL option that must be a number within ``bounds`` (an integer with ``integer``)."""
    from ..errors import ConfigurationError

    if text is None:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = math.nan
    low, high = bounds
    if not (low <= value <= high):  # NaN too
        kind = "an integer" if integer else "a number of seconds"
        raise ConfigurationError(
            f"{name} must be {kind} from {low:g} to {high:g} in {url!r}, got {text[:80]!r}"
        )
    return value


def _file_url(url: str, rest: str) -> tuple[str, dict[str, str]]:
    """``/rel/path`` (relative) or ``//abs/path`` (absolute), SQLAlchemy style; options."""
    from ..errors import ConfigurationError

    location, _, query = rest.partition("?")
    if "\x00" in location:
        raise ConfigurationError(f"storage URL {url!r} has a NUL character in its path")
    if not location.startswith("/") or len(location) < 2:
        raise ConfigurationError(
            f"storage URL {url!r} needs a path: 'sqlite:///relative.db' or 'sqlite:////abs.db'"
        )
    return location[1:], _options(url, query)


def _options(url: str, query: str) -> dict[str, str]:
    """A URL's query options, each given once (a second value is refused, not picked)."""
    from urllib.parse import parse_qsl

    from ..errors import ConfigurationError

    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in options:
            raise ConfigurationError(f"option {name!r} is given twice in {url!r}: give it once")
        options[name] = value
    return options


def _read_only(url: str, options: dict[str, str]) -> bool:
    from ..errors import ConfigurationError

    mode = options.pop("mode", "rw")
    if mode not in ("rw", "ro"):
        raise ConfigurationError(f"mode must be 'rw' or 'ro' in {url!r}, got {mode!r}")
    return mode == "ro"


def _no_more(url: str, options: dict[str, str]) -> None:
    from ..errors import ConfigurationError

    if options:
        raise ConfigurationError(f"unknown option(s) {', '.join(sorted(options))} in {url!r}")


def _check_port(host: str, url: str) -> None:
    """Refuse a port that is not a number from 1 to 65535 (``host[:port][/db]``)."""
    from urllib.parse import urlsplit

    from ..errors import ConfigurationError

    try:
        port = urlsplit("//" + host.partition("/")[0]).port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ConfigurationError(f"the port must be a number from 1 to 65535 in {url!r}")
