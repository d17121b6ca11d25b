"""Storage backends, chosen by URL scheme.

``memory://`` is built in. Durable backends (``sqlite:///…``, ``json:///…``) are added
in their own modules and imported only when their scheme is used.
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
    scheme, sep, _ = storage.partition("://")
    if not sep:
        raise ConfigurationError(f"storage URL {storage!r} has no scheme (e.g. 'memory://')")
    if scheme == "memory":
        return MemoryBackend(retention=retention)
    raise ConfigurationError(
        f"unknown storage scheme {scheme!r} in {storage!r}; available: 'memory://'"
    )
