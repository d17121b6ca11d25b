"""Leases in the shared database: write back fenced, renew, reclaim.

A process executes a run only under a lease: ``lease_owner`` (the process),
``lease_until`` (the database's clock) and ``generation``, taken by a claim
(:mod:`keyflow.shared.claiming`), which also starts the run. Every later write by the
worker is fenced: ``WHERE generation = $g AND lease_owner = $me``;
a worker whose lease expired and was reclaimed (it was paused, cut off, too slow to
renew) changes nothing, and its late writes are logged and dropped. Expired leases are
reclaimed by any process: the run goes back to the head of its lane as a new attempt,
counted as a crash (a poison pill fails after :data:`~keyflow.recovery.MAX_CRASHES`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

import asyncpg

from ..errors import StorageError
from ..records import RunRecord
from ..recovery import count_crash
from ..runs import LogEntry, RunStatus
from ..state import CANCEL, FAIL, INTERRUPT, PENDING, RUNNING
from ..storage_backends.base import WriteBatch
from ..storage_backends.postgres import row_columns
from . import sql
from .claiming import Claiming
from .database import RETRIED, TRIES, Notice, update_params
from .deciding import LimitOf, note_change

logger = logging.getLogger("keyflow.shared")

RECLAIM_BATCH = 100
RELEASED_KEPT = 10_000


class Leasing(Claiming):
    """Fenced writes, renewals and reclaims of leases (see the module)."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        place: str,
        *,
        connect_timeout: float = 10.0,
        pool_size: int = 10,
        lease_seconds: float = 30.0,
    ) -> None:
        super().__init__(
            dsn,
            schema,
            place,
            connect_timeout=connect_timeout,
            pool_size=pool_size,
            lease_seconds=lease_seconds,
        )
        self.released: OrderedDict[str, None] = OrderedDict()
        """Runs whose lease this process gave up lately (their ends are its own news)."""
        self.lost: OrderedDict[str, None] = OrderedDict()
        """Runs whose lease this process lost lately (their writes are dropped quietly)."""
        self.on_lost: list[Callable[[list[str]], None]] = []
        """Called with the runs whose lease was found lost."""
        self.renewed_at = 0.0
        """The event loop's time of the last renewal that reached the database."""
        self.held: set[str] = set()
        """Runs handed back by a stop whose handlers still execute here: their leases are
        kept (and renewed) until the handlers end (see :meth:`let_go`)."""
        self._saving: set[str] = set()
        """Runs whose write is in flight (a renewal that misses one has not lost it)."""
        self._letting_go: set[str] = set()
        """Runs :meth:`let_go` hands back: their write gives the lease up, whatever
        their status (a retry's backoff too)."""

    async def save(self, batch: WriteBatch, limit_of: LimitOf) -> list[str]:
        """Write what this process's workers changed, fenced by their leases.

        Returns the ids of runs whose lease was lost (their changes were dropped).

        Raises:
            StorageError: the database failed; nothing was stored.
        """
        runs: dict[str, RunRecord] = {}
        live: dict[str, RunRecord] = {}
        fresh = self._fresh
        for record in batch.runs:
            run_id = record.id
            if run_id not in self.leases:
                # Ended (a batch written earlier took its last change: the records are
                # live), or known lost: nothing of it is this process's to write.
                if run_id not in self.released and run_id not in self.lost:
                    self._lose([run_id])
                continue
            claimed = fresh.pop(run_id, None)
            if claimed is not None:
                record.started_at = claimed  # the start the database saw
                if record.status is RUNNING and self.stored.get(run_id) == row_data(record):
                    continue  # and wrote (a log line or progress since is written)
            # As it is now: what a handler changes during the awaits below goes in the
            # next batch (a status and its lease's fate must agree).
            runs[run_id] = record.copy()
            live[run_id] = record
        if not runs:
            return []
        saving = list(runs)
        self._saving.update(saving)
        try:
            for run_id in await self._save_quick(runs):
                del runs[run_id]
            for attempt in range(TRIES):
                if not runs:
                    return []
                try:
                    return await self._save(runs, live, limit_of)
                except RETRIED:
                    if attempt == TRIES - 1:
                        raise StorageError(f"writes to {self.place} kept conflicting") from None
            return []
        finally:
            self._saving.difference_update(saving)

    async def _save_quick(self, runs: dict[str, RunRecord]) -> list[str]:
        """Write in one statement the runs whose write can change nothing else.

        Those are keyless runs, and runs the worker keeps (no slot of a lane frees up).
        Returns those written; a run changed elsewhere since this process's last write is
        left for :meth:`_save`, which merges under the lane's lock (and finds lost leases).
        """
        rows: list[tuple[object, ...]] = []
        written: dict[str, tuple[str, bool]] = {}
        notice = Notice()
        for run_id, record in runs.items():
            old = self.stored.get(run_id)
            keep = self._keeps(run_id, record)
            if old is None or not (keep or record.key is None):
                continue
            params = update_params(record)
            rows.append((*params, keep, self.leases[run_id], old))
            written[run_id] = (params[3], keep)
            notice.changed.append(run_id)
            if not keep and record.status is PENDING:
                notice.work = True
        if not rows:
            return []
        columns = [list(column) for column in zip(*rows, strict=True)]
        saved = [
            row[0]
            for row in await self.fetch(
                sql.SAVE_QUICK, *columns, self.owner, self.channel, self.payload(notice) or ""
            )
        ]
        for run_id in saved:
            self._wrote(run_id, *written[run_id])
        return saved

    def _wrote(self, run_id: str, data: str, keep: bool) -> None:
        """``data`` is stored: this process holds the run's lease still, or gave it up."""
        if keep:
            self.stored[run_id] = data
        else:
            self._forget(run_id)
            self.released[run_id] = None
            while len(self.released) > RELEASED_KEPT:
                self.released.popitem(last=False)

    def _keeps(self, run_id: str, record: RunRecord) -> bool:
        """Does this process keep the run's lease after writing ``record``?"""
        if run_id in self._letting_go:
            return False
        return _keeps(record) or run_id in self.held

    async def _save(
        self, runs: dict[str, RunRecord], live: dict[str, RunRecord], limit_of: LimitOf
    ) -> list[str]:
        lost: list[str] = []
        overruled: list[str] = []
        written: dict[str, tuple[str, bool]] = {}
        ending = {r.key for i, r in runs.items() if r.key is not None and not self._keeps(i, r)}
        notice = Notice()
        async with self.transaction("writing runs", notice) as conn:
            await self.lock_lanes(conn, ending)
            for run_id, data, generation, owner, _key in await conn.fetch(
                sql.RUNS_BY_ID, list(runs)
            ):
                record = runs[run_id]
                held = self.leases.get(run_id)
                stored = self.decode(data)
                if held is None or held != generation or owner != self.owner:
                    if _overruled(stored, owner, generation, held):
                        overruled.append(run_id)
                    else:
                        lost.append(run_id)
                    continue
                _merge_triggers(record, stored)
                _merge_triggers(live[run_id], stored)  # (the next writes keep them)
                keep = self._keeps(run_id, record)
                params = update_params(record)
                status = await conn.execute(sql.SAVE_LEASED, *params, keep, generation, self.owner)
                if status.endswith(" 0"):
                    lost.append(run_id)
                    continue
                written[run_id] = (params[3], keep)
                notice.changed.append(run_id)
                if not keep and record.status is PENDING:
                    notice.work = True
            await self.promote_lanes(conn, ending, limit_of, notice)
        for run_id, (text, keep) in written.items():  # committed
            self._wrote(run_id, text, keep)
        self._lose(lost)
        self._overrule(overruled)
        return lost

    def _overrule(self, run_ids: list[str]) -> None:
        """Drop, quietly, runs another process finished and took the leases of.

        That is a trigger's ``"cancel"`` of a run in a retry's backoff (its lease is kept
        between attempts).
        """
        if not run_ids:
            return
        for run_id in run_ids:
            self._wrote(run_id, "", keep=False)
            logger.info("run %s was cancelled by another process; dropped here", run_id)
        for callback in list(self.on_lost):
            callback(run_ids)

    async def let_go(self, records: list[RunRecord], limit_of: LimitOf) -> None:
        """The handlers of these held runs ended: hand the runs back to the others.

        Raises:
            StorageError: the database failed (their leases then expire on their own).
        """
        ids = {record.id for record in records}
        self.held.difference_update(ids)
        self._letting_go.update(ids)
        try:
            await self.save(WriteBatch(runs=records), limit_of)
        finally:
            self._letting_go.difference_update(ids)

    def abandon(self) -> list[str]:
        """Give up every lease (renewals failed past the deadline: others take the runs).

        Returns the runs given up; their handlers are stopped (:attr:`on_lost`).
        """
        given_up = list(self.leases)
        self._lose(given_up)
        return given_up

    def _lose(self, run_ids: list[str]) -> None:
        """These runs' leases are gone: forget them, log it once, tell the callbacks."""
        if not run_ids:
            return
        for run_id in run_ids:
            self._forget(run_id)
            self.lost[run_id] = None
            logger.error(
                "run %s: this process lost its lease (it expired and the run was reclaimed "
                "elsewhere); its late writes are refused and its handler is stopped",
                run_id,
            )
        while len(self.lost) > RELEASED_KEPT:
            self.lost.popitem(last=False)
        for callback in list(self.on_lost):
            callback(run_ids)

    async def renew(self) -> list[str]:
        """Extend every lease this process holds; return the runs asked to cancel.

        Runs whose lease was lost are handed to :attr:`on_lost`. A cancel is asked of a
        run by a notice; this answer is the safety net for a notice that was missed.

        Raises:
            StorageError: the database failed (the leases run on until they expire).
        """
        if not self.leases:
            self.renewed_at = asyncio.get_running_loop().time()
            return []
        ids = list(self.leases)
        generations = [self.leases[run_id] for run_id in ids]
        rows = await self.fetch(sql.RENEW, self.owner, ids, generations, self.lease_seconds)
        self.renewed_at = asyncio.get_running_loop().time()
        kept = {row[0] for row in rows}
        gone = [
            run_id
            for run_id, generation in zip(ids, generations, strict=True)
            if run_id not in kept
            and run_id not in self._saving
            and self.leases.get(run_id) == generation
        ]
        if gone:
            overruled = [
                run_id
                for run_id, data, generation, owner, _key in await self.fetch(sql.RUNS_NOW, gone)
                if _overruled(self.decode(data), owner, generation, self.leases.get(run_id))
            ]
            self._overrule([run_id for run_id in overruled if run_id in self.leases])
            self._lose([run_id for run_id in gone if run_id in self.leases])
        return [row[0] for row in rows if row[1]]

    async def reclaim(self, limit_of: LimitOf, now: float) -> int:
        """Take back expired leases (see the module); return how many runs came back.

        Raises:
            StorageError: the database failed; nothing changed.
        """
        total = 0
        while True:
            rows = await self.fetch(sql.EXPIRED, RECLAIM_BATCH)
            if not rows:
                return total
            try:
                total += await self._reclaim(rows, limit_of, now)
            except RETRIED:
                continue
            if len(rows) < RECLAIM_BATCH:
                return total

    async def _reclaim(self, rows: list[asyncpg.Record], limit_of: LimitOf, now: float) -> int:
        keys = {key for _id, key in rows if key is not None}
        notice = Notice(work=True)
        released: list[RunRecord] = []
        async with self.transaction("a reclaim", notice) as conn:
            await self.lock_lanes(conn, keys)
            for _id, data, _generation, _owner, _key in await conn.fetch(
                sql.EXPIRED_LOCKED, [run_id for run_id, _key in rows]
            ):
                record = self.decode(data)
                _reclaimed(record, now)
                released.append(record)
                note_change(notice, record)
            for record in released:
                await conn.execute(sql.RELEASE, *update_params(record))
            ended = {r.key for r in released if r.key is not None and r.status.is_terminal}
            await self.promote_lanes(conn, ended, limit_of, notice)
        return len(released)


def _keeps(record: RunRecord) -> bool:
    """Does the worker keep its lease after this write (the run is still its own)?"""
    status = record.status
    if status.is_terminal:
        return False
    return not (status is PENDING and record.stop_interrupted)


def _merge_triggers(record: RunRecord, stored: RunRecord) -> None:
    """Triggers elsewhere may have joined ``record`` or asked to cancel it: keep that."""
    record.trigger_count = max(record.trigger_count, stored.trigger_count)
    if stored.coalesced:
        record.coalesced = stored.coalesced
    if record.attempt == 0:
        record.input = stored.input
    if stored.cancel_requested:
        record.cancel_requested = True


def _reclaimed(record: RunRecord, now: float) -> None:
    status: RunStatus = record.status
    if status is not RUNNING:
        return  # pending or in a retry backoff: only the lease goes
    record.interruptions += 1
    if record.cancel_requested:
        record.apply(CANCEL)  # it was asked to cancel: it is not run again
        record.finished_at = now
        return
    cause = "its process died or stalled (its lease expired)"
    if count_crash(record, now, cause):
        record.apply(FAIL)
        record.finished_at = now
        return
    record.apply(INTERRUPT)
    record.add_log(
        LogEntry(
            now,
            "warning",
            f"its process died or stalled (lease expired; crash {record.crashes}): it runs "
            "again, as a new attempt",
            {},
            record.attempt,
        )
    )


def row_data(record: RunRecord) -> str:
    """``record``'s stored text, as this process would write it now."""
    return str(row_columns(record)["data"])


def _overruled(stored: RunRecord, owner: str | None, generation: int, held: int | None) -> bool:
    """Did another process finish this run and take its lease back, and nothing else?

    Such a decision (:meth:`Deciding.trigger`) moves the generation on by one; a reclaim
    followed by a claim elsewhere moves it on by two or more (the lease was lost).
    """
    return (
        owner is None and stored.status.is_terminal and held is not None and generation == held + 1
    )
