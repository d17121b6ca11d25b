"""Claims in the shared database: lease and start pending runs, find lost claims.

A claim is one statement, committed on its own (:data:`~keyflow.shared.sql.CLAIM`): it
leases pending runs and starts them, so a run's start is durable before its handler's
first line, and a claim that finds nothing costs one round trip. A claimed run this
process must not run now (a crash suspect beyond its share, a run asked to cancel) is
given back unstarted.

A process can hold a lease it does not know of: a statement's reply lost with its
connection after the commit. :meth:`Claiming.find_orphans` finds such runs (seen twice,
a sweep apart) and gives them back, unstarted: no false crash is counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection

from ..errors import StorageError
from ..records import RunRecord
from ..runs import LogEntry
from ..state import INTERRUPT, PENDING, RUNNING
from ..storage_backends.rows import START_PREFIX
from . import sql
from .database import RETRIED, TRIES, Notice, update_params
from .deciding import Deciding, LimitOf, note_change

logger = logging.getLogger("keyflow.shared")


class Claiming(Deciding):
    """Leases this process holds, and the claims that take them (see the module)."""

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
        super().__init__(dsn, schema, place, connect_timeout=connect_timeout, pool_size=pool_size)
        self.lease_seconds = lease_seconds
        """How long a lease lasts without renewal (heartbeats renew it every third)."""
        self.leases: dict[str, int] = {}
        """Runs this process leases: id → the lease's generation."""
        self.stored: dict[str, str] = {}
        """Leased runs' data as this process last wrote it (a write that finds it
        unchanged needs no lock: nobody else changed the run)."""
        self._fresh: dict[str, float] = {}
        """Leased runs whose start the claim wrote, with its time: their first running
        write is skipped, and the start is the claim's (when the database saw it)."""
        self._suspected: set[tuple[str, int]] = set()
        """Leases of this process it did not know of at the last sweep."""

    async def claim(
        self,
        jobs: Collection[str],
        limit: int,
        clock: Callable[[], float],
        limit_of: LimitOf,
        *,
        suspects: int = 1,
    ) -> list[RunRecord]:
        """Lease and start up to ``limit`` pending runs of ``jobs``; oldest first.

        At most ``suspects`` of them may be runs a crash cut short before: such runs
        execute one at a time (a run that kills its process must not take others down
        with it), so one is taken only when this process runs none. Others are given
        back unstarted, and a run asked to cancel is cancelled, unrun.

        Returns each run as it was before its start (the caller's core starts it again,
        in memory: the same attempt, already durable).

        Raises:
            StorageError: the database failed; nothing was started (or, if the reply
                was lost after the commit, :meth:`find_orphans` gives the runs back).
        """
        if limit <= 0 or not jobs:
            return []
        now = clock()  # the runs' start
        rows = await self.fetch(
            sql.CLAIM,
            list(jobs),
            limit,
            self.owner,
            self.lease_seconds,
            now,
            json.dumps(now),
            self.channel,
            self.watched,
            START_PREFIX,
        )
        rows.sort(key=lambda row: row[4])  # RETURNING keeps no order: oldest first
        claimed: list[RunRecord] = []
        unstarted: list[tuple[RunRecord, int, str]] = []
        back: dict[str, RunRecord] = {}
        cancels: list[str] = []
        for run_id, before, data, generation, _seq, started in rows:
            record = self.decode(before)
            self.leases[run_id] = generation
            self.stored[run_id] = data
            if started:
                self._fresh[run_id] = now
            if record.cancel_requested:  # asked while a lease, since given back, held it
                back[run_id] = record
                cancels.append(run_id)
            elif record.crashes > 0 and suspects <= 0:
                back[run_id] = record
            else:
                suspects -= record.crashes > 0
                if started:
                    claimed.append(record)
                else:
                    unstarted.append((record, generation, data))
        try:
            for record, generation, data in unstarted:
                if await self._start(record, generation, data, now):
                    claimed.append(record)
                else:
                    back[record.id] = record
            if back:
                await self._give_back_claimed(back)
                await self._cancel_unrun(cancels, limit_of, now)
        except StorageError as exc:  # the runs started are ours all the same
            logger.warning("giving back claimed runs failed (%s); a sweep will", exc)
            for run_id in back:
                self._forget(run_id)  # (find_orphans gives them back)
        return claimed

    async def _start(self, record: RunRecord, generation: int, old: str, now: float) -> bool:
        """Start a leased run the claim could not, unless it changed since.

        The claim starts runs by their stored text's prefix; one stored otherwise (by
        an older keyflow) comes here. True if started.
        """
        started = self.decode(old)
        started.begin_attempt(now)
        params = update_params(started)
        rows = await self.fetch(
            sql.START, record.id, params[3], now, started.attempt, generation, self.owner, old
        )
        if rows:
            self.stored[record.id] = params[3]
            self._fresh[record.id] = now
        return bool(rows)

    async def _give_back_claimed(self, back: dict[str, RunRecord]) -> None:
        """Give these claimed runs back unstarted (each as it is now, but for its start).

        Under the lanes' locks: a trigger or a cancel may have changed a run since its
        claim, and that stays.
        """
        keys = {record.key for record in back.values() if record.key is not None}
        notice = Notice()
        async with self.transaction("giving back claimed runs", notice) as conn:
            await self.lock_lanes(conn, keys)
            for run_id, data, generation, owner, _key in await conn.fetch(
                sql.RUNS_BY_ID, list(back)
            ):
                if owner != self.owner or generation != self.leases.get(run_id):
                    continue  # reclaimed meanwhile: not ours to give
                current = self.decode(data)
                _unstart(current, back[run_id])
                params = update_params(current)
                await conn.execute(sql.SAVE_LEASED, *params, False, generation, self.owner)
                note_change(notice, current)
            await self.notify(conn, notice)
        for run_id in back:
            self._forget(run_id)

    async def _cancel_unrun(self, cancels: list[str], limit_of: LimitOf, now: float) -> None:
        """Cancel runs asked to cancel before they started (given back: none leases them)."""
        for run_id in cancels:
            await self.cancel_run(run_id, limit_of, now)

    def _forget(self, run_id: str) -> None:
        """This process no more holds ``run_id``'s lease (it gave it up, or lost it)."""
        self.leases.pop(run_id, None)
        self.stored.pop(run_id, None)
        self._fresh.pop(run_id, None)

    async def find_orphans(self, now: float) -> int:
        """Give back runs leased to this process that it does not know it holds.

        A lease is an orphan when two sweeps in a row find it (a claim in flight during
        one sweep is known by the next). A pending orphan is given back; a running one
        never ran here (its start's reply was lost): it goes back to its lane's head,
        to run as the same attempt. Returns how many were given back.

        Raises:
            StorageError: the database failed; nothing changed.
        """
        rows = await self.fetch(sql.ORPHANS, self.owner, list(self.leases), self.lease_seconds)
        seen = {(run_id, generation) for run_id, generation, _key in rows}
        orphans = [
            (run_id, key)
            for run_id, generation, key in rows
            if (run_id, generation) in self._suspected and run_id not in self.leases
        ]
        self._suspected = seen
        if not orphans:
            return 0
        for attempt in range(TRIES):
            try:
                return await self._give_back(orphans, now)
            except RETRIED:
                if attempt == TRIES - 1:
                    raise StorageError(f"writes to {self.place} kept conflicting") from None
        raise AssertionError("unreachable")

    async def _give_back(self, orphans: list[tuple[str, str | None]], now: float) -> int:
        keys = {key for _id, key in orphans if key is not None}
        notice = Notice(work=True)
        given: list[str] = []
        async with self.transaction("giving back runs", notice) as conn:
            await self.lock_lanes(conn, keys)
            for run_id, data, generation, owner, _key in await conn.fetch(
                sql.RUNS_BY_ID, [run_id for run_id, _key in orphans]
            ):
                if owner != self.owner or run_id in self.leases:
                    continue
                record = self.decode(data)
                if record.status is RUNNING:
                    record.apply(INTERRUPT)
                    record.stop_interrupted = True
                    record.add_log(_lost_reply(record, now))
                elif record.status is not PENDING:
                    continue  # a retry's backoff, an end: the lease expires, reclaimed
                params = update_params(record)
                await conn.execute(sql.SAVE_LEASED, *params, False, generation, owner)
                given.append(run_id)
                notice.changed.append(run_id)
            await self.notify(conn, notice)
        if given:
            logger.warning(
                "gave back %d run(s) this process held without knowing it (a reply from "
                "the database was lost): %s",
                len(given),
                ", ".join(given),
            )
        return len(given)


def _lost_reply(record: RunRecord, now: float) -> LogEntry:
    return LogEntry(
        now,
        "warning",
        "its start's reply from the database was lost, so it never ran: it runs again, as "
        "the same attempt",
        {},
        record.attempt,
    )


def _unstart(current: RunRecord, before: RunRecord) -> None:
    """Undo a claim's start of ``current`` (``before``: the run as claimed)."""
    if current.status is RUNNING:
        current.status = before.status
        current.attempt = before.attempt
        current.starts = before.starts
        current.started_at = before.started_at
        current.stop_interrupted = before.stop_interrupted
