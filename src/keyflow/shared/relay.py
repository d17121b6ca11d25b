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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from ..errors import StorageError
from ..records import RunRecord
from ..runs import RunStatus

if TYPE_CHECKING:
    from ..hub import EventHub
    from .coordinator import SharedCoordinator
    from .database import Notice

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
        self._seen: OrderedDict[str, tuple[RunStatus, int, bool]] = OrderedDict()
        """Run id → status and trigger count told, and whether a read saw it first."""
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def heard(self, run_ids: Iterable[str]) -> None:
        """A notice named these runs: read and publish them soon (if anyone listens)."""
        if not self._hub.active:
            return
        self._pending.update(run_ids)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._relay())

    def tell_decided(self, notice: Notice) -> None:
        """Tell this process's subscribers of the runs its own decision just changed.

        At once, as a single process would: the notice's read could come after another
        process changed a run again (a worker started it), and a subscriber would never
        see it made, see runs enter a lane in another order than they did, or miss a join.
        """
        if self._hub.active:
            for record in notice.runs:
                self._publish(record, joined=record.id in notice.joined)

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
        self.heard([run_id for run_id, seen in self._seen.items() if not seen[0].is_terminal])

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

    def _publish(self, record: RunRecord, joined: bool = False) -> None:
        """Tell what changed in ``record`` since it was last told.

        A join is told once, by whichever comes first: the read of a notice (the trigger
        count grew), or this process's own decision (``joined``) for a run not told yet
        or whose count so far was only seen by a read (which cannot tell a join from one
        made before anyone listened). A read older than what was told (in flight across
        a join) is dropped.
        """
        if self._is_local(record.id):
            return  # this process's core tells its own changes
        seen = self._seen.get(record.id)
        count = record.trigger_count
        if seen is not None and count < seen[1]:
            return
        self._seen.pop(record.id, None)
        previous = None if seen is None else seen[0]
        hub = self._hub
        if seen is None:
            grew = joined
        else:
            grew = count > seen[1] or (joined and count == seen[1] and seen[2])
        if grew and record.coalesced:
            hub.trigger_coalesced(record, record.coalesced[-1])
        if record.status is not previous:
            hub.run_changed(record, previous, self._now())
        self._saw(record, unsure=(seen is None or seen[2]) and not grew)

    def _saw(self, record: RunRecord, unsure: bool = False) -> None:
        """Remember ``record``'s status and joins as published (a later read repeats them).

        ``unsure``: a read saw its trigger count first, and told no join of it.
        """
        self._seen[record.id] = (record.status, record.trigger_count, unsure)
        while len(self._seen) > SEEN_KEPT:
            self._seen.popitem(last=False)
