"""The pure state machine: the whole transition table, lanes and trigger plans."""

from __future__ import annotations

import itertools

import pytest

from keyflow import Coalesce, Disposition, IllegalTransitionError, RunStatus
from keyflow.state import (
    TRANSITIONS,
    Action,
    Lane,
    PlanKind,
    RunState,
    new_run_disposition,
    next_status,
    plan_trigger,
)

S = RunStatus
ALL_PAIRS = list(itertools.product(RunStatus, Action))
EXPECTED = {
    (S.SCHEDULED, Action.BECOME_DUE): S.QUEUED,
    (S.SCHEDULED, Action.RESUME): S.PENDING,
    (S.SCHEDULED, Action.CANCEL): S.CANCELLED,
    (S.QUEUED, Action.PROMOTE): S.PENDING,
    (S.QUEUED, Action.CANCEL): S.CANCELLED,
    (S.PENDING, Action.START): S.RUNNING,
    (S.PENDING, Action.CANCEL): S.CANCELLED,
    (S.RUNNING, Action.COMPLETE): S.COMPLETED,
    (S.RUNNING, Action.FAIL): S.FAILED,
    (S.RUNNING, Action.RETRY): S.SCHEDULED,
    (S.RUNNING, Action.INTERRUPT): S.PENDING,
    (S.RUNNING, Action.CANCEL): S.CANCELLED,
    (S.PENDING, Action.REQUEUE): S.QUEUED,
    (S.SCHEDULED, Action.REJECT): S.FAILED,
    (S.QUEUED, Action.REJECT): S.FAILED,
    (S.PENDING, Action.REJECT): S.FAILED,
    (S.RUNNING, Action.REJECT): S.FAILED,
}


def run(status: RunStatus = S.QUEUED, job: str = "j", *, attempt: int = 0, n: int = 1) -> RunState:
    return RunState(f"r{n}", job, "k", status, 0.0, attempt=attempt)


def test_the_table_is_exactly_the_documented_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(("status", "action"), ALL_PAIRS)
def test_every_pair_is_allowed_or_refused_without_change(status: RunStatus, action: Action) -> None:
    state = run(status)
    if (status, action) in EXPECTED:
        assert next_status(status, action) is EXPECTED[status, action]
        assert state.apply(action) is status
        assert state.status is EXPECTED[status, action]
    else:
        with pytest.raises(IllegalTransitionError, match=action.value):
            next_status(status, action)
        with pytest.raises(IllegalTransitionError):
            state.apply(action)
        assert state.status is status


def test_terminal_statuses_accept_nothing() -> None:
    for status in (S.COMPLETED, S.FAILED, S.CANCELLED):
        assert status.is_terminal
        assert not any((status, action) in TRANSITIONS for action in Action)
    assert not any(s.is_terminal for s in (S.SCHEDULED, S.QUEUED, S.PENDING, S.RUNNING))


def test_holds_slot_from_promotion_through_backoff() -> None:
    assert not run(S.QUEUED).holds_slot
    assert not run(S.SCHEDULED).holds_slot  # a delayed run waits outside the lane
    assert run(S.PENDING).holds_slot
    assert run(S.RUNNING, attempt=1).holds_slot
    assert run(S.SCHEDULED, attempt=1).holds_slot  # retry backoff keeps the slot


# -- lanes -----------------------------------------------------------------------


def test_lane_runs_one_at_a_time_in_order() -> None:
    lane = Lane("k")
    a, b, c = (RunState(f"r{i}", "j", "k", S.QUEUED, 0.0) for i in range(3))
    assert lane.add(a) == [a]
    assert a.status is S.PENDING
    states = [lane.state]
    assert lane.add(b) == []
    assert lane.add(c) == []
    states.append(lane.state)
    assert states == ["running", "running+queued"]
    assert list(lane.waiting) == [b, c]
    a.apply(Action.START)
    assert lane.finish(a, Action.COMPLETE) == [b]
    assert b.status is S.PENDING
    assert c.status is S.QUEUED
    b.apply(Action.START)
    assert lane.finish(b, Action.FAIL) == [c]
    c.apply(Action.START)
    assert lane.finish(c, Action.COMPLETE) == []
    assert lane.is_empty
    assert lane.state == "idle"
    assert lane.holders == 0


def test_lane_limit_two() -> None:
    lane = Lane("k", limit=2)
    runs = [RunState(f"r{i}", "j", "k", S.QUEUED, 0.0) for i in range(3)]
    promoted = [lane.add(r) for r in runs]
    assert promoted == [[runs[0]], [runs[1]], []]
    assert lane.holders == 2
    assert lane.finish(runs[0], Action.CANCEL) == [runs[2]]


def test_a_run_not_yet_durable_blocks_the_head_and_keeps_order() -> None:
    lane = Lane("k")
    first = RunState("r1", "j", "k", S.QUEUED, 0.0, durable=False)
    second = RunState("r2", "j", "k", S.QUEUED, 0.0)
    assert lane.add(first) == []
    assert lane.add(second) == []
    assert lane.promote() == []  # second may not overtake first
    first.durable = True
    assert lane.promote() == [first]


def test_rolled_back_run_leaves_the_lane() -> None:
    lane = Lane("k")
    first = RunState("r1", "j", "k", S.QUEUED, 0.0, durable=False)
    second = RunState("r2", "j", "k", S.QUEUED, 0.0)
    lane.add(first)
    lane.add(second)
    assert lane.remove_new(first) == [second]
    assert list(lane.members) == ["r2"]


def test_retry_backoff_keeps_the_slot_and_resumes_first() -> None:
    lane = Lane("k")
    a = RunState("a", "j", "k", S.QUEUED, 0.0)
    b = RunState("b", "j", "k", S.QUEUED, 0.0)
    lane.add(a)
    lane.add(b)
    a.apply(Action.START)
    a.attempt = 1
    assert a.apply(Action.RETRY) is S.RUNNING
    assert a.holds_slot
    assert lane.promote() == []  # b still waits: a holds the slot in its backoff
    assert lane.become_due(a) == [a]
    assert a.status is S.PENDING


def test_delayed_run_enters_the_queue_only_when_due() -> None:
    lane = Lane("k")
    delayed = RunState("d", "j", "k", S.SCHEDULED, 10.0)
    now = RunState("n", "j", "k", S.QUEUED, 0.0)
    assert lane.add(delayed) == []
    assert lane.add(now) == [now]  # the delayed run does not block it
    assert lane.become_due(delayed) == []
    assert list(lane.waiting) == [delayed]


def test_cancel_of_waiting_runs() -> None:
    lane = Lane("k")
    a, b = RunState("a", "j", "k", S.QUEUED, 0.0), RunState("b", "j", "k", S.QUEUED, 0.0)
    lane.add(a)
    lane.add(b)
    assert lane.finish(b, Action.CANCEL) == []
    assert b.status is S.CANCELLED
    assert not lane.waiting
    assert lane.finish(a, Action.CANCEL) == []  # a was pending: its slot is freed
    assert lane.holders == 0


def test_finish_with_a_non_terminal_action_is_refused() -> None:
    lane = Lane("k")
    a = RunState("a", "j", "k", S.QUEUED, 0.0)
    lane.add(a)
    with pytest.raises(IllegalTransitionError):
        lane.finish(a, Action.PROMOTE)


def test_new_run_enters_as_queued_or_scheduled_only() -> None:
    with pytest.raises(IllegalTransitionError):
        Lane("k").add(RunState("a", "j", "k", S.PENDING, 0.0))


# -- plans -----------------------------------------------------------------------


def lane_with(*runs: RunState) -> Lane:
    lane = Lane("k")
    for r in runs:
        lane.members[r.id] = r
    return lane


def test_plan_without_strategy_always_creates() -> None:
    lane = lane_with(run(S.RUNNING, attempt=1))
    assert plan_trigger(lane, "j", None).kind is PlanKind.CREATE
    assert plan_trigger(None, "j", Coalesce("queue")).kind is PlanKind.CREATE


def test_skip_joins_the_newest_unfinished_run_of_the_job() -> None:
    running = RunState("r1", "j", "k", S.RUNNING, 0.0, attempt=1)
    other_job = RunState("r2", "other", "k", S.QUEUED, 0.0)
    lane = lane_with(running, other_job)
    plan = plan_trigger(lane, "j", Coalesce("skip"))
    assert plan.kind is PlanKind.JOIN
    assert plan.target is running
    assert plan_trigger(lane, "third", Coalesce("skip")).kind is PlanKind.CREATE


def test_queue_joins_only_a_never_started_run() -> None:
    running = RunState("r1", "j", "k", S.RUNNING, 0.0, attempt=1)
    plan = plan_trigger(lane_with(running), "j", Coalesce("queue"))
    assert plan.kind is PlanKind.CREATE
    assert plan.by_queue
    waiting = RunState("r2", "j", "k", S.QUEUED, 0.0)
    plan = plan_trigger(lane_with(running, waiting), "j", Coalesce("queue"))
    assert plan.kind is PlanKind.JOIN
    assert plan.target is waiting


def test_queue_never_joins_a_run_in_retry_backoff() -> None:
    backoff = RunState("r1", "j", "k", S.SCHEDULED, 5.0, attempt=1)
    assert plan_trigger(lane_with(backoff), "j", Coalesce("queue")).kind is PlanKind.CREATE


def test_queue_max_queued_creates_until_the_bound_then_joins_the_newest() -> None:
    running = RunState("r0", "j", "k", S.RUNNING, 0.0, attempt=1)
    w1 = RunState("r1", "j", "k", S.QUEUED, 0.0)
    w2 = RunState("r2", "j", "k", S.QUEUED, 0.0)
    strategy = Coalesce("queue", max_queued=2)
    assert plan_trigger(lane_with(running, w1), "j", strategy).kind is PlanKind.CREATE
    plan = plan_trigger(lane_with(running, w1, w2), "j", strategy)
    assert plan.kind is PlanKind.JOIN
    assert plan.target is w2


def test_cancel_replaces_every_run_of_the_job() -> None:
    running = RunState("r0", "j", "k", S.RUNNING, 0.0, attempt=1)
    waiting = RunState("r1", "j", "k", S.QUEUED, 0.0)
    other = RunState("r2", "x", "k", S.QUEUED, 0.0)
    plan = plan_trigger(lane_with(running, waiting, other), "j", Coalesce("cancel"))
    assert plan.kind is PlanKind.REPLACE
    assert plan.victims == (running, waiting)


def test_disposition_of_new_runs() -> None:
    lane = Lane("k")
    assert new_run_disposition(None, due=True) is Disposition.CREATED
    assert new_run_disposition(lane, due=True) is Disposition.CREATED
    lane.add(RunState("a", "j", "k", S.QUEUED, 0.0))
    assert new_run_disposition(lane, due=True) is Disposition.QUEUED
    assert new_run_disposition(lane, due=False) is Disposition.CREATED
    # cancel: a pending victim frees its slot, a running one does not
    pending = lane.members["a"]
    replace = plan_trigger(lane, "j", Coalesce("cancel"))
    assert replace.victims == (pending,)
    assert new_run_disposition(lane, replace.victims, due=True) is Disposition.CREATED
    pending.apply(Action.START)
    assert new_run_disposition(lane, replace.victims, due=True) is Disposition.QUEUED


def test_run_ids_are_unique_fixed_width_and_sorted_by_creation() -> None:
    from keyflow.records import RunIds

    ids = RunIds()
    first = [ids.next() for _ in range(20)]
    assert first[0] == f"{ids.prefix}-00000001"
    assert first[15] == f"{ids.prefix}-00000010"
    assert sorted(first) == first
    ids._count = 2**32 - 2  # past eight hex digits the ids grow, and stay unique
    wide = [ids.next() for _ in range(3)]
    assert wide == [f"{ids.prefix}-ffffffff", f"{ids.prefix}-100000000", f"{ids.prefix}-100000001"]


# -- a restart with a lower lane_limit ------------------------------------------------


def restored_lane(limit: int, *runs: RunState) -> Lane:
    lane = Lane("k", limit)
    for r in runs:
        lane.restore(r)
    for r in runs:
        if r.status is S.QUEUED:
            lane.restore_waiting(r)
    return lane


def test_enforce_limit_requeues_the_newest_unstarted_holders_first() -> None:
    started = RunState("a", "j", "k", S.PENDING, 0.0, attempt=1)  # interrupted mid-run
    fresh_old = RunState("b", "j", "k", S.PENDING, 0.0)
    fresh_new = RunState("c", "j", "k", S.PENDING, 0.0)
    behind = RunState("d", "j", "k", S.QUEUED, 0.0)
    lane = restored_lane(1, started, fresh_old, fresh_new, behind)
    assert lane.holders == 3
    assert lane.enforce_limit() == [fresh_old, fresh_new]
    assert (lane.holders, lane.state) == (1, "running+queued")
    assert [r.id for r in lane.waiting] == ["b", "c", "d"]  # back at the head, in order
    assert (fresh_old.status, fresh_new.status, started.status) == (S.QUEUED, S.QUEUED, S.PENDING)
    assert lane.promote() == []  # the limit is full
    started.apply(Action.START)
    assert lane.finish(started, Action.COMPLETE) == [fresh_old]


def test_enforce_limit_within_the_limit_changes_nothing() -> None:
    a = RunState("a", "j", "k", S.PENDING, 0.0)
    b = RunState("b", "j", "k", S.PENDING, 0.0)
    lane = restored_lane(2, a, b)
    assert lane.enforce_limit() == []
    assert (lane.holders, a.status, b.status) == (2, S.PENDING, S.PENDING)


def test_a_backoff_over_a_lowered_limit_waits_for_a_slot_when_due() -> None:
    running = RunState("a", "j", "k", S.PENDING, 0.0, attempt=1)
    backing_off = RunState("b", "j", "k", S.SCHEDULED, 5.0, attempt=1)  # holds its slot
    lane = restored_lane(1, running, backing_off)
    assert lane.enforce_limit() == []  # nothing pending to requeue beyond the one kept
    assert lane.holders == 2
    assert lane.become_due(backing_off) == []  # over the limit: it queues at the head
    assert (backing_off.status, lane.holders, list(lane.waiting)) == (S.QUEUED, 1, [backing_off])
    running.apply(Action.START)
    assert lane.finish(running, Action.COMPLETE) == [backing_off]
    assert backing_off.status is S.PENDING


def test_a_backoff_within_the_limit_resumes_with_its_slot() -> None:
    backing_off = RunState("b", "j", "k", S.SCHEDULED, 5.0, attempt=1)
    lane = restored_lane(1, backing_off)
    assert lane.become_due(backing_off) == [backing_off]
    assert (backing_off.status, lane.holders) == (S.PENDING, 1)


@pytest.mark.parametrize("status", [S.SCHEDULED, S.QUEUED, S.PENDING, S.RUNNING])
def test_reject_fails_a_run_from_any_unfinished_status_and_frees_its_slot(
    status: RunStatus,
) -> None:
    victim = RunState("a", "j", "k", status, 0.0, attempt=1 if status is S.RUNNING else 0)
    behind = RunState("b", "j", "k", S.QUEUED, 0.0)
    lane = restored_lane(1, victim, behind)
    promoted = lane.finish(victim, Action.REJECT)
    assert victim.status is S.FAILED
    assert promoted == [behind]
    assert lane.holders == 1
