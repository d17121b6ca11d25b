"""The core's admission of triggers: decide, apply, settle, roll back.

Each trigger is decided by the one pure decision of :mod:`keyflow.state`
(``plan_trigger``; the fast path calls its parts ``join_target`` and
``new_run_disposition``), applied to the live records at once so later decisions see
it, and recorded in a :class:`~keyflow.commit.Txn`: settled once durable, or undone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Final

from .coalesce import Coalesce
from .errors import InvalidInputError
from .jsonvalue import NotJSONError, check_size, copy_json_dict, json_object_copy, may_be_large
from .live import _QUEUED
from .records import MAX_COALESCED_KEPT, Coalescence, RunRecord
from .runs import Disposition, JSONObject, TriggerResult
from .runtime import Runtime
from .state import QUEUED, SCHEDULED, join_target, new_run_disposition, plan_trigger
from .triggers import PreparedTrigger, prepare_trigger
from .txn import Txn

if TYPE_CHECKING:
    pass

_result: Final = partial(tuple.__new__, TriggerResult)
"""Builds a TriggerResult from a tuple without NamedTuple's slower Python __new__."""
_SCHEDULED: Final = SCHEDULED.ordinal
D_COALESCED: Final = Disposition.COALESCED
D_CREATED: Final = Disposition.CREATED
D_IDEMPOTENT: Final = Disposition.IDEMPOTENT
D_QUEUED: Final = Disposition.QUEUED


class Admission(Runtime):
    """Takes triggers: checks them, decides each, applies it and settles or undoes it."""

    def accept(
        self,
        job: object,
        input: object,
        concurrency_key: object,
        coalesce: object,
        idempotency_key: object,
        labels: object,
        delay: object,
        parent_run_id: object,
        chained: bool = False,
    ) -> TriggerResult | PreparedTrigger:
        """Check one trigger (see ``Keyflow.trigger``); decide it at once if storage allows.

        Returns the result, or the prepared trigger to :meth:`~keyflow.core.Core.commit`.
        The arguments are typed ``object`` on purpose: a compiled build checks declared
        types on entry and would raise a bare TypeError, where ``prepare_trigger``'s
        checks raise the error that names the problem.

        Raises:
            SchedulerNotRunningError: not accepting triggers (from ``refuse``).
            TriggerError: bad arguments; nothing changed.
            StorageError: the write of a new run failed; nothing changed.
        """
        if not self.accepting and not (chained and self.accepting_chained):
            self._refuse()
        prepared = prepare_trigger(
            self.jobs,
            job,
            input,
            concurrency_key,
            coalesce,
            idempotency_key,
            labels,
            delay,
            parent_run_id,
        )
        fast = self.trigger_now(prepared)
        return prepared if fast is None else fast

    def apply_trigger(self, trig: PreparedTrigger, txn: Txn) -> TriggerResult:
        """Decide and apply one trigger in memory, recording how to undo it in ``txn``.

        Raises:
            InvalidInputError: a merge function failed; the caller rolls ``txn`` back.
        """
        job = trig.job
        key = trig.key
        if trig.idempotency_key is not None:
            existing = self.idempotency.get((job.name, trig.idempotency_key))
            if existing is not None:
                result = TriggerResult(existing.id, D_IDEMPOTENT, job.name, existing.key)
                txn.results.append(result)
                if txn.covered is not None:
                    txn.covered.append(existing)
                return result
        lane = self.lanes.get(key) if key is not None else None
        coalesce = trig.coalesce
        plan = plan_trigger(lane, job.name, coalesce)  # the one decision (state.py)
        target = plan.target
        victims = plan.victims
        now = self.now()
        if target is not None:
            assert coalesce is not None
            record = self.records[target.id]
            old_input = record.input
            kept = record.coalesced
            evicted = kept[0] if kept is not None and len(kept) == MAX_COALESCED_KEPT else None
            old_due, entry = join_run(record, trig, coalesce, now)
            record.unsettled += 1
            txn.joined.append((record, old_input, old_due, evicted, entry))
            disposition = D_COALESCED
        else:
            due = trig.delay <= 0
            disposition = new_run_disposition(lane, victims, due=due)
            if key is not None and lane is None:
                lane = self.lanes[key] = self.new_lane(key)  # may raise: nothing changed yet
            record = new_record(self.ids.next(), trig, now, durable=False)
            self.records[record.id] = record
            self.status_counts[record.status.ordinal] += 1
            if lane is not None:
                lane.add(record)  # not durable yet: it waits for settle() to take a slot
            txn.created.append(record)
            if victims:
                txn.victims.extend(self.records[v.id] for v in victims)
        if trig.idempotency_key is not None:
            self.idempotency[job.name, trig.idempotency_key] = record
            txn.idempotency.append((job.name, trig.idempotency_key, record))
        result = _result((record.id, disposition, job.name, key))
        txn.results.append(result)
        if txn.covered is not None:
            txn.covered.append(record)
        return result

    def settle(self, txn: Txn) -> None:
        """``txn`` is durable: let its runs start, arm timers, publish events."""
        publish = self.hub.active
        counters = self.counters
        for result in txn.results:
            disposition = result[1]
            if disposition is D_CREATED:
                counters.created += 1
            elif disposition is D_QUEUED:
                counters.queued += 1
            elif disposition is D_IDEMPOTENT:
                counters.idempotent += 1
        created = txn.created
        for record in created:
            record.durable = True
        for record in created:
            if publish:
                self.hub.run_changed(record, None, record.created_at)
            if record.status is SCHEDULED:
                self.arm(record)
            elif record.key is None:
                self.promote_keyless(record)
            else:
                lane = self.lanes.get(record.key)
                if lane is not None:
                    self.dispatch(lane.promote())
        for run, _old_input, old_due_at, _evicted, entry in txn.joined:
            run.unsettled -= 1
            self._joined(run, old_due_at, entry)
        if txn.covered is not None:
            # Before any worker can take these runs: a waiter made now hears of the end.
            txn.waiters = [self.waiters.covering_waiter(record) for record in txn.covered]
        if txn.victims:
            for victim in txn.victims:
                if not victim.status.is_terminal and victim.id in self.records:
                    self.cancel(victim)
        if self.waiters.changes:
            self.waiters.changed()

    def _joined(self, run: RunRecord, old_due_at: float, entry: Coalescence) -> None:
        # A join is durable: count it, re-arm a timer it pulled forward, publish it.
        self.counters.coalesced += 1
        key = run.key
        if key is not None:
            tracked = self.key_coalesced
            if key in tracked:  # counted in place; recency is refreshed when the lane idles
                tracked[key] += 1
            else:
                self._count_key_coalesced(key)
        if run.due_at < old_due_at and run.status is SCHEDULED:
            self.arm(run)
        if self.hub.active:
            self.hub.trigger_coalesced(run, entry)

    def trigger_now(self, trig: PreparedTrigger) -> TriggerResult | None:
        """The fast path of a single trigger, when storage needs nothing awaited.

        Taken when the backend holds our records and writes synchronously and nothing
        is pending (the in-memory backend): a join needs no write at all, a new run one
        synchronous write before anything changes in memory. Returns None when the
        general path must decide (idempotency keys, ``"cancel"``, durable storage).

        Raises:
            StorageError: the write of a new run failed; nothing changed.
            InvalidInputError: a merge function failed; nothing changed.
        """
        if trig.idempotency_key is not None or not self.pipeline.settles_joins_now:
            return None
        key = trig.key
        lane = self.lanes.get(key) if key is not None else None
        coalesce = trig.coalesce
        job = trig.job.name
        if coalesce is not None and lane is not None:
            if coalesce.strategy == "cancel":
                return None  # cancels runs: the general path, with its transaction
            # plan_trigger's JOIN, without building the plan: the hot path of coalescing.
            target = join_target(lane, job, coalesce)
            if target is not None:
                record = self.records[target.id]
                old_due_at, entry = join_run(record, trig, coalesce, self.now())
                self._joined(record, old_due_at, entry)
                if self.waiters.changes:
                    self.waiters.changed()
                return _result((record.id, D_COALESCED, job, key))
        if key is not None and lane is None:
            lane = self.new_lane(key)  # may raise: nothing has changed yet
            created_lane = True
        else:
            created_lane = False
        now = self.now()
        due = trig.delay <= 0
        record = new_record(self.ids.next(), trig, now, durable=True)
        try:
            self._write_new(record)  # the backend's own write: one call on the hot path
        except Exception as exc:
            raise self.pipeline.write_new_failed(exc) from exc
        self.pipeline.batches_written += 1
        self.records[record.id] = record
        self.status_counts[_QUEUED if due else _SCHEDULED] += 1
        if created_lane:
            assert key is not None
            assert lane is not None
            self.lanes[key] = lane
        disposition = new_run_disposition(lane, due=due)
        if disposition is D_QUEUED:
            self.counters.queued += 1
        else:
            self.counters.created += 1
        if self.hub.active:
            self.hub.run_changed(record, None, now)
        if not due:
            if lane is not None:
                lane.add(record)
            self.arm(record)
        elif lane is None:
            self.promote_keyless(record)
        else:
            promoted = lane.add(record)
            if promoted:
                self.dispatch(promoted)
        if self.waiters.changes:
            self.waiters.changed()
        return _result((record.id, disposition, job, key))

    def roll_back(self, txn: Txn) -> None:
        """``txn`` will never be durable: undo it in memory, newest change first."""
        for job, idem, record in reversed(txn.idempotency):
            if self.idempotency.get((job, idem)) is record:
                del self.idempotency[job, idem]
        for run, old_input, old_due_at, evicted, _entry in reversed(txn.joined):
            run.input = old_input
            run.trigger_count -= 1
            run.due_at = old_due_at
            run.remove_coalesced(evicted)
            run.unsettled -= 1
        for record in reversed(txn.created):
            if self.records.pop(record.id, None) is None:
                continue
            self.status_counts[record.status.ordinal] -= 1
            if record.key is not None:
                lane = self.lanes.get(record.key)
                if lane is not None:
                    self.dispatch(lane.remove_new(record))
                    if lane.is_empty:
                        del self.lanes[record.key]


def join_run(
    target: RunRecord, trig: PreparedTrigger, coalesce: Coalesce, now: float
) -> tuple[float, Coalescence]:
    """Join ``trig`` into ``target`` (the plan's JOIN); return its old due time and the entry.

    The input follows the coalesce policy unless the run started (it keeps its input);
    the trigger is counted and kept; a delay shorter than the run's pulls it forward.

    Raises:
        InvalidInputError: a merge function failed; ``target`` is unchanged.
    """
    old_input = target.input
    if target.attempt == 0:  # a run that started keeps its input
        policy = coalesce.input
        if policy == "latest":
            target.input = trig.input
        elif policy != "first":
            target.input = _merge(policy, old_input, trig.input, trig.job.name)
    entry = (now, trig.input, trig.parent_run_id)
    kept = target.coalesced
    if kept is None:
        kept = target.coalesced = deque(maxlen=MAX_COALESCED_KEPT)
    kept.append(entry)
    target.trigger_count += 1
    old_due = target.due_at
    due_at = now + trig.delay
    if due_at < old_due and target.status is SCHEDULED and target.attempt == 0:
        target.due_at = due_at  # the run covers this trigger no later than it asked
    return old_due, entry


def new_record(run_id: str, trig: PreparedTrigger, now: float, *, durable: bool) -> RunRecord:
    """The run a trigger creates: queued when due now, else scheduled."""
    coalesce = trig.coalesce
    return RunRecord(
        run_id,
        trig.job.name,
        trig.key,
        QUEUED if trig.delay <= 0 else SCHEDULED,
        trig.input,
        now,
        now + trig.delay,
        trig.job.retries + 1,
        trig.labels,
        trig.idempotency_key,
        trig.parent_run_id,
        coalesce is not None and coalesce.strategy == "queue",
        durable,
    )


def _merge(
    merge: Callable[[JSONObject, JSONObject], JSONObject],
    old: JSONObject,
    new: JSONObject,
    job: str,
) -> JSONObject:
    try:
        # Deep copies: a merge that changes its arguments in place must not reach the
        # stored input (which a rolled-back trigger would then leave changed).
        merged = json_object_copy(merge(copy_json_dict(old), copy_json_dict(new)))
        if may_be_large(merged):
            check_size(merged, "$")
        return merged
    except NotJSONError as exc:
        raise InvalidInputError(f"merge function of job {job!r} returned non-JSON: {exc}") from None
    except Exception as error:  # another name: a compiled build types `exc` as NotJSONError
        raise InvalidInputError(f"merge function of job {job!r} failed: {error!r}") from error
