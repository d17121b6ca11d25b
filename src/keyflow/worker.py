"""The worker pool: asyncio tasks that take pending runs and execute their handlers.

A handler runs inside its worker's task. Cancelling a running run cancels that task
and the worker, seeing the run's ``cancel_requested`` flag, swallows the cancellation
and goes on with the next run; a stop that outlives its grace period cancels the
tasks for good and the interrupted runs go back to the head of their lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .context import RunContext
from .errors import Retry
from .jobs import backoff_delay
from .jsonvalue import NotJSONError, copy_json_dict, json_copy
from .records import RunRecord
from .runs import AttemptError
from .state import PENDING

if TYPE_CHECKING:
    from .core import Core
    from .jobs import Job
    from .scheduler import Keyflow

logger = logging.getLogger("keyflow.worker")

MAX_TRACEBACK_CHARS: Final = 20_000
_PLAIN_OUTPUTS: Final = frozenset({str, int, bool})  # JSON as they are: no copy, no check


class _Worker:
    __slots__ = ("current", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.current: RunRecord | None = None


class WorkerPool:
    """``size`` workers executing the pending runs of ``core``."""

    def __init__(
        self,
        core: Core,
        jobs: Mapping[str, Job],
        size: int,
        *,
        keyflow: Keyflow,
        rng: random.Random,
    ) -> None:
        self._core = core
        self._jobs = jobs
        self._keyflow = keyflow
        self._rng = rng
        self._workers = [_Worker() for _ in range(size)]
        self._closing = False

    @property
    def size(self) -> int:
        """Number of workers."""
        return len(self._workers)

    @property
    def busy(self) -> int:
        """Workers executing a run now."""
        return sum(1 for worker in self._workers if worker.current is not None)

    def start(self) -> None:
        """Start the worker tasks."""
        loop = asyncio.get_running_loop()
        for i, worker in enumerate(self._workers):
            worker.task = loop.create_task(self._loop(worker), name=f"keyflow-worker-{i}")

    def cancel_running(self, record: RunRecord) -> None:
        """Cancel the task executing ``record`` (its handler sees CancelledError)."""
        for worker in self._workers:  # a scan: cancels are rare, starts are not
            if worker.current is record and worker.task is not None:
                worker.task.cancel(f"keyflow: run {record.id} cancelled")

    async def stop(self, grace: float | None) -> None:
        """Start nothing new; give running handlers ``grace`` seconds, then interrupt them."""
        self._closing = True
        for waiter in self._core.idle_workers:
            if not waiter.done():
                waiter.set_result(None)
        tasks = [w.task for w in self._workers if w.task is not None]
        if not tasks:
            return
        _, still_running = await asyncio.wait(tasks, timeout=grace)
        for task in still_running:
            task.cancel("keyflow: stopped before the run finished")
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, worker: _Worker) -> None:
        # One attempt per turn, inlined (no coroutine per run): this is the hot path.
        core = self._core
        jobs = self._jobs
        loop = asyncio.get_running_loop()
        task = worker.task
        assert task is not None
        ready = core.ready
        while not self._closing:
            record = ready.popleft() if ready else None
            if record is None or record.status is not PENDING:  # None, or cancelled since
                if ready:
                    continue
                waiter: asyncio.Future[None] = loop.create_future()
                core.idle_workers.append(waiter)
                await waiter
                continue
            try:
                job = jobs[record.job]
                core.start(record)
                worker.current = record
                deadline: asyncio.Timeout | None = None
                try:
                    while record.unsettled:  # a coalesced input is not durable yet
                        await core.pipeline.barrier()
                    data = copy_json_dict(record.input)
                    ctx = RunContext(self._keyflow, core, record, data)
                    if job.timeout is None:
                        output = await job.handler(ctx, data)
                    else:
                        deadline = asyncio.timeout(job.timeout)
                        async with deadline:
                            output = await job.handler(ctx, data)
                except asyncio.CancelledError:
                    worker.current = None
                    if not record.cancel_requested:
                        core.interrupt(record)  # a stop: the run goes back to its lane
                        raise
                    task.uncancel()
                    core.cancelled(record)
                    if task.cancelling():  # a stop came too
                        return
                except Retry as request:
                    worker.current = None
                    self._record_error(record, request)
                    delay = request.delay
                    if delay is None:
                        delay = backoff_delay(job.backoff, record.retries_used + 1, self._rng)
                    core.fail(record, delay)
                except TimeoutError as exc:
                    worker.current = None
                    expired = deadline is not None and deadline.expired()
                    message = f"run exceeded its timeout of {job.timeout}s" if expired else None
                    self._record_error(record, exc, message)
                    core.fail(record, self._retry_delay(job, record))
                except Exception as exc:
                    worker.current = None
                    self._record_error(record, exc)
                    core.fail(record, self._retry_delay(job, record))
                else:
                    worker.current = None
                    if record.cancel_requested:  # the handler swallowed the cancellation
                        task.uncancel()
                        core.cancelled(record)
                    elif output is None or type(output) in _PLAIN_OUTPUTS:
                        core.complete(record, output)
                    else:
                        self._finish_ok(record, output)
            except Exception:  # a bug in keyflow itself: keep the worker alive
                worker.current = None
                logger.exception("keyflow worker failed while executing run %s", record.id)

    def _finish_ok(self, record: RunRecord, output: Any) -> None:
        try:
            checked = json_copy(output, "output")
        except NotJSONError as exc:
            error = TypeError(f"handler returned a value that is not JSON: {exc}")
            self._record_error(record, error)
            self._core.fail(record, None)
            return
        self._core.complete(record, checked)

    def _retry_delay(self, job: Job, record: RunRecord) -> float | None:
        if record.retries_used >= job.retries:
            return None
        return backoff_delay(job.backoff, record.retries_used + 1, self._rng)

    def _record_error(
        self, record: RunRecord, exc: BaseException, message: str | None = None
    ) -> None:
        text = "".join(traceback.format_exception(exc))
        if len(text) > MAX_TRACEBACK_CHARS:
            text = "…" + text[-MAX_TRACEBACK_CHARS:]
        record.add_error(
            AttemptError(
                attempt=record.attempt,
                type=type(exc).__name__,
                message=message or str(exc),
                traceback=text,
                at=self._core.clock.now(),
            )
        )
