"""Futures waiting for a run to end, or for any run to change.

``trigger_and_wait()`` and ``wait()`` wait for one run; ``run_until_idle()`` waits for
the next change of any run. The core wakes them; nothing here decides anything.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import RunRecord
    from .runs import Run


class Waiters:
    """The futures of callers waiting for runs, resolved by the core."""

    __slots__ = ("changes", "runs")

    def __init__(self) -> None:
        self.runs: dict[str, list[asyncio.Future[Run]]] = {}
        """Waiters for the end of a run, by run id."""
        self.changes: list[asyncio.Future[None]] = []
        """Waiters for the next change of any run (checked before each wake: it is
        usually empty)."""

    def run_waiter(self, run_id: str) -> asyncio.Future[Run]:
        """A future resolved with the run once it is terminal."""
        future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self.runs.setdefault(run_id, []).append(future)
        return future

    def covering_waiter(self, record: RunRecord | None) -> asyncio.Future[Run] | None:
        """A waiter for the end of ``record`` (None: a run known only to storage).

        Resolved at once if the run is already terminal.
        """
        if record is None:
            return None
        if record.status.is_terminal:
            future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
            future.set_result(record.snapshot())
            return future
        return self.run_waiter(record.id)

    def forget_waiter(self, run_id: str, future: asyncio.Future[Run]) -> None:
        """Drop a waiter that gave up."""
        waiters = self.runs.get(run_id)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self.runs[run_id]

    def change_waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next run change."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.changes.append(future)
        return future

    def run_ended(self, record: RunRecord) -> None:
        """``record`` is terminal: resolve its waiters with its snapshot."""
        waiters = self.runs.pop(record.id, None)
        if waiters:
            run = record.snapshot()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(run)

    def changed(self) -> None:
        """A run changed: resolve every change waiter."""
        waiters, self.changes = self.changes, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
