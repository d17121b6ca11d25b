"""The scheduler's triggers: ``trigger``, ``batch_trigger``, ``trigger_and_wait``.

A layer of :class:`keyflow.Keyflow` (see :mod:`keyflow.scheduler`). Each verb checks
its arguments and hands them to the core (:meth:`keyflow.core.Core.accept`, then
:meth:`~keyflow.core.Core.commit` when storage needs a write awaited).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Unpack

from .coalesce import CoalesceOption
from .errors import ConfigurationError, RunNotFoundError
from .jobs import DEFAULT, Default
from .options import optional_seconds
from .options_types import TriggerOptions
from .run_ops import RunOps
from .runs import JSONObject, Run, TriggerResult
from .trigger_request import TriggerRequest
from .triggers import PreparedTrigger, prepare_request


class Triggering(RunOps):
    """Triggers runs."""

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
        return (await self._core.commit([accepted])).results[0]

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
        return (await self._core.commit(prepared)).results

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
        accepted = self._core.accept_options("trigger_and_wait", job, input, options)
        if isinstance(accepted, TriggerResult):  # decided now: nothing ran meanwhile
            run_id = accepted.run_id
            waiter = self._core.waiters.covering_waiter(self._core.records.get(run_id))
        else:
            txn = await self._core.commit([accepted], wait=True)
            run_id = txn.results[0].run_id
            waiter = txn.waiters[0]
        if waiter is None:  # known only to storage (idempotency): finished already
            return await self.wait(run_id, timeout=timeout)
        return await self._await_end(run_id, waiter, timeout)

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
