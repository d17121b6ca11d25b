"""The scheduler's runs: read them, wait for them, cancel them.

A layer of :class:`keyflow.Keyflow` (see :mod:`keyflow.scheduler`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from math import isfinite
from typing import TYPE_CHECKING, Unpack

from .errors import ConfigurationError, RunNotFoundError, WaitTimeoutError
from .jsonvalue import NotJSONError, check_text, safe_repr
from .lifecycle import Lifecycle
from .options import count, optional_seconds
from .queries import RunFilters, build_query
from .runs import Run
from .storage_backends.summaries import RunTiming

if TYPE_CHECKING:
    from .shared.service import SharedService

READ_ONLY_POLL_SECONDS = 0.5
"""How often ``wait()`` on a read-only scheduler looks at storage again."""


class RunOps(Lifecycle):
    """Reads, waits for and cancels runs."""

    async def get_run(self, run_id: str) -> Run | None:
        """The run with that id (unfinished or retained), or None."""
        record = self._core.records.get(run_id)
        if record is not None and self._shared is None:
            return record.snapshot()
        await self._fresh()
        stored = await self._backend.get_run(run_id)
        if record is not None:  # executed here: joins decided in the database count too
            return _joined(record.snapshot(), stored)
        return stored

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
        if self._shared is None:
            return [live[r.id].snapshot() if r.id in live else r for r in runs]
        return [_joined(live[r.id].snapshot(), r) if r.id in live else r for r in runs]

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
            if self._read_only or self._shared is not None:  # it executes elsewhere
                return await self._poll_until_terminal(run_id, timeout)
            try:
                async with asyncio.timeout(timeout):
                    run = await self._finished_run(run_id)
            except TimeoutError:
                raise WaitTimeoutError(f"run {run_id} did not finish within {timeout}s") from None
            if run is not None:
                return run
        return await self._await_end(run_id, self._core.waiters.run_waiter(run_id), timeout)

    async def _await_end(
        self, run_id: str, waiter: asyncio.Future[Run], timeout: float | None
    ) -> Run:
        """The run ``waiter`` resolves with; the waiter is dropped however this ends.

        Raises:
            WaitTimeoutError: it did not finish within ``timeout`` seconds.
        """
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise WaitTimeoutError(f"run {run_id} did not finish within {timeout}s") from None
        finally:
            self._core.waiters.forget_waiter(run_id, waiter)

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
                    if self._shared is not None:
                        await self._shared.wait_change(READ_ONLY_POLL_SECONDS)
                    else:
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
        if record is None and self._shared is not None:
            return await self._cancel_shared(run_id, self._shared)
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

    async def _cancel_shared(self, run_id: str, shared: SharedService) -> Run:
        """Cancel a run this process does not execute: in the database, or by asking."""
        outcome = await shared.coordinator.cancel_run(run_id, shared.limit_of, self._clock.now())
        if outcome == "cancelled":  # by this process: its counter, as for a run it holds
            self._core.counters.cancelled += 1
        if outcome == "requested":
            with contextlib.suppress(WaitTimeoutError):
                return await self._poll_until_terminal(run_id, self._pool.cancel_grace + 1.0)
        run = await self._backend.get_run(run_id)
        if run is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        return run


def _joined(local: Run, stored: Run | None) -> Run:
    """A run this process holds, with the triggers that joined it in storage meanwhile.

    On shared storage a trigger (of this process or another) joins a run in the
    database, not in the executing process's record; the worker's writes keep those
    joins (they merge them), and so do the reads.
    """
    if stored is None or stored.trigger_count < local.trigger_count:
        return local
    return replace(local, trigger_count=stored.trigger_count, coalesced=stored.coalesced)


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
