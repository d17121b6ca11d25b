"""The scheduler's lifecycle: start, stop, drain, ``run_until_idle``.

The first layer of :class:`keyflow.Keyflow` (built as a stack of layers, one concept
each: lifecycle, runs, triggering, observing; see :mod:`keyflow.scheduler`). It
declares the state every layer shares; ``Keyflow.__init__`` sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from .clock import Clock
from .core import Core
from .errors import ReadOnlyError, SchedulerNotRunningError, StorageError, WaitTimeoutError
from .hub import EventHub
from .jobs import Job
from .options import optional_seconds, seconds
from .records import RunRecord
from .recovery import restore
from .runs import RunStatus
from .storage_backends import StorageBackend
from .worker import WorkerPool

if TYPE_CHECKING:
    from .shared.service import SharedService

logger = logging.getLogger("keyflow.scheduler")

STOP_FLUSH_SECONDS = 10.0
"""How long ``stop()`` waits for storage to take the last changes before giving up."""

SHARED_IDLE_POLL_SECONDS = 0.05
"""On shared storage, ``run_until_idle`` asks the database at least this often."""

Phase = Literal["new", "starting", "running", "stopping", "stopped"]


class Lifecycle:
    """Starts and stops a scheduler; the state its other layers share."""

    _backend: StorageBackend
    _read_only: bool
    _clock: Clock
    _rng: random.Random
    _jobs: dict[str, Job]
    _hub: EventHub
    _core: Core
    _pool: WorkerPool
    _shared: SharedService | None
    """Shared storage's background work (claims, leases, due times), or None."""
    _grace: float
    _phase: Phase
    _stopping: asyncio.Task[None] | None
    _storage_closing: asyncio.Task[None] | None

    @property
    def shared(self) -> bool:
        """True on storage many processes share (PostgreSQL).

        Then the async reads (``get_lane``, ``list_lanes``, ``get_statistics``…) show
        every process's runs; the synchronous ones this process's own.
        """
        return self._shared is not None

    @property
    def storage(self) -> StorageBackend:
        """The storage backend it uses (made from the storage URL; opened by start())."""
        return self._backend

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._phase == "running"

    @property
    def clock(self) -> Clock:
        """The time source: every timestamp of this scheduler's runs is its time."""
        return self._clock

    async def start(self) -> None:
        """Open storage, rebuild lanes from it, and start the workers.

        Raises:
            SchedulerNotRunningError: it was started before (an instance starts once).
        """
        if self._phase != "new":
            raise SchedulerNotRunningError("a Keyflow instance can be started only once")
        self._phase = "starting"
        try:
            stored = await self._backend.open()
        except BaseException:
            self._failed_start()
            raise
        if self._read_only:  # it only reads: no lanes, no recovery, no workers
            self._phase = "running"
            return
        try:
            for kind, name in stored.paused:
                (self._core.paused_jobs if kind == "job" else self._core.paused_keys).add(name)
            restore(self._core, stored.unfinished, self._jobs, stored.started)
            # Crash counts are durable before a rerun; a storage that cannot take them
            # now (a full disk) fails the start rather than hang it.
            await self._core.pipeline.flush(give_up=True)
            self._backend.marks_recovered()
        except BaseException:
            self._failed_start()
            await self._backend.close()
            raise
        self._pool.start()
        if self._shared is not None:
            self._shared.start()
        self._phase = "running"
        self._core.accepting = self._core.accepting_chained = True
        logger.info(
            "keyflow started on %r with %d workers; %d unfinished runs restored",
            self._backend,
            self._pool.size,
            len(self._core.records),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop: refuse triggers, start nothing new, let running handlers finish.

        Args:
            grace: seconds to wait for running handlers (default: the ``grace`` given to
                the constructor); after it, they are cancelled and their runs go back to
                the head of their lanes.

        The stop is bounded: a handler that ignores its cancellation is abandoned after
        ``cancel_grace`` seconds, and storage gets at most :data:`STOP_FLUSH_SECONDS` to
        take the last changes. Cancelling ``stop()`` (e.g. ``asyncio.wait_for``) returns
        control at once; the stop goes on in the background, and a later ``stop()``
        waits for it. If handlers were abandoned, storage (and its lock) is kept until
        they return; a later ``stop()`` waits for that too.

        Raises:
            ConfigurationError: ``grace`` is not a finite number of seconds >= 0.
        """
        grace = self._grace if grace is None else seconds(grace, "grace")
        if self._phase == "stopped" and self._storage_closing is not None:
            # Stopped, but storage waits for abandoned handlers: wait with it.
            await asyncio.shield(self._storage_closing)
            return
        if self._stopping is None:
            if self._phase == "stopped":
                return
            # From this moment on: no trigger from outside, no new start.
            was_running = self._phase == "running" and not self._read_only
            self._phase = "stopping"
            self._core.accepting = False
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace, was_running))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float, was_running: bool) -> None:
        if was_running:
            if self._shared is not None:
                self._shared.stop_claiming()
            await self._pool.stop(grace)
            if self._shared is not None:  # their handlers still run: keep their leases
                self._shared.coordinator.held.update(r.id for r in self._pool.abandoned_runs)
            self._core.accepting_chained = False  # no handler runs any more
            self._core.timers.clear()
            try:
                async with asyncio.timeout(STOP_FLUSH_SECONDS):
                    await self._core.pipeline.flush()
            except TimeoutError:
                # Storage keeps failing: what is not written is redone after a restart
                # (a run found running is run again), so give up rather than hang.
                logger.warning(
                    "keyflow stopped with changes not written to storage: %s",
                    self._core.pipeline.last_error,
                )
            if self._shared is not None:
                await self._hand_back_backoffs(self._shared)
        abandoned = self._pool.abandoned_tasks
        if self._shared is not None and not abandoned:
            await self._shared.stop()
        self._core.pipeline.close()  # what an abandoned handler still changes is dropped
        self._hub.close()
        if abandoned:
            # Keep storage (and its lock) until those handlers end: no other process may
            # run their runs while they still execute here.
            logger.warning(
                "keyflow stopped, but %d handler(s) ignore their cancellation: the storage "
                "stays locked until they return",
                len(abandoned),
            )
            self._storage_closing = asyncio.get_running_loop().create_task(
                self._close_after(abandoned)
            )
        else:
            await self._backend.close()
        self._phase = "stopped"
        if was_running:
            c = self._core.counters
            interrupted = sum(1 for r in self._core.records.values() if r.stop_interrupted)
            logger.info(
                "keyflow stopped: %d attempt(s) started, %d run(s) completed, %d failed, "
                "%d cancelled since start; %d interrupted run(s) %s",
                c.started,
                c.completed,
                c.failed,
                c.cancelled,
                interrupted,
                "went back to their lanes for any process"
                if self._shared is not None
                else "wait for the next start",
            )

    async def _hand_back_backoffs(self, shared: SharedService) -> None:
        """Give the runs waiting out a retry backoff here to the other processes.

        Their leases would otherwise outlive this process: the runs would wait for the
        lease to expire, then count a crash they never had.
        """
        core = self._core
        waiting = [r for r in core.records.values() if r.status is RunStatus.SCHEDULED]
        if waiting:
            try:
                await shared.coordinator.let_go(waiting, shared.limit_of)
            except StorageError as exc:  # their leases expire on their own
                logger.warning(
                    "handing back %d runs in a retry backoff failed: %s", len(waiting), exc
                )

    def _failed_start(self) -> None:
        # Nothing may outlive a start that failed (or was cancelled): no retrying
        # writer, no subscription waiting for events that will never come.
        self._phase = "stopped"
        self._core.pipeline.close()
        self._hub.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Drain the work that is due (not delayed runs, nor runs a pause holds), then stop."""
        if exc_type is None and self._phase == "running":
            await self._drain_due_work()
        await self.stop()

    async def _close_after(self, tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.wait(tasks)
        shared = self._shared
        if shared is not None:  # the handlers ended: their runs may go to the others
            with contextlib.suppress(StorageError):
                await shared.coordinator.let_go(self._pool.abandoned_runs, shared.limit_of)
            await shared.stop()
        await self._backend.close()

    async def _drain_due_work(self) -> None:
        if self._pool.size == 0:
            return  # nothing executes here: the runs wait for a process with workers
        core = self._core
        while (
            any(
                not _waits_for_delay(r) and not core.held_by_pause(r) for r in core.records.values()
            )
            or await self._shared_due_work()
        ):
            if core.pipeline.last_error is not None:
                # Runs cannot start or end while storage fails: leave rather than hang
                # (the stop writes what it can; a restart does the rest).
                logger.warning(
                    "leaving 'async with' without draining: storage writes are failing (%r)",
                    core.pipeline.last_error,
                )
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(core.waiters.change_waiter(), 1.0)

    async def _shared_due_work(self) -> bool:
        """On shared storage: whether runs of this process's jobs run or wait for a worker.

        They wait in the database, not in this process, until one claims them; a run of
        a job registered nowhere here is another deployment's to drain.
        """
        shared = self._shared
        if shared is None:
            return False
        from .shared import reads

        try:
            return await reads.due_work(shared.coordinator, list(self._jobs)) > 0
        except StorageError as exc:  # the database is away: leave rather than hang
            logger.warning("leaving 'async with' without draining: %s", exc)
            return False

    async def run_until_idle(self, timeout: float | None = None) -> None:
        """Wait until no run is unfinished, delayed and backed-off runs included.

        Runs a pause holds back (see :meth:`pause`) do not count: they wait for a
        resume, so this returns once nothing else is left. With a
        :class:`keyflow.testing.VirtualClock`, delays and backoffs are skipped
        instantly. Meant for tests, scripts and demos.

        Raises:
            WaitTimeoutError: still busy after ``timeout`` seconds.
        """
        timeout = optional_seconds(timeout, "timeout")
        self._require_running()
        if self._read_only:
            return  # nothing executes here
        try:
            async with asyncio.timeout(timeout):
                await self._until_idle()
        except TimeoutError:
            error = self._core.pipeline.last_error
            waiting = (
                f"; storage writes are failing ({error!r}), so changes wait to be written"
                if error is not None
                else ""
            )
            here = len(self._core.records)
            if self._shared is not None:  # (the database's runs are not counted here)
                raise WaitTimeoutError(
                    f"the shared database still had runs due, pending or running after "
                    f"{timeout}s ({here} of them held by this process){waiting}"
                ) from None
            raise WaitTimeoutError(
                f"still {here} unfinished runs after {timeout}s{waiting}"
            ) from None

    async def _until_idle(self) -> None:
        if self._shared is not None:
            await self._until_shared_idle(self._shared)
            return
        core = self._core
        while True:
            if not core.records or core.only_paused_left:
                if core.pipeline.idle:
                    return
                await core.pipeline.flush()
                continue
            if core.only_timers_left and self._clock.jump():
                continue
            await core.waiters.change_waiter()

    async def _until_shared_idle(self, shared: SharedService) -> None:
        # The database is idle: no run due, pending or running in any process.
        core = self._core
        coordinator = shared.coordinator
        while True:
            if not core.records or core.only_paused_left:
                await core.pipeline.flush()
                try:
                    busy = await coordinator.busy(core.now())
                    due = None if busy else await coordinator.next_due()
                except StorageError as exc:  # the database is away: ask again soon
                    logger.warning("run_until_idle cannot ask the database: %s", exc)
                    await shared.wait_change(SHARED_IDLE_POLL_SECONDS * 10)
                    continue
                if not core.records and not busy:
                    if due is None:
                        return
                    shared.arm_next_due(due)
                    if self._clock.jump():
                        continue
            elif core.only_timers_left and self._clock.jump():
                continue
            await shared.wait_change(SHARED_IDLE_POLL_SECONDS)

    # -- internals ---------------------------------------------------------------

    async def _fresh(self) -> None:
        """Read your writes: storage holds every change made so far before a query.

        Not needed when the backend holds our very records (memory). A failed write does
        not block the read; it answers with what is durable.

        Raises:
            SchedulerNotRunningError: durable storage is read through a started instance
                only (after ``stop()`` it is closed).
        """
        if not self._backend.shares_records:
            if self._phase in ("new", "starting", "stopped"):
                raise SchedulerNotRunningError(
                    f"keyflow is {'stopped' if self._phase == 'stopped' else 'not started'}"
                    " and its storage is not open; read runs while it runs, or through a"
                    " read-only backend"
                )
            await self._core.pipeline.barrier()

    def _check_accepting(self) -> None:
        if not self._core.accepting:
            self._refuse_trigger()

    def _refuse_trigger(self) -> None:
        # The core calls this for a trigger while it does not accept them.
        if self._read_only and self._phase == "running":
            raise ReadOnlyError(
                f"{self._backend!r} is open read-only: this scheduler reads runs but cannot "
                "trigger, cancel or execute them"
            )
        self._require_running()
        raise SchedulerNotRunningError("keyflow is stopping; it accepts no more triggers")

    def _require_running(self) -> None:
        if self._phase != "running":
            if self._phase in ("new", "starting"):
                raise SchedulerNotRunningError(
                    "keyflow is not started: use 'async with kf:' or 'await kf.start()'"
                )
            if self._phase == "stopping":
                raise SchedulerNotRunningError(
                    "keyflow is stopping; it accepts no more triggers (a running handler's "
                    "ctx.trigger is still taken during the stop's grace)"
                )
            raise SchedulerNotRunningError("keyflow is stopped; it accepts no more triggers")

    def _cancel_task(self, record: RunRecord) -> None:
        self._pool.cancel_running(record)


def _waits_for_delay(record: RunRecord) -> bool:
    return record.status is RunStatus.SCHEDULED and record.attempt == 0
