"""The batch of changes one write of the commit pipeline takes (see :mod:`.commit`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .errors import StorageError
from .txn import Txn

if TYPE_CHECKING:
    from .records import RunRecord


class CommitBatch:
    """The changes one write takes: runs (the latest of each), transactions, pauses.

    Each waiter of the write has its own future (:meth:`waiter`): a cancelled waiter
    cancels its own, never the write its neighbours wait on, and no shield is needed.
    """

    __slots__ = ("pauses", "records", "txns", "waiters")

    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}
        self.txns: list[Txn] = []
        self.pauses: dict[tuple[str, str], bool] = {}
        """Pause changes, the latest per ``(kind, name)``."""
        self.waiters: list[asyncio.Future[None]] = []

    def waiter(self) -> asyncio.Future[None]:
        """A future of this batch's write for one waiter alone."""
        self.waiters.append(future := asyncio.get_running_loop().create_future())
        return future

    def tell(self, error: StorageError | None) -> None:
        """Wake the waiters: the batch is durable, or failed with ``error``."""
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            if future.done():  # its waiter was cancelled
                pass
            elif error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
