"""The live dashboard: ``create_app(kf)`` returns a Starlette app (see :mod:`.app`)."""

from .app import create_app
from .security import Access, Authorize, TokenAuthorizer, token_authorizer
from .source import DashboardSource, KeyflowSource
from .storage_source import StorageSource

__all__ = [
    "Access",
    "Authorize",
    "DashboardSource",
    "KeyflowSource",
    "StorageSource",
    "TokenAuthorizer",
    "create_app",
    "token_authorizer",
]
