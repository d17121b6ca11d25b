"""A scheduler's background work in shared mode: claims, heartbeats, reclaims, due times.

One :class:`SharedService` per :class:`~keyflow.Keyflow` whose storage is shared:

* triggers go to the database (:meth:`commit`, which :meth:`keyflow.core.Core.commit`
  hands them to): decided there under their keys' locks;
* the claimer leases pending runs while this process has idle workers and hands them
  to the core (:meth:`~keyflow.live.LiveState.adopt`), woken by notices (a run became
  pending anywhere), by its own runs ending, and by a slow poll (the safety net for a
  notice lost with a connection);
* the heartbeat renews this process's leases; a lease lost cancels its handler;
* the keeper reclaims expired leases (of any process) and makes delayed runs due.

A database that cannot be reached is retried with a growing pause (up to
:data:`MAX_BACKOFF` seconds); runs already leased go on, and their writes wait in the
commit pipeline, which retries too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, Final

from ..clock import TimerHandle
from ..errors import StorageError
from ..runs import Disposition
from ..state import PENDING, SCHEDULED
from ..txn import Txn
from .database import Notice, nobody
from .relay import EventRelay
from .watching import Watching

if TYPE_CHECKING:
    from ..core import Core
    from ..triggers import PreparedTrigger
    from .coordinator import SharedCoordinator

logger = logging.getLogger("keyflow.shared")

POLL_SECONDS: Final = 1.0
"""The safety-net poll: claims, due times and waits look at least this often."""

PRUNE_SECONDS: Final = 10.0
"""How often finished runs beyond ``retention`` are deleted."""

FENCE_AT: Final = 0.8
"""A process that could not renew its leases for this share of their length gives its
runs up (stops their handlers) before another process may take them."""

STOP_SECONDS: Final = 5.0
"""How long a stop waits for the background tasks to end."""

MAX_BACKOFF: Final = 5.0
"""The longest pause between two tries while the database cannot be reached."""


class SharedService:
    """The shared-mode background work of one scheduler (see the module)."""

    def __init__(
        self,
        coordinator: SharedCoordinator,
        core: Core,
        jobs: Collection[str],
        workers: int,
        prune: Callable[[float], Awaitable[None]] | None = None,
        executing: Callable[[], int] | None = None,
    ) -> None:
        self.coordinator = coordinator
        self._prune = prune
        self._core = core
        self._jobs = jobs
        self._workers = workers
        self._executing = executing
        """Workers executing a run now (a handler that ignored its cancellation holds
        none: its worker was replaced)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._work = asyncio.Event()
        self._wanted = True
        """A claim may find runs: work was announced, or the last claim took all it
        could (a claim after every local end would mostly find nothing)."""
        self._due = asyncio.Event()
        self._changed = asyncio.Event()
        self._claiming = False
        self._due_timer: TimerHandle | None = None
        self._relay = EventRelay(coordinator, core.hub, self._is_local, core.now)
        self._watching = Watching(coordinator, core.hub)
        core.hub.on_active = self._watching.hub_changed
        coordinator.watching = self._watching.wanted
        self._pause_refresh: asyncio.Task[None] | None = None
        coordinator.on_notice.append(self._heard)
        coordinator.on_decided.append(self._relay.tell_decided)
        coordinator.on_lost.append(self._lost)

    def _is_local(self, run_id: str) -> bool:
        # Leased here (an ended run stays leased until its end is written), or ended here.
        coordinator = self.coordinator
        return (
            run_id in self._core.records
            or run_id in coordinator.leases
            or run_id in coordinator.released
        )

    def limit_of(self, key: str) -> int:
        """A key's lane limit, as this process configures it."""
        return self._core.limit_of(key, strict=False)

    # -- triggers ------------------------------------------------------------------

    async def commit(self, prepared: list[PreparedTrigger], wait: bool) -> Txn:
        """Decide ``prepared`` in the database; a transaction holding the results.

        Raises:
            StorageError: the database failed; nothing was stored.
            InvalidInputError: a merge function failed; nothing was stored.
        """
        core = self._core
        # A lane_limit function that fails refuses the trigger (ConfigurationError), as in
        # a single process; only the later writes (ends, reclaims) fall back to one.
        results, overruled = await self.coordinator.trigger(
            prepared, core.limit_of, core.ids.next, core.now
        )
        if overruled:  # the notice tells the others; this process's own, at once
            self._heard(Notice(cancel=list(overruled)))
        txn = Txn(wait=wait)
        txn.results.extend(results)
        if wait:
            txn.waiters = [None] * len(results)  # waits read the database
        counters = core.counters
        for trig, result in zip(prepared, results, strict=True):
            disposition = result.disposition
            if disposition is Disposition.CREATED:
                counters.created += 1
            elif disposition is Disposition.QUEUED:
                counters.queued += 1
            elif disposition is Disposition.COALESCED:
                counters.coalesced += 1
                record = core.records.get(result.run_id)
                if record is not None:  # it joined a run executing here: tell it here
                    record.trigger_count += 1  # the worker's writes keep the larger count
                    if core.hub.active:
                        entry = (core.now(), trig.input, trig.parent_run_id)
                        core.hub.trigger_coalesced(record, entry)
                # (a join of a run not here is told with the decision: EventRelay)
            else:
                counters.idempotent += 1
        self._wanted = True
        self._work.set()  # our own notice comes too; a claim now is sooner
        return txn

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming (if this process has workers), renewing and keeping."""
        loop = asyncio.get_running_loop()
        self._claiming = self._workers > 0
        if self._claiming:
            self._tasks.append(loop.create_task(self._claimer(), name="keyflow-claimer"))
        self._tasks.append(loop.create_task(self._heartbeat(), name="keyflow-heartbeat"))
        self._tasks.append(loop.create_task(self._keeper(), name="keyflow-keeper"))

    def stop_claiming(self) -> None:
        """Lease nothing more (a stop began)."""
        self._claiming = False
        self._work.set()

    def detach(self) -> None:
        """Hear no more notices nor lost leases (another service took the coordinator)."""
        with contextlib.suppress(ValueError):
            self.coordinator.on_notice.remove(self._heard)
        with contextlib.suppress(ValueError):
            self.coordinator.on_lost.remove(self._lost)
        with contextlib.suppress(ValueError):
            self.coordinator.on_decided.remove(self._relay.tell_decided)
        hub = self._core.hub
        if hub.on_active == self._watching.hub_changed:
            hub.on_active = None
        if self.coordinator.watching == self._watching.wanted:
            self.coordinator.watching = nobody

    async def stop(self) -> None:
        """End the background tasks (the leases still held expire, or were handed back).

        At most :data:`STOP_SECONDS`: a task stuck on an unreachable database (its
        cancellation waits for the driver) is left behind rather than waited for.
        """
        self._claiming = False
        tasks, self._tasks = self._tasks, []
        refresh, self._pause_refresh = self._pause_refresh, None
        if refresh is not None:
            tasks.append(refresh)
        for task in tasks:
            task.cancel()
        self.detach()
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(self._relay.close()))
        tasks.append(loop.create_task(self._watching.close()))
        _, left = await asyncio.wait(tasks, timeout=STOP_SECONDS)
        for task in left:
            task.add_done_callback(_quietly)
        if left:
            logger.warning(
                "stopping: %d background task(s) still wait for the database; left behind",
                len(left),
            )

    # -- notices ---------------------------------------------------------------------

    def _heard(self, notice: Notice) -> None:
        if notice.work:
            self._wanted = True
            self._work.set()
        if notice.due is not None:
            self._due.set()
        if notice.cancel:
            core = self._core
            for run_id in notice.cancel:
                record = core.records.get(run_id)
                if record is not None and not record.status.is_terminal:
                    core.cancel(record)
        if notice.changed:
            self._relay.heard(notice.changed)
        if notice.missed:
            self._relay.catch_up()
        if notice.pauses and (self._pause_refresh is None or self._pause_refresh.done()):
            self._pause_refresh = asyncio.get_running_loop().create_task(self._refresh_pauses())
        self._changed.set()
        waiters = self._core.waiters
        if waiters.changes:
            waiters.changed()

    def _lost(self, run_ids: list[str]) -> None:
        """Leases lost (or given up): stop this process's work on those runs."""
        core = self._core
        for run_id in run_ids:
            record = core.records.get(run_id)
            if record is not None and not record.status.is_terminal:
                core.cancel(record)  # its writes are dropped: only the handler stops

    async def _refresh_pauses(self) -> None:
        """Take the pauses other processes made (or lifted) from the database."""
        from .reads import paused

        try:
            jobs, keys = await paused(self.coordinator)
        except StorageError as exc:
            logger.warning("reading pauses failed: %s", exc)
            return
        core = self._core
        for kind, now_paused, here in (
            ("job", jobs, core.paused_jobs),
            ("key", keys, core.paused_keys),
        ):
            for name in now_paused - here:
                core.set_paused(kind, name, True, written=False)
            for name in here - now_paused:
                core.set_paused(kind, name, False, written=False)

    async def wait_change(self, timeout: float) -> None:
        """Return at the next notice heard, or after ``timeout`` seconds.

        Meanwhile this process watches runs change (the others name them in notices).
        """
        async with self._watching.waiting():
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    # -- claims ------------------------------------------------------------------------

    def _free(self) -> int:
        core = self._core
        if self._executing is not None:
            busy = self._executing() + core.status_counts[PENDING.ordinal]
        else:
            busy = len(core.records) - core.status_counts[SCHEDULED.ordinal]
        return self._workers - busy

    async def _claimer(self) -> None:
        core = self._core
        backoff = 0.0
        while True:
            self._work.clear()
            free = self._free() if self._claiming else 0
            if free > 0 and self._wanted:
                self._wanted = False  # a notice during the claim wants another
                try:
                    suspects = 0 if any(r.crashes for r in core.records.values()) else 1
                    records = await self.coordinator.claim(
                        self._jobs, free, core.now, self.limit_of, suspects=suspects
                    )
                except StorageError as exc:
                    self._wanted = True
                    backoff = await _back_off(backoff, "claiming runs", exc)
                    continue
                backoff = 0.0
                for record in records:
                    if self._claiming:
                        self._relay.adopted(record)
                        core.adopt(record)
                if len(records) == free:
                    self._wanted = True  # there may be more: look again at once
                    continue
                if suspects == 0:
                    self._wanted = True  # a crash suspect may be left: look as one ends
            if not await self._until_work():
                self._wanted = True  # the safety-net poll

    async def _until_work(self) -> bool:
        """Wait for announced work, or (if a claim is wanted) a worker freeing up.

        Returns False after :data:`POLL_SECONDS` of neither.
        """
        core = self._core
        work: asyncio.Future[bool] = asyncio.ensure_future(self._work.wait())
        waits: set[asyncio.Future[Any]] = {work}
        change = core.waiters.change_waiter() if self._wanted else None
        if change is not None:
            waits.add(change)
        try:
            done, _ = await asyncio.wait(
                waits, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            work.cancel()
            if change is not None and not change.done():
                change.cancel()
                with contextlib.suppress(ValueError):
                    core.waiters.changes.remove(change)
        return bool(done)

    # -- heartbeat and keeper ------------------------------------------------------------

    async def _heartbeat(self) -> None:
        coordinator = self.coordinator
        interval = coordinator.lease_seconds / 3
        loop = asyncio.get_running_loop()
        coordinator.renewed_at = loop.time()
        while True:
            await asyncio.sleep(interval)
            try:
                cancels = await coordinator.renew()
                await self._watching.renew()
            except StorageError as exc:
                overdue = loop.time() - coordinator.renewed_at
                if coordinator.leases and overdue > coordinator.lease_seconds * FENCE_AT:
                    # Others may take these runs any moment now: stop them here first.
                    logger.error(
                        "leases not renewed for %.1fs (%s): this process gives up its %d "
                        "runs to the others",
                        overdue,
                        exc,
                        len(coordinator.leases),
                    )
                    coordinator.abandon()
                else:
                    logger.warning("renewing leases failed (%s); again in %.1fs", exc, interval)
                continue
            core = self._core
            for run_id in cancels:  # a cancel whose notice this process missed
                record = core.records.get(run_id)
                if record is not None and not record.cancel_requested:
                    core.cancel(record)

    async def _keeper(self) -> None:
        coordinator = self.coordinator
        core = self._core
        reclaim_every = max(coordinator.lease_seconds / 2, 0.05)
        backoff = 0.0
        next_reclaim = 0.0
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            self._due.clear()
            try:
                await self._watching.ensure()  # (nothing, unless a watch began unannounced)
                if loop.time() >= next_reclaim:
                    await coordinator.relisten()
                    await coordinator.reclaim(self.limit_of, core.now())
                    await coordinator.find_orphans(core.now())
                    await self._watching.refresh()
                    next_reclaim = loop.time() + reclaim_every
                if self._prune is not None and loop.time() >= next_prune:
                    await self._prune(core.now())  # retention: one process at a time
                    next_prune = loop.time() + PRUNE_SECONDS
                await coordinator.sweep_due(self.limit_of, core.now())
                due = await coordinator.next_due()
            except StorageError as exc:
                backoff = await _back_off(backoff, "keeping shared runs", exc)
                continue
            backoff = 0.0
            wait = min(POLL_SECONDS, reclaim_every, max(next_reclaim - loop.time(), 0.0))
            if due is not None:
                self._arm(due)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), wait)

    def _arm(self, due: float) -> None:
        """Wake the keeper at ``due`` by the scheduler's clock (a virtual one too)."""
        old = self._due_timer
        if old is not None:
            old.cancel()
        self._due_timer = self._core.clock.call_at(due, self._due.set)

    def arm_next_due(self, due: float) -> None:
        """Make the next due time a timer of the clock (``run_until_idle`` jumps to it)."""
        self._arm(due)


def _quietly(task: asyncio.Task[Any]) -> None:
    """Take a left-behind task's outcome (nobody awaits it any more)."""
    if not task.cancelled():
        task.exception()


async def _back_off(previous: float, what: str, exc: StorageError) -> float:
    """Log that ``what`` failed and pause, longer each time in a row; the new pause."""
    pause = min(max(previous * 2, 0.1), MAX_BACKOFF)
    logger.warning("%s failed (%s); again in %.1fs", what, exc, pause)
    await asyncio.sleep(pause)
    return pause
