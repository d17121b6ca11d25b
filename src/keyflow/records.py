"""The scheduler's mutable run records, and the ids they get.

A :class:`RunRecord` is what lanes and storage hold; callers only ever see the frozen
:class:`~keyflow.runs.Run` that :meth:`RunRecord.snapshot` makes.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from .runs import (
    AttemptError,
    CoalescedTrigger,
    JSONObject,
    LogEntry,
    Progress,
    Run,
    RunStatus,
)
from .state import START, RunState

if TYPE_CHECKING:
    pass

MAX_COALESCED_KEPT: Final = 20
"""How many coalesced triggers a run remembers (``trigger_count`` counts them all)."""
MAX_LOG_LINES: Final = 200
"""How many log lines a run keeps (the newest)."""
MAX_ERRORS_KEPT: Final = 50
"""How many attempt errors a run keeps (the newest; ``attempt`` numbers them)."""

_NO_LABELS: Final[dict[str, str]] = {}
_EIGHT_DIGITS: Final = 1 << 32

Coalescence = tuple[float, JSONObject, str | None]
"""A joined trigger as stored: ``(at, input, parent_run_id)``."""


class RunIds:
    """Makes run ids: a random per-instance prefix plus a counter, sortable by creation."""

    __slots__ = ("_count", "_head", "prefix")

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(6)
        """This instance's part of every id."""
        self._head = self.prefix + "-"
        self._count = 0

    def next(self) -> str:
        """A new, unique run id: the prefix, then the counter as 8 hex digits (or more)."""
        self._count = count = self._count + 1
        if count < _EIGHT_DIGITS:
            # hex() of the count above 2**32, less "0x1": zero-padded, and far cheaper
            # than a format string on this path (once per trigger).
            return self._head + hex(count + _EIGHT_DIGITS)[3:]
        return f"{self._head}{count:x}"


class RunRecord(RunState):
    """Everything keyflow knows about one run."""

    __slots__ = (
        "cancel_requested",
        "coalesced",
        "crashes",
        "created_at",
        "error",
        "errors",
        "finished_at",
        "idempotency_key",
        "input",
        "interruptions",
        "labels",
        "logs",
        "max_attempts",
        "output",
        "parent_run_id",
        "progress",
        "retries_used",
        "started_at",
        "starts",
        "stop_interrupted",
        "trigger_count",
        "unsettled",
    )

    def __init__(
        self,
        id: str,
        job: str,
        key: str | None,
        status: RunStatus,
        input: JSONObject,
        created_at: float,
        due_at: float,
        max_attempts: int,
        labels: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        parent_run_id: str | None = None,
        by_queue: bool = False,
        durable: bool = True,
    ) -> None:
        # RunState's fields are set here too: this runs once per trigger.
        self.id = id
        self.job = job
        self.key = key
        self.status = status
        self.due_at = due_at
        self.attempt = 0
        self.by_queue = by_queue
        self.durable = durable
        self.input = input
        self.labels = labels or _NO_LABELS
        self.idempotency_key = idempotency_key
        self.parent_run_id = parent_run_id
        self.max_attempts = max_attempts
        self.trigger_count = 1
        self.created_at = created_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.output: Any = None
        self.error: str | None = None
        self.errors: list[AttemptError] | None = None
        self.progress: Progress | None = None
        self.logs: deque[LogEntry] | None = None
        self.coalesced: deque[Coalescence] | None = None
        """The latest joined triggers, oldest first (tuples: cheap on the hot path)."""
        self.interruptions = 0
        """Attempts cut short by a stop or a crash."""
        self.crashes = 0
        """Attempts cut short by a crash (found running at a restart)."""
        self.retries_used = 0
        """Failed attempts that used up a retry."""
        self.cancel_requested = False
        self.stop_interrupted = False
        """A stop cut its latest attempt short: the next start is that attempt again."""
        self.starts = 0
        """How many times its handler was started (reruns after a stop included)."""
        self.unsettled = 0
        """Trigger changes to this run that are not durable yet; it may not run before."""

    def copy(self) -> RunRecord:
        """A copy of this run now, its lists too.

        What a write decides on while the run itself goes on changing.
        """
        twin = RunRecord(
            self.id,
            self.job,
            self.key,
            self.status,
            self.input,
            self.created_at,
            self.due_at,
            self.max_attempts,
            self.labels,
            self.idempotency_key,
            self.parent_run_id,
            self.by_queue,
            self.durable,
        )
        twin.attempt = self.attempt
        twin.trigger_count = self.trigger_count
        twin.started_at = self.started_at
        twin.finished_at = self.finished_at
        twin.output = self.output
        twin.error = self.error
        twin.errors = None if self.errors is None else list(self.errors)
        twin.progress = self.progress
        twin.logs = None if self.logs is None else deque(self.logs, self.logs.maxlen)
        twin.coalesced = (
            None if self.coalesced is None else deque(self.coalesced, self.coalesced.maxlen)
        )
        twin.interruptions = self.interruptions
        twin.crashes = self.crashes
        twin.retries_used = self.retries_used
        twin.cancel_requested = self.cancel_requested
        twin.stop_interrupted = self.stop_interrupted
        twin.starts = self.starts
        twin.unsettled = self.unsettled
        return twin

    def begin_attempt(self, now: float) -> None:
        """A worker starts an attempt at ``now`` (the same one again after a stop).

        What a start does to the run itself: the single-process core and a shared
        database's claim both start runs through it.
        """
        self.apply(START)
        self.starts += 1
        if self.stop_interrupted:  # a stop cut it short: it is that attempt again
            self.stop_interrupted = False
        else:
            self.attempt += 1
        self.started_at = now

    def remove_coalesced(self, evicted: Coalescence | None) -> None:
        """Undo the latest joined trigger (a rolled-back one); put back what it evicted."""
        kept = self.coalesced
        if kept:
            kept.pop()
            if evicted is not None:
                kept.appendleft(evicted)

    def add_error(self, error: AttemptError) -> None:
        """Record the failure of an attempt (the newest :data:`MAX_ERRORS_KEPT` are kept)."""
        if self.errors is None:
            self.errors = []
        self.errors.append(error)
        if len(self.errors) > MAX_ERRORS_KEPT:
            del self.errors[0]
        self.error = f"{error.type}: {error.message}"

    def add_log(self, entry: LogEntry) -> None:
        """Keep a log line (the oldest go once there are too many)."""
        if self.logs is None:
            self.logs = deque(maxlen=MAX_LOG_LINES)
        self.logs.append(entry)

    def snapshot(self) -> Run:
        """An immutable copy for callers."""
        return Run(
            id=self.id,
            job=self.job,
            input=_deep_copy(self.input),
            status=self.status,
            concurrency_key=self.key,
            labels=dict(self.labels),
            idempotency_key=self.idempotency_key,
            parent_run_id=self.parent_run_id,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            trigger_count=self.trigger_count,
            created_at=self.created_at,
            due_at=self.due_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            output=_deep_copy(self.output),
            error=self.error,
            errors=tuple(self.errors or ()),
            progress=self.progress,
            logs=tuple(e.copy() if e.data else e for e in self.logs) if self.logs else (),
            coalesced=tuple(
                CoalescedTrigger(at, _deep_copy(data), parent)
                for at, data, parent in self.coalesced or ()
            ),
            interruptions=self.interruptions,
        )


def _deep_copy(value: Any) -> Any:
    # Stored values are plain JSON (checked on the way in), so this is enough.
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
