"""The one way a reader waits for what the scheduler delivers: an inbox.

:class:`~keyflow.events.Subscription` (typed events, a bounded buffer) and
:class:`~keyflow.watch.ChangeWatch` (which keys changed, merged until read) differ in
what they keep; how a reader waits for the next item, how closing ends the iteration
once what was kept has been read, and ``async with`` are the same, and live here.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Generic, Self, TypeVar

T = TypeVar("T")


class Inbox(ABC, Generic[T]):
    """An async iterator of what was delivered, until closed and read out."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    @abstractmethod
    def _next_item(self) -> T | None:
        """The next item kept, taken out; None when nothing is kept."""

    def _closing(self) -> None:  # optional: most inboxes have nothing to undo
        """Called once, when the inbox closes (to stop deliveries)."""

    def _wake(self) -> None:
        """Wake the reader waiting for an item, if any."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def closed(self) -> bool:
        """True once closed (items kept before may still be read)."""
        return self._closed

    def close(self) -> None:
        """Stop deliveries; iteration ends once what was kept has been read. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing()
        self._wake()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        while True:
            item = self._next_item()
            if item is not None:
                return item
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
