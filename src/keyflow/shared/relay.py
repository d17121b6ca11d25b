"""Events of runs other processes changed, told to this process's subscribers.

On shared storage a run is created, promoted, started and ended by whichever process
decides or executes it. A process publishes to its ``events()`` subscriptions and
``changes()`` watches what its own core does; the :class:`EventRelay` adds what the
database's notices say happened elsewhere: it reads the changed runs (in one query per
burst of notices, only while someone listens) and publishes each status change it had
not seen, and each coalesced trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final

from ..errors import StorageError
from ..records import Coalescence, RunRecord
from ..runs import RunStatus

if TYPE_CHECKING:
    from ..hub import EventHub
    from .coordinator import SharedCoordinator

logger = logging.getLogger("keyflow.shared")

SEEN_KEPT: Final = 10_000
"""Runs whose last status the relay remembers (the oldest are forgotten)."""

READ_RUNS: Final = "SELECT data, lease_owner FROM keyflow_runs WHERE id = ANY($1::text[])"
"""The runs, and who leases them (a run this process leased is its own news)."""


class EventRelay:
    """Publishes the changes other processes made (see the module)."""

    def __init__(
        self,
        coordinator: SharedCoordinator,
        hub: EventHub,
        is_local: Callable[[str], bool],
        now: Callable[[], float],
    ) -> None:
        self._coordinator = coordinator
        self._hub = hub
        self._is_local = is_local
        self._now = now
        self._seen: OrderedDict[str, tuple[RunStatus, int]] = OrderedDict()
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def heard(self, run_ids: Iterable[str]) -> None:
        """A notice named these runs: read and publish them soon (if anyone listens)."""
        if not self._hub.active:
            return
        self._pending.update(run_ids)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._relay())

    def tell_decided(self, records: list[RunRecord]) -> None:
        """Tell this process's subscribers of the runs its own decision just changed.

        At once, as a single process would: the notice's read could come after another
        process changed a run again (a worker started it), and a subscriber would never
        see it made, or see runs enter a lane in another order than they did. (The joins
        are told by :meth:`tell_joins`, with the triggers that made them.)
        """
        if self._hub.active:
            for record in records:
                self._publish(record, joins=False)

    async def tell_joins(self, joins: Mapping[str, Coalescence]) -> None:
        """Tell this process's subscribers of its triggers that joined runs elsewhere.

        The relay then counts those joins as seen. A read that fails is logged: the
        triggers stand, only their events are lost.
        """
        try:
            rows = await self._coordinator.fetch(READ_RUNS, list(joins))
        except StorageError as exc:
            logger.warning("reading runs this process's triggers joined failed: %s", exc)
            return
        for data, _owner in rows:
            record = self._coordinator.decode(data)
            self._hub.trigger_coalesced(record, joins[record.id])
            self._saw(record)

    def adopted(self, record: RunRecord) -> None:
        """This process claimed ``record``: its core tells its changes from now on.

        A status it went through elsewhere since the relay last told it (promoted from
        queued to pending by another process's end) is told first, so a subscriber's
        events of the run follow one another.
        """
        seen = self._seen.pop(record.id, None)
        if seen is not None and seen[0] is not record.status and self._hub.active:
            self._hub.run_changed(record, seen[0], self._now())

    def catch_up(self) -> None:
        """Notices may have been missed: read again every run seen unfinished."""
        self.heard([run_id for run_id, (status, _) in self._seen.items() if not status.is_terminal])

    async def close(self) -> None:
        """Stop relaying."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _relay(self) -> None:
        while self._pending:
            ids = [run_id for run_id in self._pending if not self._is_local(run_id)]
            self._pending.clear()
            if not ids:
                continue
            try:
                rows = await self._coordinator.fetch(READ_RUNS, ids)
            except StorageError as exc:
                logger.warning("reading runs changed elsewhere failed: %s", exc)
                return
            mine = self._coordinator.owner
            for data, owner in rows:
                if owner != mine:  # (a run this process claimed meanwhile: its core tells)
                    self._publish(self._coordinator.decode(data))

    def _publish(self, record: RunRecord, joins: bool = True) -> None:
        if self._is_local(record.id):
            return  # this process's core tells its own changes
        seen = self._seen.pop(record.id, None)
        previous = None if seen is None else seen[0]
        hub = self._hub
        if joins and seen is not None and record.trigger_count > seen[1] and record.coalesced:
            hub.trigger_coalesced(record, record.coalesced[-1])
        if record.status is not previous:
            hub.run_changed(record, previous, self._now())
        self._saw(record)

    def _saw(self, record: RunRecord) -> None:
        """Remember ``record``'s status and joins as published (a later read repeats them)."""
        self._seen[record.id] = (record.status, record.trigger_count)
        while len(self._seen) > SEEN_KEPT:
            self._seen.popitem(last=False)
