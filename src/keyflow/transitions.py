"""A run's status machine: the actions that move a run, and the one table of moves.

:data:`TRANSITIONS` says which :class:`Action` moves a run from which status to which;
:func:`next_status` applies it, or raises :class:`IllegalTransitionError` and changes
nothing. :mod:`keyflow.state` builds lanes on it (and re-exports these names).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from .errors import IllegalTransitionError
from .runs import RunStatus

S = RunStatus


class Action(StrEnum):
    """Something that happens to a run."""

    BECOME_DUE = "become_due"
    """A delayed run's time came: it enters its lane's queue."""
    RESUME = "resume"
    """A retry backoff ended: the run still holds its slot and waits for a worker."""
    PROMOTE = "promote"
    """A queued run takes a free slot of its lane."""
    START = "start"
    """A worker starts an attempt."""
    COMPLETE = "complete"
    """The handler returned."""
    FAIL = "fail"
    """The handler failed and no retry is left."""
    RETRY = "retry"
    """The handler failed; another attempt follows a backoff (the slot is kept)."""
    INTERRUPT = "interrupt"
    """A stop or crash interrupted the attempt; the run goes back to the head of its lane."""
    CANCEL = "cancel"
    """The run was cancelled (a running one once its task has stopped)."""
    REQUEUE = "requeue"
    """A restart found more runs holding slots than the lane's (lowered) limit: a run
    over it gives its slot back and waits at the head of the queue."""
    REJECT = "reject"
    """The run cannot execute here (its job is not registered): it fails unrun."""


# Aliases of the members for hot paths (see runs.py: class attribute reads are slow).
BECOME_DUE: Final = Action.BECOME_DUE
RESUME: Final = Action.RESUME
PROMOTE: Final = Action.PROMOTE
START: Final = Action.START
COMPLETE: Final = Action.COMPLETE
FAIL: Final = Action.FAIL
RETRY: Final = Action.RETRY
INTERRUPT: Final = Action.INTERRUPT
CANCEL: Final = Action.CANCEL
REQUEUE: Final = Action.REQUEUE
REJECT: Final = Action.REJECT

TRANSITIONS: Mapping[tuple[RunStatus, Action], RunStatus] = {
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
"""Every legal ``(status, action) → status``; any pair not listed is illegal."""


def by_action() -> dict[Action, list[RunStatus | None]]:
    """:data:`TRANSITIONS` re-indexed for speed: action → targets by status ordinal."""
    table: dict[Action, list[RunStatus | None]] = {a: [None] * len(S) for a in Action}
    for (status, action), target in TRANSITIONS.items():
        table[action][status.ordinal] = target
    return table


_BY_ACTION: Final = by_action()


def next_status(status: RunStatus, action: Action) -> RunStatus:
    """Return the status ``action`` leads to from ``status``.

    Raises:
        IllegalTransitionError: the pair is not in :data:`TRANSITIONS`.
    """
    target = _BY_ACTION[action][status.ordinal]
    if target is None:
        raise IllegalTransitionError(
            f"illegal transition: {action.value!r} from status {status.value!r}"
        )
    return target
