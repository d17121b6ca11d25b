"""Group commit: ordered, batched writes with rollback of unacknowledged triggers.

Two kinds of change reach storage:

* a **trigger transaction** (:class:`Txn`): created/joined runs, made visible in memory at
  once so later decisions see them, but acknowledged to the caller only once durable.
  If its write fails, it is rolled back in memory and the caller gets StorageError;
* an **execution change** (a run started, finished, reported progress): never rolled
  back; if its write fails it is retried, in order, until it succeeds.

Changes that arrive while a write is in flight go into the next single batch, so many
concurrent triggers share one transaction/fsync. When the backend never suspends (the
memory backend) the first trigger writes inline and no task is spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import StorageError
from .storage_backends.base import StorageBackend, WriteBatch

if TYPE_CHECKING:
    from .records import RunRecord
    from .runs import CoalescedTrigger, JSONObject, TriggerResult

logger = logging.getLogger("keyflow.commit")

RETRY_DELAYS = (0.01, 0.05, 0.2, 1.0, 5.0)
"""Seconds between retries of a failed write of execution changes."""


@dataclass(slots=True)
class Join:
    """A trigger joined ``run``; what to restore if it is rolled back."""

    run: RunRecord
    old_input: JSONObject
    old_trigger_count: int
    old_due_at: float
    old_coalesced: tuple[CoalescedTrigger, ...]
    entry: CoalescedTrigger


@dataclass(slots=True)
class Txn:
    """The in-memory effects of one trigger (or one batch_trigger), pending durability."""

    created: list[RunRecord] = field(default_factory=list)
    joined: list[Join] = field(default_factory=list)
    idempotency: list[tuple[str, str, RunRecord]] = field(default_factory=list)
    victims: list[RunRecord] = field(default_factory=list)
    """Runs to cancel once the transaction is durable (``coalesce="cancel"``)."""
    results: list[TriggerResult] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    records: dict[str, RunRecord] = field(default_factory=dict)
    txns: list[Txn] = field(default_factory=list)
    future: asyncio.Future[None] | None = None

    def waiter(self) -> asyncio.Future[None]:
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
            # A waiter that was cancelled must not leave an unretrieved exception behind.
            self.future.add_done_callback(_consume)
        return self.future


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class CommitPipeline:
    """Writes changes to a backend in ordered batches.

    Args:
        backend: where to write.
        settle: called with each transaction once it is durable.
        roll_back: called with each transaction whose write failed, newest first.
    """

    def __init__(
        self,
        backend: StorageBackend,
        *,
        settle: Callable[[Txn], None],
        roll_back: Callable[[Txn], None],
    ) -> None:
        self._backend = backend
        self._inline = not backend.durable
        self._settle = settle
        self._roll_back = roll_back
        self._open = _Batch()
        self._inflight: _Batch | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._failures = 0
        self.last_error: Exception | None = None
        """The latest write failure, for statistics."""
        self.batches_written = 0
        """How many batches were written."""

    @property
    def idle(self) -> bool:
        """True when nothing waits to be written."""
        return self._inflight is None and not self._open.records and not self._open.txns

    def touch(self, record: RunRecord) -> None:
        """Queue an execution change of ``record`` for the next batch."""
        self._open.records[record.id] = record
        if self._flush_task is None and self._inflight is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def commit(self, txn: Txn, records: list[RunRecord]) -> None:
        """Write ``txn`` (whose changed runs are ``records``); return once durable.

        Raises:
            StorageError: the write failed; ``txn`` (and every transaction not yet
                durable) was rolled back.
        """
        batch = self._open
        batch.txns.append(txn)
        for record in records:
            batch.records[record.id] = record
        if self._inline and self._inflight is None:
            # The backend never suspends: write right here, no task, no future.
            await self._write_open_batch()
            return
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        # shield: a cancelled caller must not cancel the batch its neighbours wait on.
        await asyncio.shield(batch.waiter())

    async def flush(self) -> None:
        """Return once every change queued so far is durable.

        While writes keep failing this keeps waiting; bound it with a timeout.
        """
        while not self.idle:
            target = self._inflight or self._open
            if self._flush_task is None and self._inflight is None:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
            with contextlib.suppress(StorageError):
                await asyncio.shield(target.waiter())

    async def barrier(self) -> None:
        """Wait until the batch open or in flight now is written (or has failed)."""
        open_batch = self._open
        target = open_batch if (open_batch.records or open_batch.txns) else self._inflight
        if target is None:
            return
        if self._flush_task is None and self._inflight is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        with contextlib.suppress(StorageError):
            await asyncio.shield(target.waiter())

    async def _flush_loop(self) -> None:
        try:
            while self._open.records or self._open.txns:
                try:
                    await self._write_open_batch()
                except StorageError:
                    # Execution changes were put back; wait before trying again.
                    delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS)) - 1]
                    await asyncio.sleep(delay)
        finally:
            self._flush_task = None

    async def _write_open_batch(self) -> None:
        batch = self._open
        self._open = _Batch()
        self._inflight = batch
        write = WriteBatch(runs=list(batch.records.values()))
        for txn in batch.txns:
            write.idempotency.extend((job, key, rec.id) for job, key, rec in txn.idempotency)
        try:
            await self._backend.write(write)
        except Exception as exc:
            self._inflight = None
            error = self._fail(batch, exc)
            raise error from exc
        self._inflight = None
        self._failures = 0
        self.batches_written += 1
        for txn in batch.txns:
            self._settle(txn)
        if batch.future is not None and not batch.future.done():
            batch.future.set_result(None)

    def _fail(self, batch: _Batch, exc: Exception) -> StorageError:
        self._failures += 1
        self.last_error = exc
        logger.error("storage write failed (%d in a row): %r", self._failures, exc)
        error = (
            exc if isinstance(exc, StorageError) else StorageError(f"storage write failed: {exc!r}")
        )
        # Everything not yet durable is undone, newest first: later transactions may
        # depend on runs the failed batch created.
        pending = self._open
        rolled_back: set[str] = set()
        for txn in reversed(batch.txns + pending.txns):
            self._roll_back(txn)
            rolled_back.update(r.id for r in txn.created)
        for waiting in (batch, pending):
            if waiting.future is not None and not waiting.future.done():
                waiting.future.set_exception(error)
        # Execution changes are kept and retried, in order, in the next batch.
        retry = _Batch()
        for record in (*batch.records.values(), *pending.records.values()):
            if record.id not in rolled_back:
                retry.records[record.id] = record
        self._open = retry
        return error
