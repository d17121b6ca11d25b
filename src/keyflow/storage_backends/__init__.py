"""Storage backends, chosen by URL scheme.

``memory://`` is built in. Durable backends (``sqlite:///…``, ``json:///…``,
``postgresql://…``) are added in their own modules and imported only when their scheme
is used.
"""

from __future__ import annotations

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
    from urllib.parse import parse_qsl

    from ..errors import ConfigurationError

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
    options = dict(parse_qsl(query, keep_blank_values=True))
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
    if not name or "\x00" in name or len(name.encode()) > 63:
        raise ConfigurationError(f"application_name must be 1 to 63 bytes in {url!r}")
    _no_more(url, options)
    dsn = f"postgresql+asyncpg://{location}"
    if mode != "shared":
        if lease is not None or pool is not None:
            raise ConfigurationError(f"lease= and pool= apply to mode=shared only, in {url!r}")
        return PostgreSQLBackend(dsn, schema=schema, retention=retention, read_only=mode == "ro")
    from ..shared.backend import SharedPostgreSQLBackend

    return SharedPostgreSQLBackend(
        dsn,
        schema=schema,
        retention=retention,
        lease_seconds=_positive(url, "lease", lease, 30.0),
        pool_size=int(_positive(url, "pool", pool, 10, integer=True)),
        application_name=name,
    )


def _positive(
    url: str, name: str, text: str | None, default: float, *, integer: bool = False
) -> float:
    """A URL option that must be a positive number (an integer with ``integer``)."""
    from ..errors import ConfigurationError

    if text is None:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = -1
    if not (0 < value < 1e9):
        kind = "a positive integer" if integer else "a positive number of seconds"
        raise ConfigurationError(f"{name} must be {kind} in {url!r}, got {text!r}")
    return value


def _file_url(url: str, rest: str) -> tuple[str, dict[str, str]]:
    """``/rel/path`` (relative) or ``//abs/path`` (absolute), SQLAlchemy style; options."""
    from urllib.parse import parse_qsl

    from ..errors import ConfigurationError

    location, _, query = rest.partition("?")
    if "\x00" in location:
        raise ConfigurationError(f"storage URL {url!r} has a NUL character in its path")
    if not location.startswith("/") or len(location) < 2:
        raise ConfigurationError(
            f"storage URL {url!r} needs a path: 'sqlite:///relative.db' or 'sqlite:////abs.db'"
        )
    return location[1:], dict(parse_qsl(query))


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
