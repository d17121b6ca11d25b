"""The pure per-key state machine.

No asyncio and no I/O here: the scheduler, the recovery code and the tests all drive
runs through these functions, so every status change in keyflow is checked against one
table.

Two layers:

* :data:`TRANSITIONS` says which :class:`Action` moves a run from which status to which
  (:mod:`keyflow.transitions`, re-exported here). :func:`next_status` applies it, or
  raises :class:`IllegalTransitionError` and changes nothing.
* :class:`Lane` holds the unfinished runs of one concurrency key and decides what a
  trigger does (:func:`plan_trigger`), which waiting run takes a free slot, and what a
  finished run frees. A lane is ``idle → running → running+queued`` and back.

Slots: at most ``limit`` runs of a lane hold a slot. A run takes its slot when promoted
to ``pending`` and keeps it through ``running``, retry backoffs and interruptions, until
it is terminal. So at most ``limit`` runs of a key ever execute at once.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum
from typing import Final, Literal, NamedTuple, TypeAlias

from .coalesce import Coalesce
from .errors import IllegalTransitionError
from .runs import Disposition, RunStatus
from .transitions import BECOME_DUE as BECOME_DUE
from .transitions import CANCEL as CANCEL
from .transitions import COMPLETE as COMPLETE
from .transitions import FAIL as FAIL
from .transitions import INTERRUPT as INTERRUPT
from .transitions import PROMOTE as PROMOTE
from .transitions import REJECT as REJECT
from .transitions import REQUEUE as REQUEUE
from .transitions import RESUME as RESUME
from .transitions import RETRY as RETRY
from .transitions import START as START
from .transitions import TRANSITIONS as TRANSITIONS
from .transitions import Action as Action
from .transitions import by_action
from .transitions import next_status as next_status

S = RunStatus
# The statuses the hot paths compare with, bound here as Final: a compiled build reads
# a Final as a C static, an imported name as a dict lookup on every use.
SCHEDULED: Final = RunStatus.SCHEDULED
QUEUED: Final = RunStatus.QUEUED
PENDING: Final = RunStatus.PENDING
RUNNING: Final = RunStatus.RUNNING


# Moved by action, one table-indexed lookup per change (see RunState.apply): the table
# bound here as Final, a C static in a compiled build.
_BY_ACTION: Final = by_action()


def slot_held(status: RunStatus, attempt: int) -> bool:
    """Does a run in ``status`` after ``attempt`` started attempts hold its lane's slot?

    Running, about to run (pending), or in the backoff before a retry (scheduled after
    an attempt): a run takes its slot when it first starts and keeps it until it ends.
    The one rule: live lanes and lanes rebuilt from stored runs both ask it.
    """
    return status is PENDING or status is RUNNING or (status is SCHEDULED and attempt > 0)


class RunState:
    """The part of a run the state machine looks at.

    The scheduler's run records extend this class, so lanes hold the records themselves.
    """

    __slots__ = ("attempt", "by_queue", "due_at", "durable", "id", "job", "key", "status")

    def __init__(
        self,
        id: str,
        job: str,
        key: str | None,
        status: RunStatus,
        due_at: float,
        *,
        attempt: int = 0,
        by_queue: bool = False,
        durable: bool = True,
    ) -> None:
        self.id = id
        self.job = job
        self.key = key
        self.status = status
        self.due_at = due_at
        self.attempt = attempt
        """Attempts started so far; > 0 means the run has started."""
        self.by_queue = by_queue
        """Created by a ``"queue"`` trigger (guarantee 3 counts these)."""
        self.durable = durable
        """Its creation is committed to storage; only durable runs take a slot."""

    @property
    def started(self) -> bool:
        """True once an attempt has started."""
        return self.attempt > 0

    @property
    def holds_slot(self) -> bool:
        """True while the run occupies one of its lane's slots (see :func:`slot_held`)."""
        return slot_held(self.status, self.attempt)

    def apply(self, action: Action) -> RunStatus:
        """Move this run by ``action`` (see :func:`next_status`); return the old status."""
        old = self.status
        target = _BY_ACTION[action][old.ordinal]
        if target is None:
            next_status(old, action)  # raises IllegalTransitionError
        self.status = target  # type: ignore[assignment]  # None was excluded above
        return old

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.job} {self.status.value}>"


LaneState: TypeAlias = Literal["idle", "running", "running+queued"]
"""A lane's state: nothing holds it, runs hold its slots, or runs also wait."""


def lane_state(holding: int, waiting: int) -> LaneState:
    """A lane's state from how many runs hold its slots and how many wait.

    The one rule: the core's lanes and the storage dashboard's (rebuilt from stored
    runs) both ask it.
    """
    if holding == 0:
        return "idle"
    return "running+queued" if waiting else "running"


class PlanKind(StrEnum):
    """What a trigger does to its lane."""

    CREATE = "create"
    """Make a new run."""
    JOIN = "join"
    """Join an existing run (coalesced)."""
    REPLACE = "replace"
    """Cancel the job's runs in the lane and make a new one (``"cancel"``)."""


class TriggerPlan(NamedTuple):
    """The decision for one trigger, made without changing anything."""

    kind: PlanKind
    target: RunState | None = None
    """For JOIN: the run joined."""
    victims: tuple[RunState, ...] = ()
    """For REPLACE: the runs to cancel."""
    by_queue: bool = False
    """For CREATE: the new run is made by a ``"queue"`` trigger."""


JOIN: Final = PlanKind.JOIN
REPLACE: Final = PlanKind.REPLACE
PLAIN_CREATE: Final = TriggerPlan(PlanKind.CREATE)
QUEUE_CREATE: Final = TriggerPlan(PlanKind.CREATE, by_queue=True)
_NONE: Final[list[RunState]] = []  # returned when nothing was promoted; never mutated


class Lane:
    """The unfinished runs of one concurrency key and the slots they hold."""

    __slots__ = ("holders", "key", "limit", "members", "waiting")

    def __init__(self, key: str, limit: int = 1) -> None:
        if limit < 1:
            raise ValueError("a lane's limit must be >= 1")
        self.key = key
        self.limit = limit
        self.members: dict[str, RunState] = {}
        """Every unfinished run of the key, in creation order (delayed ones included)."""
        self.waiting: deque[RunState] = deque()
        """Queued runs, in the order they became due."""
        self.holders = 0
        """How many runs hold a slot."""

    # -- reading ---------------------------------------------------------------

    @property
    def state(self) -> LaneState:
        """``idle``, ``running`` (a slot is held) or ``running+queued`` (and runs wait)."""
        return lane_state(self.holders, len(self.waiting))

    @property
    def is_empty(self) -> bool:
        """True when the lane holds no unfinished run."""
        return not self.members

    def new_run_waits(self, victims: tuple[RunState, ...] = ()) -> bool:
        """Would a new due run wait behind others (ignoring ``victims`` about to be cancelled)?"""
        if not victims:
            return self.holders >= self.limit or bool(self.waiting)
        cancelled_ids = {v.id for v in victims}
        freed = sum(1 for v in victims if v.holds_slot and v.status is not RUNNING)
        if any(w.id not in cancelled_ids for w in self.waiting):
            return True
        return self.holders - freed >= self.limit

    # -- changing --------------------------------------------------------------

    def add(self, run: RunState) -> list[RunState]:
        """Add a new run (``queued`` when due, else ``scheduled``); return runs promoted.

        A run that is not durable yet is only enqueued: it cannot take a slot, and the
        runs ahead of it had their chance when they arrived (every change promotes).
        """
        status = run.status
        if status is QUEUED:
            self.members[run.id] = run
            self.waiting.append(run)
            if run.durable and self.holders < self.limit:
                return self.promote()
            return _NONE
        if status is SCHEDULED:
            self.members[run.id] = run
            return _NONE
        raise IllegalTransitionError(
            f"a new run enters its lane as queued or scheduled, not {run.status.value!r}"
        )

    def restore(self, run: RunState) -> None:
        """Put back a run read from storage at start, creation order first.

        It takes its slot if it held one; a queued run is added to the members only, and
        :meth:`restore_waiting` then puts the queued runs back in their waiting order.
        Once all are back, :meth:`enforce_limit` gives back slots beyond the limit.
        """
        if run.status.is_terminal:
            raise IllegalTransitionError(f"a finished run ({run.id}) has no place in a lane")
        self.members[run.id] = run
        if run.holds_slot:
            self.holders += 1

    def enforce_limit(self) -> list[RunState]:
        """After a restore: give back the slots beyond the limit; return the runs requeued.

        A restart may come with a lower ``lane_limit`` than the runs stored held slots
        under. Pending runs over the limit go back to the head of the queue, in creation
        order; runs that had started keep their slots first (then the oldest). A run in a
        retry backoff keeps its slot until it is due, and then queues if the lane is
        still over its limit (see :meth:`become_due`).
        """
        if self.holders <= self.limit:
            return _NONE
        pending = [run for run in self.members.values() if run.status is PENDING]
        if len(pending) <= self.limit:
            return _NONE
        # Who keeps a slot: started runs before unstarted ones, older before newer.
        keep_order = sorted(pending, key=lambda run: run.attempt == 0)
        requeued = keep_order[self.limit :]
        order = {run.id: index for index, run in enumerate(self.members.values())}
        requeued.sort(key=lambda run: order[run.id])
        for run in requeued:
            run.apply(REQUEUE)
            self.holders -= 1
        self.waiting.extendleft(reversed(requeued))
        return requeued

    def restore_waiting(self, run: RunState) -> None:
        """Put back a queued run read from storage, after those ahead of it."""
        if run.status is not QUEUED or run.id not in self.members:
            raise IllegalTransitionError(f"run {run.id} is not a queued member of this lane")
        self.waiting.append(run)

    def remove_new(self, run: RunState) -> list[RunState]:
        """Take back a run added by a trigger that was rolled back; return runs promoted."""
        self.members.pop(run.id, None)
        if run.status is QUEUED:
            self.waiting.remove(run)
        elif run.status is PENDING:
            self.holders -= 1
        return self.promote()

    def promote(self) -> list[RunState]:
        """Give free slots to the queued runs at the head, in order; return them.

        A run whose creation is not durable yet blocks the head: order is kept.
        """
        if self.holders >= self.limit or not self.waiting:
            return _NONE  # the common case: no list made
        promoted: list[RunState] = []
        while self.holders < self.limit and self.waiting:
            head = self.waiting[0]
            if not head.durable:
                break
            head.apply(PROMOTE)
            self.waiting.popleft()
            self.holders += 1
            promoted.append(head)
        return promoted

    def become_due(self, run: RunState) -> list[RunState]:
        """A scheduled run's time came; return the runs that became pending."""
        if run.attempt > 0:  # a retry backoff ended: it kept its slot ...
            if self.holders <= self.limit:
                run.apply(RESUME)
                return [run]
            # ... unless a restart lowered the limit below the slots held: it gives its
            # slot back and waits at the head of the queue, behind runs that did the same
            # before it (started runs: they came due earlier).
            run.apply(BECOME_DUE)
            self.holders -= 1
            waiting = self.waiting
            place = 0
            while place < len(waiting) and waiting[place].attempt > 0:
                place += 1
            waiting.insert(place, run)
            return self.promote()
        run.apply(BECOME_DUE)
        self.waiting.append(run)
        return self.promote()

    def finish(self, run: RunState, action: Action) -> list[RunState]:
        """A run became terminal (or was cancelled or rejected unrun); return runs promoted."""
        status = run.status
        held = status is RUNNING or status is PENDING or (status is SCHEDULED and run.attempt > 0)
        was_waiting = status is QUEUED
        run.apply(action)
        if not run.status.is_terminal:
            raise IllegalTransitionError(f"{action.value!r} does not finish a run")
        del self.members[run.id]
        if was_waiting:
            self.waiting.remove(run)
        if held:
            self.holders -= 1
        return self.promote()


def join_target(lane: Lane, job: str, coalesce: Coalesce) -> RunState | None:
    """The run a ``"skip"`` or ``"queue"`` trigger of ``job`` joins; None: it creates one.

    ``skip`` joins the newest unfinished run of the job; ``queue`` joins the newest
    never-started run once the job has ``max_queued`` of them. Plain loops, newest
    first: this is the hot path of coalescing.
    """
    strategy = coalesce.strategy
    if strategy == "skip":
        for run in reversed(lane.members.values()):
            if run.job == job:
                return run
        return None
    if strategy == "queue":
        newest: RunState | None = None
        not_started = 0
        bound = coalesce.max_queued
        for run in reversed(lane.members.values()):
            if run.attempt == 0 and run.job == job:
                if newest is None:
                    newest = run
                not_started += 1
                if not_started >= bound:
                    return newest
    return None


def replace_victims(lane: Lane, job: str) -> tuple[RunState, ...]:
    """The runs a ``"cancel"`` trigger of ``job`` cancels: all of the job's, oldest first."""
    return tuple(run for run in lane.members.values() if run.job == job)


def plan_trigger(lane: Lane | None, job: str, coalesce: Coalesce | None) -> TriggerPlan:
    """Decide what a trigger of ``job`` does in ``lane``; change nothing.

    See DESIGN.md §3 and :func:`join_target` / :func:`replace_victims`.
    """
    if coalesce is None:
        return PLAIN_CREATE
    by_queue = coalesce.strategy == "queue"
    if lane is None:
        return QUEUE_CREATE if by_queue else PLAIN_CREATE
    if coalesce.strategy == "cancel":
        return TriggerPlan(REPLACE, victims=replace_victims(lane, job))
    target = join_target(lane, job, coalesce)
    if target is not None:
        return TriggerPlan(JOIN, target)
    return QUEUE_CREATE if by_queue else PLAIN_CREATE


def new_run_disposition(
    lane: Lane | None, victims: tuple[RunState, ...] = (), *, due: bool
) -> Literal[Disposition.CREATED, Disposition.QUEUED]:
    """``queued`` when a new due run will wait behind another run of its lane."""
    if lane is None or not due:
        return Disposition.CREATED
    if lane.new_run_waits(victims):
        return Disposition.QUEUED
    return Disposition.CREATED
