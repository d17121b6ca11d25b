"""``keyflow.Keyflow``: the scheduler users create, register jobs on and trigger."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from math import isfinite
from types import MappingProxyType, TracebackType
from typing import Literal, Unpack, overload

from .clock import Clock, SystemClock
from .coalesce import CoalesceOption
from .commit import Txn
from .core import Core
from .errors import (
    ConfigurationError,
    ReadOnlyError,
    RunNotFoundError,
    SchedulerNotRunningError,
    WaitTimeoutError,
)
from .events import Subscription
from .hub import EventHub
from .jobs import (
    DEFAULT,
    Backoff,
    BackoffOption,
    Default,
    Handler,
    Job,
    KeyOption,
    check_name,
    job_definer,
)
from .jsonvalue import NotJSONError, check_text, safe_repr
from .options import count, optional_seconds, seconds
from .options_types import TRIGGER_OPTIONS, TriggerOptions
from .queries import RunFilters, build_query
from .records import RunRecord
from .recovery import restore
from .runs import Disposition, JSONObject, Run, RunStatus, TriggerResult
from .stats import LaneSnapshot, Paused, Statistics, TriggerCounts
from .storage_backends import StorageBackend, open_backend
from .storage_backends.summaries import RunTiming
from .trigger_request import TriggerRequest
from .triggers import PreparedTrigger, prepare_request
from .watch import ChangeWatch
from .worker import WorkerPool

logger = logging.getLogger("keyflow.scheduler")

STOP_FLUSH_SECONDS = 10.0
"""How long ``stop()`` waits for storage to take the last changes before giving up."""
READ_ONLY_POLL_SECONDS = 0.5
"""How often ``wait()`` on a read-only scheduler looks at storage again."""

_Phase = Literal["new", "starting", "running", "stopping", "stopped"]


class Keyflow:
    """An embedded job scheduler with per-key trigger coalescing.

    Args:
        storage: a storage URL (``"memory://"``, the default) or a backend instance.
        workers: how many runs may execute at once in this process.
        retention: how many finished runs to keep (oldest dropped first).
        lane_limit: how many runs of one concurrency key may execute at once: a number
            for every key, or a function of the key.
        clock: the time source (a :class:`keyflow.testing.VirtualClock` in tests).
        event_buffer: default buffer size of each ``events()`` subscription.
        seed: seeds the jitter of retry backoffs, for reproducible runs.
        grace: default seconds ``stop()`` gives running handlers before interrupting them.
        cancel_grace: seconds a handler has to stop once cancelled (by ``cancel()``, its
            timeout or the end of a stop's grace) before keyflow stops waiting for it:
            its worker is replaced (the run keeps its lane slot until the handler
            returns) or, at a stop, the run goes back to its lane.

    Use ``async with Keyflow(...) as kf:`` (or ``start()``/``stop()``).

    A storage opened read-only (``"sqlite:///runs.db?mode=ro"``) gives a scheduler that
    only reads: it executes, recovers and writes nothing, and ``trigger()``,
    ``cancel()`` and friends raise :class:`~keyflow.ReadOnlyError`.

    Raises:
        ConfigurationError: an option is not valid (the message names it).
    """

    def __init__(
        self,
        storage: str | StorageBackend = "memory://",
        *,
        workers: int = 16,
        retention: int = 10_000,
        lane_limit: int | Callable[[str], int] = 1,
        clock: Clock | None = None,
        event_buffer: int = 1000,
        seed: int | None = None,
        grace: float = 10.0,
        cancel_grace: float = 5.0,
    ) -> None:
        count(workers, "workers", minimum=1, maximum=100_000)
        count(retention, "retention", minimum=0)
        count(event_buffer, "event_buffer", minimum=1, maximum=10_000_000)
        self._grace = seconds(grace, "grace")
        cancel_grace = seconds(cancel_grace, "cancel_grace")
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(f"clock must be a keyflow.Clock, got {safe_repr(clock)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | str)):
            raise ConfigurationError(f"seed must be an integer or None, got {safe_repr(seed)}")
        self._limit_of = _lane_limit(lane_limit)
        self._backend = open_backend(storage, retention=retention)
        self._read_only = self._backend.read_only
        self._clock = clock or SystemClock()
        self._rng = random.Random(seed)
        self._jobs: dict[str, Job] = {}
        self._hub = EventHub(event_buffer)
        self._core = Core(
            backend=self._backend,
            clock=self._clock,
            hub=self._hub,
            lane_limit=self._limit_of,
            on_cancel_running=self._cancel_task,
            refuse=self._refuse_trigger,
        )
        self._pool = WorkerPool(
            self._core,
            self._jobs,
            workers,
            keyflow=self,
            rng=self._rng,
            cancel_grace=cancel_grace,
            durable_start=self._backend.durable,
            mark_start=self._backend.mark_start,
        )
        self._phase: _Phase = "new"
        self._stopping: asyncio.Task[None] | None = None
        self._storage_closing: asyncio.Task[None] | None = None

    # -- jobs --------------------------------------------------------------------

    @overload
    def job(self, handler: Handler, /) -> Job: ...

    @overload
    def job(
        self,
        name: str | None = None,
        *,
        retries: int = 0,
        backoff: BackoffOption = ...,
        timeout: float | None = None,
        concurrency_key: KeyOption = None,
        coalesce: CoalesceOption = None,
    ) -> Callable[[Handler], Job]: ...

    def job(
        self,
        name: str | Handler | None = None,
        *,
        retries: int = 0,
        backoff: BackoffOption = Backoff(),  # noqa: B008 - immutable
        timeout: float | None = None,
        concurrency_key: KeyOption = None,
        coalesce: CoalesceOption = None,
    ) -> Job | Callable[[Handler], Job]:
        """Register ``async def handler(ctx, input)`` as a job.

        Use it bare (``@kf.job``) or with options (``@kf.job(retries=3)``,
        ``@kf.job("name")``); it returns the :class:`Job`, which can be triggered and
        still be called like the handler.

        Args:
            name: the job's name (default: the function's name).
            retries: extra attempts after a failure.
            backoff: delay before each retry (:class:`Backoff`, seconds, or a function).
            timeout: seconds an attempt may take before it fails with TimeoutError.
            concurrency_key: default key, or a function of the input returning it.
            coalesce: default coalesce strategy for triggers of this job.

        Raises:
            ConfigurationError: a duplicate name or an invalid option.
        """
        if callable(name):  # bare @kf.job
            return self.job()(name)
        return job_definer(
            self,
            self._jobs,
            name=name,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            concurrency_key=concurrency_key,
            coalesce=coalesce,
        )

    @property
    def jobs(self) -> Mapping[str, Job]:
        """The registered jobs by name (read-only)."""
        return MappingProxyType(self._jobs)

    # -- lifecycle ---------------------------------------------------------------

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
            await self._core.pipeline.flush()  # crash counts are durable before a rerun
            self._backend.marks_recovered()
        except BaseException:
            self._failed_start()
            await self._backend.close()
            raise
        self._pool.start()
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
            await self._pool.stop(grace)
            self._core.accepting_chained = False  # no handler runs any more
            for handle in self._core.timers.values():
                handle.cancel()
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
        self._core.pipeline.close()  # what an abandoned handler still changes is dropped
        self._hub.close()
        abandoned = self._pool.abandoned_tasks
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
            logger.info(
                "keyflow stopped: %d attempts started, %d runs completed, %d failed, "
                "%d cancelled since start; %d interrupted runs wait for the next start",
                c.started,
                c.completed,
                c.failed,
                c.cancelled,
                sum(1 for r in self._core.records.values() if r.stop_interrupted),
            )

    def _failed_start(self) -> None:
        # Nothing may outlive a start that failed (or was cancelled): no retrying
        # writer, no subscription waiting for events that will never come.
        self._phase = "stopped"
        self._core.pipeline.close()
        self._hub.close()

    async def __aenter__(self) -> Keyflow:
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
        await self._backend.close()

    async def _drain_due_work(self) -> None:
        core = self._core
        while any(
            not _waits_for_delay(r) and not core.held_by_pause(r) for r in core.records.values()
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
                await asyncio.wait_for(core.change_waiter(), 1.0)

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
            raise WaitTimeoutError(
                f"still {len(self._core.records)} unfinished runs after {timeout}s{waiting}"
            ) from None

    async def _until_idle(self) -> None:
        core = self._core
        while True:
            if not core.records or core.only_paused_left:
                if core.pipeline.idle:
                    return
                await core.pipeline.flush()
                continue
            if core.only_timers_left and self._clock.jump():
                continue
            await core.change_waiter()

    # -- triggering --------------------------------------------------------------

    async def trigger(
        self,
        job: str,
        input: JSONObject | None = None,
        *,
        concurrency_key: str | Default | None = DEFAULT,
        coalesce: CoalesceOption | Default = DEFAULT,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
        delay: float = 0.0,
        parent_run_id: str | None = None,
    ) -> TriggerResult:
        """Ask for a run of ``job``; return once the run that covers it is durable.

        Args:
            job: the job's name.
            input: a JSON object (default ``{}``); copied.
            concurrency_key: the lane (default: the job's); runs of one key never
                execute more than ``lane_limit`` at once, whatever their job.
            coalesce: ``None``, ``"skip"``, ``"queue"``, ``"cancel"`` or a
                :class:`Coalesce` (default: the job's).
            idempotency_key: a trigger with a key already used for this job returns the
                run the earlier one made (while that run is retained).
            labels: string labels stored on the run, for filtering.
            delay: seconds before the run is due.
            parent_run_id: the run whose handler triggers this one (set by ``ctx.trigger``).

        Raises:
            TriggerError: bad arguments (a subclass names the problem); nothing stored.
            SchedulerNotRunningError: not started, or stopped.
            StorageError: the write failed; nothing of the trigger remains.
        """
        # Checked and, on in-memory storage, decided by the core at once (not a coroutine:
        # nothing more is awaited than the write itself).
        accepted = self._core.accept(
            self._jobs,
            job,
            input,
            concurrency_key,
            coalesce,
            idempotency_key,
            labels,
            delay,
            parent_run_id,
        )
        if isinstance(accepted, TriggerResult):
            return accepted
        return (await self._commit([accepted])).results[0]

    async def batch_trigger(self, requests: Iterable[TriggerRequest]) -> list[TriggerResult]:
        """Trigger several jobs at once: all are accepted, or none.

        Raises:
            TriggerError: one request is invalid (nothing was stored); the message names it.
            SchedulerNotRunningError: not started, or stopped.
            ReadOnlyError: the storage is open read-only.
        """
        self._check_accepting()
        prepared: list[PreparedTrigger] = []
        for index, request in enumerate(requests):
            if not isinstance(request, TriggerRequest):
                raise ConfigurationError(
                    f"batch_trigger item {index} must be a keyflow.TriggerRequest"
                )
            try:
                prepared.append(prepare_request(self._jobs, request))
            except Exception as exc:
                exc.args = (f"batch_trigger item {index}: {exc}",)
                raise
        if not prepared:
            return []
        return (await self._commit(prepared)).results

    async def _chained_trigger(
        self, job: str, input: JSONObject | None, options: TriggerOptions
    ) -> TriggerResult:
        """``ctx.trigger``: taken during a stop's grace too (part of its run's work)."""
        accepted = self._accept_options("trigger", job, input, options, chained=True)
        if isinstance(accepted, TriggerResult):
            return accepted
        return (await self._commit([accepted], chained=True)).results[0]

    def _accept_options(
        self,
        caller: str,
        job: str,
        input: JSONObject | None,
        options: TriggerOptions,
        *,
        chained: bool = False,
    ) -> TriggerResult | PreparedTrigger:
        """:meth:`Core.accept` of a trigger whose options came as ``**options``."""
        unknown = set(options) - TRIGGER_OPTIONS
        if unknown:
            raise TypeError(f"{caller}() got unexpected options: {', '.join(sorted(unknown))}")
        return self._core.accept(
            self._jobs,
            job,
            input,
            options.get("concurrency_key", DEFAULT),
            options.get("coalesce", DEFAULT),
            options.get("idempotency_key"),
            options.get("labels"),
            options.get("delay", 0.0),
            options.get("parent_run_id"),
            chained,
        )

    async def _commit(
        self, prepared: list[PreparedTrigger], *, wait: bool = False, chained: bool = False
    ) -> Txn:
        core = self._core
        stored: dict[int, str] = {}
        for trig in prepared:
            if trig.idempotency_key is not None:
                stored = await self._stored_idempotency(prepared)
                if not (core.accepting or (chained and core.accepting_chained)):
                    self._refuse_trigger()  # a stop may have begun meanwhile
                break
        txn = Txn(wait=wait)
        results = txn.results
        try:
            for trig in prepared:
                found = stored.get(id(trig)) if stored else None
                if found is None:
                    core.apply_trigger(trig, txn)
                else:
                    results.append(
                        TriggerResult(found, Disposition.IDEMPOTENT, trig.job.name, trig.key)
                    )
                    if txn.covered is not None:
                        txn.covered.append(None)
        except BaseException:
            core.roll_back(txn)
            raise
        if txn.created or txn.joined:
            touched = txn.touched
            if not core.pipeline.commit_now(txn, touched):
                await core.pipeline.commit(txn, touched)
        elif any(not _settled(core.records.get(r.run_id)) for r in results):
            # Found by idempotency key, but its creation is not durable yet: wait for it.
            await core.pipeline.commit(txn, [])
        else:
            core.settle(txn)
        return txn

    async def _stored_idempotency(self, prepared: list[PreparedTrigger]) -> dict[int, str]:
        """Run ids of idempotency keys known to storage but no longer in memory."""
        found: dict[int, str] = {}
        for trig in prepared:
            key = trig.idempotency_key
            if key is None or (trig.job.name, key) in self._core.idempotency:
                continue
            run_id = await self._backend.find_idempotent(trig.job.name, key)
            if run_id is not None:
                found[id(trig)] = run_id
        return found

    async def trigger_and_wait(
        self,
        job: str,
        input: JSONObject | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[TriggerOptions],
    ) -> Run:
        """Trigger, then wait for the run that covers the trigger to finish.

        For a coalesced trigger that is the run it joined. Options as in :meth:`trigger`.
        The wait begins before the run can start, so a run that finishes at once (and
        is pruned by retention right after) is still returned.

        Raises:
            WaitTimeoutError: the run did not finish within ``timeout`` seconds.
            TriggerError, SchedulerNotRunningError, ReadOnlyError, StorageError: as
                :meth:`trigger`.
        """
        timeout = optional_seconds(timeout, "timeout")
        accepted = self._accept_options("trigger_and_wait", job, input, options)
        if isinstance(accepted, TriggerResult):  # decided now: nothing ran meanwhile
            run_id = accepted.run_id
            waiter = self._core.covering_waiter(self._core.records.get(run_id))
        else:
            txn = await self._commit([accepted], wait=True)
            run_id = txn.results[0].run_id
            waiter = txn.waiters[0]
        if waiter is None:  # known only to storage (idempotency): finished already
            return await self.wait(run_id, timeout=timeout)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise WaitTimeoutError(f"run {run_id} did not finish within {timeout}s") from None
        finally:
            self._core.forget_waiter(run_id, waiter)

    # -- runs ----------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        """The run with that id (unfinished or retained), or None."""
        record = self._core.records.get(run_id)
        if record is not None:
            return record.snapshot()
        await self._fresh()
        return await self._backend.get_run(run_id)

    async def list_runs(
        self, *, limit: int = 50, offset: int = 0, **filters: Unpack[RunFilters]
    ) -> list[Run]:
        """Runs matching every filter given, newest first.

        Filters (:class:`RunFilters`): ``job``, ``status``, ``concurrency_key``,
        ``key_prefix``, ``labels`` (every pair must match), ``text`` (anywhere in the
        stored run: id, job, key, input, labels, output, error, logs; ignoring case), and
        the time ranges ``created_after``/``created_before`` and
        ``finished_after``/``finished_before``.

        Raises:
            ConfigurationError: an unknown status or filter, a bad value, or a negative
                limit/offset (also a ValueError).
        """
        count(limit, "limit", minimum=0)
        count(offset, "offset", minimum=0)
        query = build_query(filters, limit=limit, offset=offset)
        await self._fresh()
        runs = await self._backend.list_runs(query)
        live = self._core.records
        return [live[r.id].snapshot() if r.id in live else r for r in runs]

    async def count_runs(self, *, at_most: int | None = None, **filters: Unpack[RunFilters]) -> int:
        """How many runs :meth:`list_runs` would find with these filters and no limit.

        Args:
            at_most: stop counting there: the answer is ``min(count, at_most)`` (cheap
                "1,000+" displays over big stores).
            **filters: as for :meth:`list_runs`.

        Raises:
            ConfigurationError: an unknown status or filter, or a bad value.
        """
        if at_most is not None:
            count(at_most, "at_most", minimum=0)
        query = build_query(filters)
        await self._fresh()
        return await self._backend.count_runs(query, at_most=at_most)

    async def run_timings(
        self, job: str, *, since: float = 0.0, limit: int = 100_000
    ) -> list[RunTiming]:
        """When each run of ``job`` created at ``since`` or later was due, started, ended.

        Newest first, at most ``limit``: the few columns job statistics need (throughput,
        failure rate, waits, run times, coalescing), read from storage's job index on
        SQLite instead of whole runs, so a day of a busy job is cheap to summarise.

        Raises:
            ConfigurationError: ``job`` is not text, ``since`` is not a finite time,
                or ``limit`` is negative.
        """
        if not isinstance(job, str) or not _valid_text(job):
            raise ConfigurationError(f"job must be a job's name, not {safe_repr(job)}")
        if isinstance(since, bool) or not isinstance(since, int | float) or not _finite(since):
            raise ConfigurationError(
                f"since must be a time in epoch seconds, not {safe_repr(since)[:80]}"
            )
        count(limit, "limit", minimum=0)
        await self._fresh()
        return await self._backend.run_timings(job, since, limit=limit)

    async def wait(self, run_id: str, *, timeout: float | None = None) -> Run:
        """Wait until the run is terminal and return it.

        On a read-only scheduler the run executes elsewhere: storage is read again every
        :data:`READ_ONLY_POLL_SECONDS` until it is terminal.

        Raises:
            RunNotFoundError: no such run.
            WaitTimeoutError: it did not finish within ``timeout`` seconds.
            ConfigurationError: ``timeout`` is not a finite number of seconds >= 0.
        """
        timeout = optional_seconds(timeout, "timeout")
        _check_run_id(run_id)
        if run_id not in self._core.records:
            if self._read_only:
                return await self._poll_until_terminal(run_id, timeout)
            try:
                async with asyncio.timeout(timeout):
                    run = await self._finished_run(run_id)
            except TimeoutError:
                raise WaitTimeoutError(f"run {run_id} did not finish within {timeout}s") from None
            if run is not None:
                return run
        waiter = self._core.run_waiter(run_id)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise WaitTimeoutError(f"run {run_id} did not finish within {timeout}s") from None
        finally:
            self._core.forget_waiter(run_id, waiter)

    async def _finished_run(self, run_id: str) -> Run | None:
        """A run not in memory, as storage has it once its end is written.

        None: it is unfinished in memory after all.

        Raises:
            RunNotFoundError: storage has no such run.
        """
        while True:
            await self._fresh()
            run = await self._backend.get_run(run_id)
            if run is None:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            if run_id in self._core.records:
                return None
            if run.is_terminal:
                return run
            # Finished here, but its end is not written yet (storage failing): wait.
            await self._core.pipeline.flush()

    async def _poll_until_terminal(self, run_id: str, timeout: float | None) -> Run:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    run = await self._backend.get_run(run_id)
                    if run is None:
                        raise RunNotFoundError(f"no run with id {run_id!r}")
                    if run.is_terminal:
                        return run
                    await asyncio.sleep(READ_ONLY_POLL_SECONDS)
        except TimeoutError:
            raise WaitTimeoutError(f"run {run_id} did not finish within {timeout}s") from None

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run and return it once it has stopped.

        A waiting run is cancelled at once; a running one has its task cancelled (the
        handler sees ``asyncio.CancelledError``). A finished run is returned unchanged.
        A handler that ignores the cancellation for ``cancel_grace`` seconds is left to
        finish on its own: the run, still ``running``, is returned, and becomes
        ``cancelled`` when the handler returns.

        Raises:
            RunNotFoundError: no such run.
            ReadOnlyError: the storage is open read-only.
        """
        _check_run_id(run_id)
        if self._read_only:
            self._refuse_trigger()
        record = self._core.records.get(run_id)
        if record is None:
            await self._fresh()
            run = await self._backend.get_run(run_id)
            if run is None:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            return run
        if self._core.cancel(record):
            try:
                return await self.wait(run_id, timeout=self._pool.cancel_grace)
            except WaitTimeoutError:
                return record.snapshot()
        await self._core.pipeline.barrier()
        return record.snapshot()

    async def retrigger(self, run_id: str) -> TriggerResult:
        """Trigger the job of a run again with the same input, key and labels.

        The job's default coalesce strategy applies.

        Raises:
            RunNotFoundError: no such run.
        """
        run = await self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        return await self.trigger(
            run.job, run.input, concurrency_key=run.concurrency_key, labels=run.labels or None
        )

    # -- observing ---------------------------------------------------------------

    def keys(self, prefix: str | None = None) -> list[LaneSnapshot]:
        """Lane snapshots, sorted by key: every key with unfinished runs, and recent idle ones."""
        core = self._core
        return [core.lane_snapshot(k) for k in self.key_names(prefix)]

    def key_names(self, prefix: str | None = None) -> list[str]:
        """The keys :meth:`keys` would return, sorted, without building their snapshots."""
        if prefix is not None and not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a string or None, got {safe_repr(prefix)}")
        core = self._core
        names = set(core.lanes) | set(core.key_coalesced)
        if prefix:
            names = {k for k in names if k.startswith(prefix)}
        return sorted(names)

    def lane_states(self) -> dict[str, int]:
        """How many of the :meth:`keys` are ``idle``, ``running`` and ``running+queued``."""
        core = self._core
        running = queued = 0
        for lane in core.lanes.values():
            if lane.holders:
                if lane.waiting:
                    queued += 1
                else:
                    running += 1
        idle = len(set(core.lanes) | set(core.key_coalesced)) - running - queued
        return {"idle": idle, "running": running, "running+queued": queued}

    def lane(self, key: str) -> LaneSnapshot:
        """The snapshot of one key's lane (idle when it has no unfinished run)."""
        return self._core.lane_snapshot(key)

    def statistics(self) -> Statistics:
        """Counters and gauges, as a frozen snapshot."""
        core = self._core
        c = core.counters
        unfinished = {
            s.value: core.status_counts[s.ordinal]
            for s in (RunStatus.SCHEDULED, RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING)
        }
        error = core.pipeline.last_error
        return Statistics(
            triggers=TriggerCounts(c.created, c.queued, c.coalesced, c.idempotent),
            unfinished=MappingProxyType(unfinished),
            started=c.started,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            retried=c.retried,
            interrupted=c.interrupted,
            lanes=len(core.lanes),
            lanes_busy=sum(1 for lane in core.lanes.values() if lane.holders),
            workers=self._pool.size,
            workers_busy=self._pool.busy,
            events_published=self._hub.published,
            events_dropped=self._hub.dropped,
            storage_batches=core.pipeline.batches_written,
            storage_error=None if error is None else repr(error),
            paused=self.paused(),
        )

    async def pause(self, *, job: str | None = None, key: str | None = None) -> None:
        """Pause a job or a lane: none of its runs starts until :meth:`resume`.

        Triggers are accepted and coalesce as usual (a paused lane gathers its follow-up
        run); runs already executing go on. A run of a paused job that reaches the head
        of its lane holds the lane (order and exclusion hold). Written to storage: a
        restart keeps the pause. Give exactly one of ``job`` and ``key``.

        Raises:
            ConfigurationError: neither or both of ``job`` and ``key``, or not a name.
            ReadOnlyError: the storage is open read-only.
            SchedulerNotRunningError: not started, or stopped.
        """
        await self._set_paused(job, key, paused=True)

    async def resume(self, *, job: str | None = None, key: str | None = None) -> None:
        """Undo :meth:`pause` (the same arguments); held-back runs start again.

        Raises:
            ConfigurationError: neither or both of ``job`` and ``key``, or not a name.
            ReadOnlyError: the storage is open read-only.
            SchedulerNotRunningError: not started, or stopped.
        """
        await self._set_paused(job, key, paused=False)

    async def _set_paused(self, job: str | None, key: str | None, *, paused: bool) -> None:
        if (job is None) == (key is None):
            raise ConfigurationError("give exactly one of job= and key=")
        kind, name = ("job", job) if job is not None else ("key", key)
        check_name(name, kind)
        self._check_accepting()
        assert name is not None
        self._core.set_paused(kind, name, paused)
        await self._core.pipeline.barrier()

    def paused(self) -> Paused:
        """The jobs and lanes paused now."""
        core = self._core
        return Paused(frozenset(core.paused_jobs), frozenset(core.paused_keys))

    def events(self, buffer: int | None = None) -> Subscription:
        """Subscribe to events from now on (an async iterator; ``async with`` closes it).

        Args:
            buffer: events kept for a slow reader before the oldest are dropped.

        After ``stop()`` the subscription is closed at once (iteration ends).

        Raises:
            ConfigurationError: ``buffer`` is not an integer >= 1.
        """
        if buffer is not None:
            count(buffer, "buffer", minimum=1, maximum=10_000_000)
        return self._hub.subscribe(buffer)

    def changes(self) -> ChangeWatch:
        """Watch for changes without events: ``async for changes in kf.changes()``.

        Each :class:`~keyflow.watch.Changes` says which keys had runs change, and
        whether a trigger was coalesced, since the previous one; cheap for the scheduler
        whatever the rate (no event is built). ``async with`` (or ``close()``) ends it.
        """
        return self._hub.watch()

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

    # -- async reads -------------------------------------------------------------
    # The lane and counter reads a coordinator over a shared database answers from the
    # database (see docs/architecture.md). Today's single-process coordinator answers
    # them from memory, exactly as the synchronous reads above do.

    async def list_lanes(
        self, prefix: str | None = None, *, limit: int | None = None
    ) -> list[LaneSnapshot]:
        """Lane snapshots sorted by key: :meth:`keys`, awaitable, at most ``limit`` of them.

        Args:
            prefix: only keys starting with it (None or ``""``: every key).
            limit: at most this many lanes, the first in key order (None: all).

        Raises:
            ConfigurationError: ``prefix`` is not a string, or ``limit`` is not an
                integer >= 0.
        """
        if limit is not None:
            count(limit, "limit", minimum=0)
        names = self.key_names(prefix)
        if limit is not None:
            names = names[:limit]
        core = self._core
        return [core.lane_snapshot(k) for k in names]

    async def get_lane(self, key: str) -> LaneSnapshot:
        """One key's lane (idle when it has no unfinished run): :meth:`lane`, awaitable."""
        return self.lane(key)

    async def get_lane_states(self) -> dict[str, int]:
        """How many lanes are in each state: :meth:`lane_states`, awaitable."""
        return self.lane_states()

    async def get_statistics(self) -> Statistics:
        """Counters and gauges as a frozen snapshot: :meth:`statistics`, awaitable."""
        return self.statistics()


def _lane_limit(option: int | Callable[[str], int]) -> Callable[[str], int]:
    if callable(option):
        function = option

        def checked(key: str) -> int:
            try:
                value = function(key)
            except Exception as exc:
                raise ConfigurationError(
                    f"the lane_limit function failed for key {key!r}: {safe_repr(exc)}"
                ) from exc
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"lane_limit({key!r}) returned {safe_repr(value)}; need an integer >= 1"
                )
            return value

        return checked
    if isinstance(option, bool) or not isinstance(option, int) or option < 1:
        raise ConfigurationError(f"lane_limit must be an integer >= 1, got {option!r}")
    limit = option
    return lambda _key: limit


def _waits_for_delay(record: RunRecord) -> bool:
    return record.status is RunStatus.SCHEDULED and record.attempt == 0


def _settled(record: RunRecord | None) -> bool:
    return record is None or (record.durable and record.unsettled == 0)


def _check_run_id(run_id: object) -> None:
    if not isinstance(run_id, str):
        raise RunNotFoundError(f"no run with id {safe_repr(run_id)} (run ids are strings)")


def _finite(number: float) -> bool:
    try:
        return isfinite(number)
    except OverflowError:  # an int too large for a float: not a time either
        return False


def _valid_text(text: str) -> bool:
    try:
        check_text(text, "job")
    except NotJSONError:  # a lone surrogate: no stored name can be it
        return False
    return True
