"""The live dashboard: ``create_app(kf)`` returns a Starlette app (see :mod:`.app`)."""

from .app import create_app
from .security import Access, Authorize, token_authorizer
from .source import DashboardSource, KeyflowSource, StorageSource

__all__ = [
    "Access",
    "Authorize",
    "DashboardSource",
    "KeyflowSource",
    "StorageSource",
    "create_app",
    "token_authorizer",
]
