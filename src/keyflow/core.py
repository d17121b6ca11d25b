"""The scheduler's in-memory core: one process's coordinator of runs.

``Core`` is built in layers, one concept per module:

* :mod:`keyflow.live` — the live state (unfinished runs, lanes, ready queue, timers)
  and the bookkeeping of every change;
* :mod:`keyflow.runtime` — execution transitions (start, complete, fail, retry,
  cancel, interrupt) and pauses;
* :mod:`keyflow.admission` — triggers: decide (``state.plan_trigger``), apply, settle
  or roll back;
* this module — the verbs the scheduler, ``Job`` handles and run contexts call: commit
  triggers (idempotency checked inside the decision), and reads (lane snapshots, what
  ``run_until_idle`` asks).

Everything is synchronous and runs on the event loop thread; the commit pipeline
(:mod:`keyflow.commit`) writes behind it. See docs/architecture.md.
"""

from __future__ import annotations

from .admission import Admission
from .jobs import DEFAULT
from .lane_view import lane_snapshot
from .live import Counters
from .options_types import TRIGGER_OPTIONS, TriggerOptions
from .records import RunRecord
from .runs import Disposition, JSONObject, TriggerResult
from .state import PENDING, RUNNING, SCHEDULED
from .stats import LaneSnapshot
from .triggers import PreparedTrigger
from .txn import Txn

__all__ = ["Core", "Counters"]


class Core(Admission):
    """One process's coordinator: owns lanes and unfinished runs, decides and commits.

    It implements :class:`keyflow.port.TriggerPort`, all ``Job`` handles and run
    contexts know of the scheduler.
    """

    def accept_options(
        self,
        caller: str,
        job: str,
        input: JSONObject | None,
        options: TriggerOptions,
        *,
        chained: bool = False,
    ) -> TriggerResult | PreparedTrigger:
        """:meth:`accept` of a trigger whose options came as ``**options``.

        Raises:
            TypeError: an unknown option (named with ``caller``).
            SchedulerNotRunningError, TriggerError, StorageError: as :meth:`accept`.
        """
        unknown = set(options) - TRIGGER_OPTIONS
        if unknown:
            raise TypeError(f"{caller}() got unexpected options: {', '.join(sorted(unknown))}")
        return self.accept(
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

    async def commit(
        self, prepared: list[PreparedTrigger], *, wait: bool = False, chained: bool = False
    ) -> Txn:
        """Decide ``prepared`` in one transaction; return it once durable.

        An idempotency key is looked up in memory and, for runs that finished, in
        storage, before the decision and under the same acceptance check: a stop that
        began meanwhile refuses the trigger.

        Raises:
            SchedulerNotRunningError: the scheduler stopped accepting meanwhile.
            InvalidInputError: a merge function failed; nothing changed.
            StorageError: the write failed; nothing of the transaction remains.
        """
        remote = self.remote
        if remote is not None:  # shared storage: decided in the database
            if not (self.accepting or (chained and self.accepting_chained)):
                self._refuse()
            return await remote.commit(prepared, wait)
        stored: dict[int, str] = {}
        for trig in prepared:
            if trig.idempotency_key is not None:
                while True:  # until nothing is awaited between the lookups and the decision
                    stored = await self._stored_idempotency(prepared)
                    if not (self.accepting or (chained and self.accepting_chained)):
                        self._refuse()  # a stop may have begun meanwhile
                    waiting = self._found_not_durable(prepared)
                    if waiting is None:
                        break
                    await self.pipeline.until_written(waiting)
                break
        txn = Txn(wait=wait)
        results = txn.results
        try:
            for trig in prepared:
                found = stored.get(id(trig)) if stored else None
                if found is None:
                    self.apply_trigger(trig, txn)
                else:
                    results.append(
                        TriggerResult(found, Disposition.IDEMPOTENT, trig.job.name, trig.key)
                    )
                    if txn.covered is not None:
                        txn.covered.append(None)
        except BaseException:
            self.roll_back(txn)
            raise
        pipeline = self.pipeline
        if txn.created or txn.joined:
            touched = txn.touched
            if not pipeline.commit_now(txn, touched):
                await pipeline.commit(txn, touched)
        elif any(not self._settled(r.run_id) for r in results):
            # Found by idempotency key, but its creation is not durable yet: wait for it.
            await pipeline.commit(txn, [])
        else:
            self.settle(txn)
        return txn

    def _found_not_durable(self, prepared: list[PreparedTrigger]) -> RunRecord | None:
        """A run these triggers' keys find in memory that is not durable yet, if any.

        A trigger that finds a run by its key is acknowledged with that run: it must
        not lean on a run storage may still refuse (then the key is free again).
        """
        for trig in prepared:
            key = trig.idempotency_key
            found = None if key is None else self.idempotency.get((trig.job.name, key))
            if found is not None and not found.durable:
                return found
        return None

    async def _stored_idempotency(self, prepared: list[PreparedTrigger]) -> dict[int, str]:
        """Run ids of idempotency keys known to storage but no longer in memory.

        A run with the key may be made, stored, run and ended while storage is asked
        (by a concurrent trigger): the answer misses it and memory forgets it as it
        ends, so such an end is noted for the lookup (``idempotency_ended``).
        """
        found: dict[int, str] = {}
        lookups, ended = self.idempotency_lookups, self.idempotency_ended
        for trig in prepared:
            key = trig.idempotency_key
            if key is None or (trig.job.name, key) in self.idempotency:
                continue
            idempotency = (trig.job.name, key)
            lookups[idempotency] = lookups.get(idempotency, 0) + 1
            try:
                run_id = await self.backend.find_idempotent(trig.job.name, key)
            finally:
                if (count := lookups[idempotency] - 1) > 0:
                    lookups[idempotency] = count
                    ended_meanwhile = ended.get(idempotency)
                else:
                    del lookups[idempotency]
                    ended_meanwhile = ended.pop(idempotency, None)
            run_id = run_id or ended_meanwhile
            if run_id is not None:
                found[id(trig)] = run_id
        return found

    def _settled(self, run_id: str) -> bool:
        record = self.records.get(run_id)
        return record is None or (record.durable and record.unsettled == 0)

    @property
    def only_timers_left(self) -> bool:
        """True when nothing can progress until a timer fires (no run pending or running)."""
        counts = self.status_counts
        return (
            counts[SCHEDULED.ordinal] > 0
            and counts[RUNNING.ordinal] == 0
            and counts[PENDING.ordinal] == 0
            and not self.ready
        )

    def lane_snapshot(self, key: str) -> LaneSnapshot:
        """The lane of ``key`` now (idle if it has no unfinished run)."""
        coalesced = self.key_coalesced.get(key, 0)
        lane = self.lanes.get(key)
        paused = key in self.paused_keys
        if lane is None:
            limit = self.limit_of(key, strict=False)
            return lane_snapshot(key, limit, (), (), coalesced=coalesced, paused=paused)
        return lane_snapshot(
            key, lane.limit, lane.members.values(), lane.waiting, coalesced=coalesced, paused=paused
        )
