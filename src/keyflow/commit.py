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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .commit_batch import CommitBatch
from .errors import StorageError, TriggerError
from .jsonvalue import safe_repr
from .storage_backends.base import Refusals, StorageBackend, WriteBatch
from .txn import Txn

if TYPE_CHECKING:
    from .records import RunRecord

logger = logging.getLogger("keyflow.commit")

RETRY_DELAYS = (0.01, 0.05, 0.2, 1.0, 5.0)
"""Seconds between retries of a failed write of execution changes."""


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
        self._synchronous = backend.synchronous
        self._shares_records = backend.shares_records
        self._settle = settle
        self._roll_back = roll_back
        self._open = CommitBatch()
        self._inflight: CommitBatch | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._closed = False
        self._failures = 0
        self._retry_wake: asyncio.Future[None] | None = None
        self.last_error: Exception | None = None
        """The write failure storage is in, if any (None once a write succeeds again)."""
        self.batches_written = 0
        """How many batches were written."""

    @property
    def settles_joins_now(self) -> bool:
        """True when a join needs no write and nothing is pending: it is durable at once."""
        return (
            self._shares_records
            and self._synchronous
            and self._inflight is None
            and not self._failures
            and not self._open.txns
        )

    @property
    def idle(self) -> bool:
        """True when nothing waits to be written."""
        open_batch = self._open
        return (
            self._inflight is None
            and not open_batch.records
            and not open_batch.txns
            and not open_batch.pauses
        )

    def close(self) -> None:
        """Write nothing more: storage is closing (what comes later is dropped)."""
        self._closed = True
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        if self._flush_task is not None and self._inflight is None:
            self._flush_task.cancel()  # between writes: a retry pause, or about to write

    def set_pause(self, kind: str, name: str, paused: bool) -> None:
        """Queue a pause (or resume) for the next batch.

        Kept and retried like execution changes; :meth:`flush` waits for it.
        """
        if self._closed:
            return
        self._open.pauses[kind, name] = paused
        self._start_flushing()

    def touch(self, record: RunRecord) -> None:
        """Queue an execution change of ``record`` for the next batch."""
        if self._closed:  # e.g. a handler a stop gave up on, logging after the stop
            return
        self._open.records[record.id] = record
        self._start_flushing()

    def _start_flushing(self) -> None:
        if self._flush_task is None and self._flush_soon is None and self._inflight is None:
            loop = asyncio.get_running_loop()
            if self._synchronous:
                self._flush_soon = loop.call_soon(self._flush_now)
            else:
                self._flush_task = loop.create_task(self._flush_loop())

    def commit_now(self, txn: Txn, records: list[RunRecord]) -> bool:
        """Write ``txn`` without suspending, if the backend allows; False if it does not.

        Raises:
            StorageError: the write failed; ``txn`` (and every transaction not yet
                durable) was rolled back.
        """
        if not self._synchronous or self._inflight is not None or self._failures:
            return False
        batch = self._open
        if not batch.records and not batch.txns and not batch.pauses:
            if self._shares_records and not txn.created and not txn.idempotency:
                # The backend holds these very records: a join has nothing to write.
                self._settle(txn)
                return True
            self._write_alone(txn, records)
        else:
            batch.txns.append(txn)
            for record in records:
                batch.records[record.id] = record
            self._write_sync()
        if txn.error is not None:
            raise txn.error
        return True

    async def commit(self, txn: Txn, records: list[RunRecord]) -> None:
        """Write ``txn`` (whose changed runs are ``records``); return once durable.

        Raises:
            StorageError: the write failed; ``txn`` (and every transaction not yet
                durable) was rolled back.
        """
        if self.commit_now(txn, records):
            return
        batch = self._open
        batch.txns.append(txn)
        for record in records:
            batch.records[record.id] = record
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        else:
            self._wake_retry()  # a trigger does not wait out the retry pause: it fails fast
        await batch.waiter()
        if txn.error is not None:
            raise txn.error

    async def until_written(self, record: RunRecord) -> None:
        """Return once the latest change of ``record`` is durable.

        A failed write is retried (see :data:`RETRY_DELAYS`), so this keeps waiting
        while storage fails; the caller may be cancelled meanwhile.
        """
        while not self._closed:
            inflight = self._inflight
            if record.id in self._open.records:
                target = self._open
                if self._flush_task is None and inflight is None:
                    self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
            elif inflight is not None and record.id in inflight.records:
                target = inflight
            else:
                return
            with contextlib.suppress(StorageError):
                await target.waiter()

    async def flush(self, *, give_up: bool = False) -> None:
        """Return once every change queued so far is durable.

        While writes keep failing this keeps waiting (bound it with a timeout); with
        ``give_up``, the first failed write raises its ``StorageError`` instead.
        """
        ignored = () if give_up else (StorageError,)
        while not self.idle and not self._closed:
            target = self._inflight or self._open
            if self._flush_task is None and self._inflight is None:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
            with contextlib.suppress(*ignored):
                await target.waiter()

    async def barrier(self) -> None:
        """Wait until the batch open or in flight now is written (or has failed)."""
        if self._closed:
            return
        open_batch = self._open
        has_changes = open_batch.records or open_batch.txns or open_batch.pauses
        target = open_batch if has_changes else self._inflight
        if target is None:
            return
        if self._flush_task is None and self._inflight is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        with contextlib.suppress(StorageError):
            await target.waiter()

    def _flush_now(self) -> None:
        self._flush_soon = None
        if self._inflight is not None or self._flush_task is not None:
            return
        try:
            self._write_sync()
        except StorageError:
            # Execution changes were put back; the task retries them after a pause.
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        try:
            fresh = True  # (a new task starts a turn of the loop after it was made)
            while (self._open.records or self._open.txns or self._open.pauses) and not self._closed:
                if self._failures and not self._open.txns:
                    # Execution changes were put back; wait before trying again. A
                    # trigger never waits out the pause (it cuts one short, too): it
                    # should fail, or pass, at once.
                    await self._pause(RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS)) - 1])
                elif not fresh and not self._open.txns:
                    # Execution changes only, right after a write: what that write woke
                    # (workers starting the runs it promoted, handlers done at once, the
                    # next trigger) joins them if it gets a turn of the loop first.
                    fresh = True
                    await asyncio.sleep(0)
                    continue
                with contextlib.suppress(StorageError):
                    await self._write_open_batch()
                fresh = False
        finally:
            self._flush_task = None

    async def _pause(self, seconds: float) -> None:
        wake = self._retry_wake = asyncio.get_running_loop().create_future()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake, seconds)
        finally:
            self._retry_wake = None

    def _wake_retry(self) -> None:
        wake = self._retry_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _seal(self) -> tuple[CommitBatch, WriteBatch]:
        batch = self._open
        self._open = CommitBatch()
        self._inflight = batch
        write = WriteBatch(list(batch.records.values()))
        if batch.pauses:
            write.pauses = [(kind, name, on) for (kind, name), on in batch.pauses.items()]
        for txn in batch.txns:
            if txn.error is not None:
                continue  # failed before its write (it joined a run storage refused)
            write.idempotency.extend((job, key, rec.id) for job, key, rec in txn.idempotency)
            if len(txn.created) + len(txn.joined) > 1:
                write.groups.append(tuple(txn.leant_on()))
        return batch, write

    def write_new_failed(self, exc: Exception) -> StorageError:
        """The fast path's synchronous write of a new run failed (see Core.trigger_now).

        Counts and logs the failure like any other; returns the error to raise.
        """
        return self._fail(CommitBatch(), exc)

    def _write_alone(self, txn: Txn, records: list[RunRecord]) -> None:
        # One transaction and nothing else pending: skip the batch bookkeeping.
        idempotency = txn.idempotency
        write = WriteBatch(
            records, [(j, k, r.id) for j, k, r in idempotency] if idempotency else []
        )
        try:
            refused = _refusals(self._backend.write_sync(write))
        except Exception as exc:
            batch = CommitBatch()
            batch.txns.append(txn)
            for record in records:
                batch.records[record.id] = record
            raise self._fail(batch, exc) from exc
        self._recovered()
        self.batches_written += 1
        if refused:
            batch = CommitBatch()
            batch.txns.append(txn)
            self._refused(batch, refused)
        if txn.error is None:
            self._settle(txn)

    def _write_sync(self) -> None:
        batch, write = self._seal()
        try:
            refused = _refusals(self._backend.write_sync(write))
        except Exception as exc:
            self._inflight = None
            raise self._fail(batch, exc) from exc
        self._written(batch, refused)

    async def _write_open_batch(self) -> None:
        batch, write = self._seal()
        try:
            refused = _refusals(await self._backend.write(write))
        except Exception as exc:
            self._inflight = None
            raise self._fail(batch, exc) from exc
        self._written(batch, refused)

    def _recovered(self) -> None:
        if self._failures:
            logger.warning("storage writes succeed again after %d failures", self._failures)
            self._failures = 0
            self.last_error = None

    def _written(self, batch: CommitBatch, refused: Refusals | None = None) -> None:
        self._inflight = None
        self.batches_written += 1
        if not (refused and self._refused(batch, refused)):
            self._recovered()  # (a refused execution change is not a recovery)
        for txn in batch.txns:
            if txn.error is not None:
                continue  # refused and rolled back: its caller hears why
            try:
                self._settle(txn)
            except Exception:  # a bug: the batch is durable, its waiters must hear so
                logger.exception("keyflow failed to settle a durable transaction")
        batch.tell(None)

    def _refused(self, batch: CommitBatch, refused: Refusals) -> bool:
        """Storage stored ``batch`` but the runs in ``refused``: undo what needs them.

        A transaction fails, and is rolled back and told why, when it made or joined a
        refused run; its own new runs then count as refused for the transactions after
        it (in this batch or the next) that joined them. (A backend refuses the runs
        of one transaction together: ``WriteBatch.groups``.) The others stand. A
        refused execution change is written again, after the retry pause of a failed
        write.
        """
        dead: dict[str, Exception] = dict(refused)
        failed: list[Txn] = []
        # In decision order, this batch's and then those decided since (the open
        # batch): a later transaction may have joined a run an earlier one made.
        for txn in (*batch.txns, *self._open.txns):
            if txn.error is not None:
                continue  # failed (and rolled back) already
            reason = next((run_id for run_id in txn.leant_on() if run_id in dead), None)
            if reason is None:
                continue
            cause = dead[reason]
            logger.warning("storage refused run %s: %r", reason, cause)
            error = (  # a value storage can never hold is the trigger's own error
                cause
                if isinstance(cause, TriggerError)
                else StorageError(f"storage refused run {reason}: {cause}")
            )
            txn.error = error
            failed.append(txn)
            for record in txn.created:
                dead.setdefault(record.id, error)
        rolled_back: set[str] = set()
        for txn in reversed(failed):
            self._roll_back(txn)
            rolled_back.update(r.id for r in txn.created)
        for run_id in rolled_back:
            self._open.records.pop(run_id, None)  # never to be written
        retried = [
            kept
            for run_id in refused
            if (kept := batch.records.get(run_id)) is not None and run_id not in rolled_back
        ]
        if not retried:
            return False
        # Storage keeps refusing an execution change: pause like after a failed write,
        # so a backend that always refuses cannot spin the loop.
        error = StorageError(f"storage refused run {retried[0].id}: {refused[retried[0].id]}")
        self._failures += 1
        self.last_error = error
        logger.error("storage refused %d execution change(s): %r", len(retried), error)
        for record in retried:
            self._open.records.setdefault(record.id, record)
        if self._flush_task is None and not self._closed:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        return True

    def _fail(self, batch: CommitBatch, exc: Exception) -> StorageError:
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
            if txn.error is None:  # (one storage refused is rolled back already)
                self._roll_back(txn)
                rolled_back.update(r.id for r in txn.created)
        for waiting in (batch, pending):
            waiting.tell(error)
        # Execution changes are kept and retried, in order, in the next batch.
        retry = CommitBatch()
        for record in (*batch.records.values(), *pending.records.values()):
            if record.id not in rolled_back:
                retry.records[record.id] = record
        retry.pauses = {**batch.pauses, **pending.pauses}
        self._open = retry
        return error


def _refusals(result: object) -> Refusals | None:
    """What a backend's ``write`` returned, checked: None or a mapping of refused runs.

    Raises:
        StorageError: anything else (a backend bug): the write counts as failed, so its
            triggers are rolled back and its execution changes written again.
    """
    if result is None or isinstance(result, Mapping):
        return result
    raise StorageError(
        f"storage backend's write() returned {safe_repr(result)[:80]}; it must return None "
        "or a mapping of refused run ids"
    )
