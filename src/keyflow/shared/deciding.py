"""Decisions about keys in the shared database: triggers, cancels, due times.

Each decision is one transaction that locks the keys' lanes (rows of ``keyflow_lanes``,
``SELECT … FOR UPDATE`` semantics by upsert), reads their unfinished runs, decides with
the pure rules (:mod:`keyflow.shared.decide`, over :mod:`keyflow.state`), and writes
back what changed. Two processes deciding about one key take turns on its lock, so
both can never create a run where the strategy allows one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import asyncpg

from ..errors import StorageError
from ..records import RunRecord
from ..runs import Disposition, TriggerResult
from ..state import CANCEL, QUEUED, RUNNING, SCHEDULED
from ..storage_backends.postgres_text import refuse_unstorable
from ..triggers import PreparedTrigger
from . import sql
from .database import RETRIED, TRIES, Notice, SharedDatabase, entered_order, insert_params
from .decide import become_due, decide_trigger, lane_from_runs, promote_after

logger = logging.getLogger("keyflow.shared")

LimitOf = Callable[[str], int]
"""A key's lane limit."""


class Decided(NamedTuple):
    """What :meth:`Deciding.trigger` stored."""

    results: list[TriggerResult]
    """One result per trigger, in order."""
    overruled: tuple[str, ...] = ()
    """Leased runs the triggers cancelled (a retry's backoff): their leases were taken
    back, and the processes that held them must drop them."""


DUE_BATCH = 200
"""Scheduled runs made due per transaction."""


class Deciding(SharedDatabase):
    """Triggers, cancels and due times, decided under the keys' locks."""

    async def trigger(
        self,
        prepared: list[PreparedTrigger],
        limit_of: LimitOf,
        new_id: Callable[[], str],
        now: Callable[[], float],
    ) -> Decided:
        """Decide ``prepared`` in one transaction: all are stored, or none.

        Raises:
            StorageError: the database failed; nothing was stored.
            InvalidInputError: a merge function failed, or a text cannot be stored
                (a NUL, too long); nothing was stored.
        """
        for trig in prepared:
            _refuse_unstorable(trig)
        if len(prepared) == 1:
            trig = prepared[0]
            if trig.key is None and trig.idempotency_key is None and not trig.labels:
                return await self._trigger_alone(trig, new_id, now())
        for attempt in range(TRIES):
            try:
                return await self._trigger(prepared, limit_of, new_id, now)
            except RETRIED:
                if attempt == TRIES - 1:
                    raise StorageError(f"triggers in {self.place} kept conflicting") from None
        raise AssertionError("unreachable")

    async def _trigger(
        self,
        prepared: list[PreparedTrigger],
        limit_of: LimitOf,
        new_id: Callable[[], str],
        clock: Callable[[], float],
    ) -> Decided:
        keys = {t.key for t in prepared if t.key is not None}
        idem = sorted({(t.job.name, t.idempotency_key) for t in prepared if t.idempotency_key})
        notice = Notice()
        results: list[TriggerResult] = []
        async with self.transaction("a trigger", notice) as conn:
            existing: dict[tuple[str, str], tuple[str, str | None]] = {}
            if idem:
                jobs, idem_keys = [j for j, _ in idem], [k for _, k in idem]
                await conn.execute(sql.LOCK_IDEMPOTENCY, jobs, idem_keys)
                for job, idem_key, run_id, run_key in await conn.fetch(
                    sql.FIND_IDEMPOTENT, jobs, idem_keys
                ):
                    existing[job, idem_key] = (run_id, run_key)
            await self.lock_lanes(conn, keys)
            leased = await self.lane_runs(conn, keys)
            lanes = {key: [run.record for run in runs] for key, runs in leased.items()}
            owned = {run.record.id for runs in leased.values() for run in runs if run.owner}
            entered = entered_order(leased.values())
            last_entered = max(entered.values(), default=0)
            # Read under the locks, after the runs: a key's runs are made in time order,
            # and a start this decision saw happened before it.
            now = clock()
            new: list[RunRecord] = []
            changed: dict[str, RunRecord] = {}
            idem_rows: list[tuple[str, str, str]] = []
            for trig in prepared:
                job = trig.job.name
                if trig.idempotency_key is not None:
                    found = existing.get((job, trig.idempotency_key))
                    if found is not None:
                        results.append(
                            TriggerResult(found[0], Disposition.IDEMPOTENT, job, found[1])
                        )
                        continue
                runs = lanes.get(trig.key, []) if trig.key is not None else []
                limit = limit_of(trig.key) if trig.key is not None else 1
                waited = {run.id for run in runs if run.status is SCHEDULED}
                decision = decide_trigger(trig, runs, limit, new_id, now, entered)
                results.append(decision.result)
                if decision.result.disposition is Disposition.COALESCED:
                    notice.joined.add(decision.result.run_id)
                created = decision.created
                for run in (*decision.changed, *([created] if created else [])):
                    if run.status is QUEUED and (run is created or run.id in waited):
                        last_entered += 1  # (the next trigger of this batch sees it)
                        entered[run.id] = last_entered
                if created is not None:
                    new.append(created)
                    if trig.key is not None:
                        runs.append(created)
                    if trig.idempotency_key is not None:
                        existing[job, trig.idempotency_key] = (created.id, created.key)
                        idem_rows.append((job, trig.idempotency_key, created.id))
                    note_change(notice, created)
                for run in decision.changed:
                    if run is not created:
                        changed[run.id] = run
                        note_change(notice, run)
                notice.cancel.extend(run.id for run in decision.cancel_running)
                if trig.key is not None:
                    lanes[trig.key] = [r for r in runs if not r.status.is_terminal]
            created_ids = {record.id for record in new}
            if idem_rows:
                columns = [list(column) for column in zip(*idem_rows, strict=True)]
                await conn.execute(sql.UPSERT_IDEMPOTENCY, *columns)
            # A leased run a trigger finished (``"cancel"`` of a run in a retry's backoff,
            # which holds its lease between attempts) loses its lease with it: its
            # process is told to drop it, and its late writes are fenced off.
            overruled = [
                run for run in changed.values() if run.id in owned and run.status.is_terminal
            ]
            notice.cancel.extend(run.id for run in overruled)
            skip = created_ids | {run.id for run in overruled}
            await self.write_runs(
                conn,
                new,
                [r for r in changed.values() if r.id not in skip],
                notice,
                released=overruled,
            )
        return Decided(results, tuple(run.id for run in overruled))

    async def _trigger_alone(
        self, trig: PreparedTrigger, new_id: Callable[[], str], now: float
    ) -> Decided:
        """Store a trigger without key, idempotency key or labels in one statement.

        There is nothing to lock or look up (it always makes a run): one statement,
        committed on its own, stores it.
        """
        decision = decide_trigger(trig, [], 1, new_id, now, {})
        created = decision.created
        assert created is not None  # without a lane, every trigger creates
        notice = Notice()
        note_change(notice, created)
        await self.execute(
            sql.INSERT_RUN_NOTIFY,
            *insert_params(created),
            self.channel,
            self.payload(notice) or "{}",
        )
        self.decided(notice)
        return Decided([decision.result])

    async def cancel_run(self, run_id: str, limit_of: LimitOf, now: float) -> str | None:
        """Cancel a run this process does not execute.

        Returns None if the run is unknown or finished, ``"cancelled"`` if it was
        cancelled here, ``"requested"`` if the process executing it was asked to.

        Raises:
            StorageError: the database failed; nothing changed.
        """
        key_rows = await self.fetch(
            "SELECT concurrency_key FROM keyflow_runs WHERE id = $1", run_id
        )
        if not key_rows:
            return None
        key: str | None = key_rows[0][0]
        notice = Notice()
        async with self.transaction("a cancel", notice) as conn:
            if key is not None:
                await self.lock_lanes(conn, [key])
            rows = await conn.fetch(sql.RUNS_BY_ID, [run_id])
            if not rows:
                return None
            _id, data, _generation, owner, _key = rows[0]
            record = self.decode(data)
            if record.status.is_terminal:
                return None
            if owner is not None or record.status is RUNNING:
                if not record.cancel_requested:
                    record.cancel_requested = True
                    await self.write_runs(conn, changed=[record])
                notice.cancel.append(run_id)
                notice.changed.append(run_id)
                await self.notify(conn, notice)
                return "requested"
            changed: list[RunRecord] = [record]
            if key is None:
                record.apply(CANCEL)
            else:
                leased = (await self.lane_runs(conn, [key]))[key]
                runs = [entry.record for entry in leased]
                mine = next(r for r in runs if r.id == run_id)
                lane, requeued = lane_from_runs(key, limit_of(key), runs, entered_order([leased]))
                changed = [mine, *requeued]
                for promoted in lane.finish(mine, CANCEL):
                    if isinstance(promoted, RunRecord) and promoted not in changed:
                        changed.append(promoted)
                record = mine
            record.finished_at = now
            for run in changed:
                note_change(notice, run)
            await self.write_runs(conn, changed=changed, notice=notice)
        return "cancelled"

    async def sweep_due(self, limit_of: LimitOf, now: float) -> int:
        """Make the scheduled runs whose time came due; return how many moved.

        Raises:
            StorageError: the database failed; nothing changed.
        """
        moved = 0
        while True:
            due_rows = await self.fetch(sql.DUE, now, DUE_BATCH)
            if not due_rows:
                return moved
            try:
                moved += await self._sweep(due_rows, limit_of, now)
            except RETRIED:
                continue
            if len(due_rows) < DUE_BATCH:
                return moved

    async def _sweep(self, due_rows: list[asyncpg.Record], limit_of: LimitOf, now: float) -> int:
        keys = {key for _id, key in due_rows if key is not None}
        keyless = [run_id for run_id, key in due_rows if key is None]
        due_ids = {run_id for run_id, _key in due_rows}
        notice = Notice(work=True)
        changed: dict[str, RunRecord] = {}
        async with self.transaction("making runs due", notice) as conn:
            await self.lock_lanes(conn, keys)
            lanes = await self.lane_runs(conn, keys)
            for key, leased in lanes.items():
                runs = [entry.record for entry in leased]
                entered = entered_order([leased])
                for entry in leased:
                    run = entry.record
                    if run.id in due_ids and _is_due(run, entry.owner, now):
                        for c in become_due(key, limit_of(key), runs, run, entered):
                            changed[c.id] = c
            if keyless:
                for _id, data, _generation, owner, _key in await conn.fetch(
                    sql.RUNS_BY_ID, keyless
                ):
                    run = self.decode(data)
                    if _is_due(run, owner, now):
                        for c in become_due(None, 1, [run], run, {}):
                            changed[c.id] = c
            for run in changed.values():
                note_change(notice, run)
            await self.write_runs(conn, changed=list(changed.values()), notice=notice)
        return len(changed)

    async def promote_lanes(
        self, conn: asyncpg.Connection, keys: set[str], limit_of: LimitOf, notice: Notice
    ) -> None:
        """Runs of these (locked) keys ended: give their slots to the next runs; notify."""
        changed: list[RunRecord] = []
        for key, leased in (await self.lane_runs(conn, keys)).items():
            runs = [entry.record for entry in leased]
            changed.extend(promote_after(key, limit_of(key), runs, entered_order([leased])))
        for run in changed:
            note_change(notice, run)
        await self.write_runs(conn, changed=changed, notice=notice)

    async def next_due(self) -> float | None:
        """The earliest due time of a scheduled run nobody leases, or None."""
        value = await self.fetchval(sql.NEXT_DUE)
        return None if value is None else float(value)

    async def busy(self, now: float) -> int:
        """How many unfinished runs are due, pending, running or leased."""
        return int(await self.fetchval(sql.BUSY, now))


def _refuse_unstorable(trig: PreparedTrigger) -> None:
    """Refuse, before any write, a trigger whose texts PostgreSQL cannot hold."""
    refuse_unstorable(trig.job.name, trig.key, trig.idempotency_key, trig.labels)


def _is_due(run: RunRecord, owner: str | None, now: float) -> bool:
    return run.status is SCHEDULED and owner is None and run.due_at <= now


def note_change(notice: Notice, run: RunRecord) -> None:
    """Tell the other processes about ``run``'s change (and any work or due time in it)."""
    notice.changed.append(run.id)
    notice.runs.append(run)
    status = run.status
    if status is SCHEDULED:
        notice.add_due(run.due_at)
    elif status.value == "pending":
        notice.work = True
