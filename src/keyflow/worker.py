"""The worker pool: asyncio tasks that take pending runs and execute their handlers.

A handler runs inside its worker's task. Cancelling a running run cancels that task
and the worker, seeing the run's ``cancel_requested`` flag, swallows the cancellation
and goes on with the next run; a stop that outlives its grace period cancels the
tasks for good and the interrupted runs go back to the head of their lanes.

Whatever a handler does, its run ends and the pool keeps its size:

* on durable storage a run's start is written before its handler's first instruction
  (a start mark in its worker's slot, or else the commit of its status), so a process
  that dies inside the handler is counted as a crash (poison pill); runs a crash cut
  short (suspects) then execute one at a time, so a run that kills its process takes
  no innocent run down with it a second time;
* every exception (any ``BaseException`` but a process exit) fails the attempt, with its
  message stored as safe text; a handler that returns after its timeout still fails;
* a handler that ignores its cancellation (a cancel, a timeout) for ``cancel_grace``
  seconds is left to finish on its own: its worker is replaced, and its run keeps its
  lane slot until the handler really ends (so it never runs twice at once). At a stop,
  such a handler is abandoned and its run goes back to its lane.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from .context import RunContext
from .errors import KeyflowError, Retry
from .jobs import backoff_delay
from .jsonvalue import (
    MAX_TEXT,
    NotJSONError,
    check_size,
    copy_json_dict,
    json_copy,
    safe_str,
    storable_text,
)
from .records import RunRecord
from .runs import AttemptError, JSONObject, RunStatus
from .state import PENDING, RUNNING

if TYPE_CHECKING:
    from .core import Core
    from .jobs import Job

logger = logging.getLogger("keyflow.worker")

MAX_TRACEBACK_CHARS: Final = 20_000
_EXITS: Final = (KeyboardInterrupt, SystemExit)


class _Worker:
    __slots__ = ("abandoned", "current", "detached", "slot", "task")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        """Its start-mark slot (see :meth:`StorageBackend.mark_start`), its own."""
        self.task: asyncio.Task[None] | None = None
        self.current: RunRecord | None = None
        self.abandoned = False
        """Its handler ignored a cancellation: a new worker took its place, and this one
        ends once the handler does."""
        self.detached = False
        """A stop gave up on its handler: the run was interrupted; nothing it does after
        reaches the run."""


class WorkerPool:
    """``size`` workers executing the pending runs of ``core``."""

    def __init__(
        self,
        core: Core,
        jobs: Mapping[str, Job],
        size: int,
        *,
        new_context: Callable[[RunRecord, JSONObject], RunContext],
        rng: random.Random,
        cancel_grace: float,
        durable_start: bool,
        mark_start: Callable[[int, RunRecord], bool],
    ) -> None:
        self._core = core
        self._jobs = jobs
        self._new_context = new_context
        self._rng = rng
        self._cancel_grace = cancel_grace
        self._durable_start = durable_start
        self._mark_start = mark_start
        self._workers = [_Worker(slot) for slot in range(size)]
        self._slots = size
        self._abandoned: list[_Worker] = []
        self._suspect: RunRecord | None = None
        """The one run executing after a crash cut it short (see the module)."""
        self._suspects_waiting: deque[RunRecord] = deque()
        """Such runs waiting for it (pending, in their order), holding no worker."""
        self._spawned = 0
        self._closing = False
        self.abandoned_runs: list[RunRecord] = []
        """Runs a stop interrupted while their handlers, abandoned, still execute."""

    @property
    def size(self) -> int:
        """Number of workers."""
        return len(self._workers)

    @property
    def cancel_grace(self) -> float:
        """Seconds a cancelled handler has to stop before it is left to itself."""
        return self._cancel_grace

    @property
    def busy(self) -> int:
        """Workers executing a run now."""
        return sum(1 for worker in self._workers if worker.current is not None)

    def start(self) -> None:
        """Start the worker tasks."""
        for worker in self._workers:
            self._spawn(worker)

    def _spawn(self, worker: _Worker) -> None:
        worker.task = asyncio.get_running_loop().create_task(
            self._loop(worker), name=f"keyflow-worker-{self._spawned}"
        )
        self._spawned += 1

    def cancel_running(self, record: RunRecord) -> None:
        """Cancel the task executing ``record`` (its handler sees CancelledError)."""
        for worker in self._workers:  # a scan: cancels are rare, starts are not
            if worker.current is record and worker.task is not None:
                worker.task.cancel(f"keyflow: run {record.id} cancelled")
                asyncio.get_running_loop().call_later(
                    self._cancel_grace, self._check_stuck, worker, record
                )

    def _check_stuck(self, worker: _Worker, record: RunRecord) -> None:
        # A cancellation (cancel or timeout) was not obeyed within cancel_grace.
        if worker.current is not record or worker.abandoned or self._closing:
            return
        logger.warning(
            "the handler of run %s (job %r) ignores its cancellation; its worker is "
            "replaced, and the run stays running until the handler returns",
            record.id,
            record.job,
        )
        worker.abandoned = True
        self._abandoned.append(worker)
        fresh = _Worker(self._slots)  # not the abandoned one's: its handler still runs
        self._slots += 1
        self._workers[self._workers.index(worker)] = fresh
        self._spawn(fresh)

    async def stop(self, grace: float) -> None:
        """Start nothing new; give running handlers ``grace`` seconds, then interrupt them.

        A handler that ignores its cancellation for ``cancel_grace`` more seconds is
        abandoned: its run goes back to its lane, and the stop completes.
        """
        self._closing = True
        for waiter in self._core.idle_workers:
            if not waiter.done():
                waiter.set_result(None)
        workers = [w for w in (*self._workers, *self._abandoned) if w.task is not None]
        tasks = {w.task for w in workers if w.task is not None and not w.task.done()}
        if not tasks:
            return
        # asyncio.wait, not awaiting the tasks: a cancellation of stop() itself must
        # reach the caller, not be taken for a worker's.
        _, running = await asyncio.wait(tasks, timeout=grace)
        if not running:
            return
        for task in running:
            task.cancel("keyflow: stopped before the run finished")
        _, stuck = await asyncio.wait(running, timeout=self._cancel_grace)
        for worker in workers:
            if worker.task in stuck:
                worker.detached = True
                record = worker.current
                worker.current = None
                if record is not None and record.status is RUNNING:
                    logger.error(
                        "the handler of run %s (job %r) ignored its cancellation at stop; "
                        "it is abandoned and the run %s",
                        record.id,
                        record.job,
                        "is cancelled" if record.cancel_requested else "goes back to its lane",
                    )
                    if record.cancel_requested:
                        self._core.cancelled(record)
                    else:
                        self._core.interrupt(record)
                        self.abandoned_runs.append(record)

    @property
    def abandoned_tasks(self) -> list[asyncio.Task[None]]:
        """Tasks of handlers a stop gave up on that have not ended yet."""
        return [
            w.task
            for w in (*self._workers, *self._abandoned)
            if w.detached and w.task is not None and not w.task.done()
        ]

    async def _loop(self, worker: _Worker) -> None:
        # One attempt per turn, inlined (no coroutine per run): this is the hot path.
        core = self._core
        jobs = self._jobs
        loop = asyncio.get_running_loop()
        task = worker.task
        assert task is not None
        pipeline = core.pipeline
        durable_start = self._durable_start
        mark_start = self._mark_start
        slot = worker.slot
        while not self._closing and not worker.abandoned:
            record = core.claim()
            if record is None:
                waiter: asyncio.Future[None] = loop.create_future()
                core.idle_workers.append(waiter)
                # No handler runs here (their stray cancels were taken as each run ended):
                # a cancel now comes from outside, e.g. asyncio.run() ending the program
                # without kf.stop(). It ends this worker, or the program would never end.
                await waiter
                continue
            if (core.paused_jobs or core.paused_keys) and core.is_paused(record):
                core.park(record)  # still pending, holding its slot, until resumed
                continue
            job = jobs.get(record.job)
            if job is None:  # recovery rejects these; a run must never stick regardless
                core.reject(record, f"job {record.job!r} is not registered in this process")
                continue
            suspect = record.crashes > 0
            if suspect:
                if self._suspect is not None:  # one at a time; it waits without a worker
                    self._suspects_waiting.append(record)
                    continue
                self._suspect = record
            core.start(record)
            worker.current = record
            deadline: asyncio.Timeout | None = None
            watchdog: asyncio.TimerHandle | None = None
            failure: BaseException | None = None
            output: Any = None
            try:
                while record.unsettled:  # a coalesced input is not durable yet
                    await pipeline.barrier()
                # The start is on disk before the handler's first line: a start mark, or
                # (without one) the commit of the run's new status.
                if durable_start and not mark_start(slot, record):
                    await pipeline.until_written(record)
                data = copy_json_dict(record.input)
                ctx = self._new_context(record, data)
                if job.timeout is None:
                    output = await job.handler(ctx, data)
                else:
                    watchdog = loop.call_later(
                        job.timeout + self._cancel_grace, self._check_stuck, worker, record
                    )
                    deadline = asyncio.timeout(job.timeout)
                    async with deadline:
                        output = await job.handler(ctx, data)
            except asyncio.CancelledError as exc:
                if self._closing and task.cancelling() and not record.cancel_requested:
                    if not worker.detached:  # (a stop that gave up interrupted it already)
                        worker.current = None
                        core.interrupt(record)  # a stop: the run goes back to its lane
                    raise
                # A cancel of the run (settled below), or the handler's own cancellation
                # (of its own task, or a library's): an exception like any other.
                failure = exc
            except _EXITS:
                raise  # the process is exiting: on restart the run counts as a crash
            except BaseException as exc:  # Retry, TimeoutError, anything a handler raises
                failure = exc
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                if suspect:
                    self._next_suspect()
            if worker.detached:
                return  # a stop gave up on this handler; its run was interrupted
            worker.current = None
            if (
                failure is None
                and deadline is None
                and not record.cancel_requested
                and (output is None or type(output) is bool or type(output) is str)
                and (type(output) is not str or (len(output) < MAX_TEXT and output.isascii()))
                and not task.cancelling()
            ):
                core.complete(record, output)  # the common end: storable as it is
                continue
            try:
                self._settle(job, record, failure, output, deadline)
            except Exception:  # a bug in keyflow: the run must still end
                logger.exception("keyflow failed to record the end of run %s", record.id)
                now: RunStatus = record.status
                if now is RUNNING:
                    core.fail(record, None)
            if task.cancelling():
                if self._closing:
                    return  # a stop came while the run was ending
                # Cancels of this task that are not a stop's are settled with the run
                # (a cancel of the run, or the handler's own): none may kill the worker.
                self._forget_cancels(task)
                try:
                    await asyncio.sleep(0)  # takes a cancel requested but never awaited
                except asyncio.CancelledError:
                    if self._closing:
                        raise
                    self._forget_cancels(task)

    def _forget_cancels(self, task: asyncio.Task[None]) -> None:
        while task.cancelling():
            task.uncancel()

    def _next_suspect(self) -> None:
        """The suspect that ran is done: the next waiting one (still pending) may run."""
        self._suspect = None
        waiting = self._suspects_waiting
        while waiting:
            record = waiting.popleft()
            if record.status is PENDING:
                self._core.ready_again(record)
                return

    def _settle(
        self,
        job: Job,
        record: RunRecord,
        failure: BaseException | None,
        output: Any,
        deadline: asyncio.Timeout | None,
    ) -> None:
        """Record how the attempt ended."""
        core = self._core
        if record.cancel_requested:  # cancelled, whatever the handler did with it
            core.cancelled(record)
        elif isinstance(failure, Retry):
            self._record_error(record, failure)
            delay = failure.delay
            if delay is None:
                self._fail_or_retry(job, record)
            else:
                self._failed(record, delay)
        elif isinstance(failure, TimeoutError) or (
            failure is None and deadline is not None and deadline.expired()
        ):
            # A handler that caught its timeout's cancellation and returned anyway still
            # ran past its timeout: the attempt failed.
            expired = deadline is not None and deadline.expired()
            exc = failure if failure is not None else TimeoutError()
            message = f"run exceeded its timeout of {job.timeout}s" if expired else None
            self._record_error(record, exc, message)
            self._fail_or_retry(job, record)
        elif failure is not None:
            self._record_error(record, failure)
            self._fail_or_retry(job, record)
        elif output is None or type(output) is bool or (type(output) is str and output.isascii()):
            core.complete(record, output)  # storable as it is: no copy, no check
        else:
            self._finish_ok(record, output)

    def _fail_or_retry(self, job: Job, record: RunRecord) -> None:
        if record.retries_used >= job.retries:
            self._failed(record, None)
            return
        try:
            delay = backoff_delay(job.backoff, record.retries_used + 1, self._rng)
        except KeyflowError as exc:  # the job's backoff function misbehaved
            self._record_error(record, exc, f"no retry: {exc}")
            self._failed(record, None)
            return
        self._failed(record, delay)

    def _failed(self, record: RunRecord, delay: float | None) -> None:
        """The attempt failed (its error is recorded): log it, then retry or fail."""
        retry = delay is not None and record.retries_used + 1 < record.max_attempts
        logger.warning(
            "run %s (job %r, key %r) attempt %d of %d failed: %s; %s",
            record.id,
            record.job,
            record.key,
            record.attempt,
            record.max_attempts,
            record.error,
            f"retry in {delay:g}s" if retry else "no retry left: the run failed",
        )
        self._core.fail(record, delay)

    def _finish_ok(self, record: RunRecord, output: Any) -> None:
        try:
            checked = json_copy(output, "output")
            if (
                type(checked) is not bool
                and checked is not None
                and not (type(checked) is str and len(checked) < MAX_TEXT)
            ):
                check_size(checked, "output")
        except NotJSONError as exc:
            error = TypeError(f"handler returned a value that is not JSON storage can hold: {exc}")
            self._record_error(record, error)
            self._failed(record, None)
            return
        self._core.complete(record, checked)

    def _record_error(
        self, record: RunRecord, exc: BaseException, message: str | None = None
    ) -> None:
        try:
            text = "".join(traceback.format_exception(exc))
        except Exception:  # formatting calls the exception's own code
            text = f"{type(exc).__name__} (its traceback could not be formatted)"
        if len(text) > MAX_TRACEBACK_CHARS:
            text = "…" + text[-MAX_TRACEBACK_CHARS:]
        record.add_error(
            AttemptError(
                attempt=record.attempt,
                type=storable_text(type(exc).__name__),
                message=storable_text(message) if message is not None else safe_str(exc),
                traceback=storable_text(text, limit=MAX_TRACEBACK_CHARS + 1),
                at=self._core.clock.now(),
            )
        )
