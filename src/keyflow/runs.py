"""Public value types: run status, trigger dispositions and run snapshots.

Everything here is immutable. The scheduler keeps its own mutable records and hands
out :class:`Run` snapshots, so a snapshot never changes under the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

JSONObject = dict[str, Any]
"""A JSON object: the type of a run's input."""


class RunStatus(StrEnum):
    """Where a run is in its life.

    ``scheduled`` (not due yet: a delay or a retry backoff) · ``queued`` (due, waiting
    behind an earlier run of its lane) · ``pending`` (due, lane slot held, waiting for a
    worker) · ``running`` · and the terminal ``completed``, ``failed``, ``cancelled``.
    """

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    # Set on every member below. Plain attributes, because the scheduler reads them on
    # every change and an Enum's hash and properties are slow Python code.
    ordinal: int
    """The member's position, for list-indexed tables."""
    is_terminal: bool
    """True for completed, failed and cancelled."""


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
for _ordinal, _status in enumerate(RunStatus):
    _status.ordinal = _ordinal
    _status.is_terminal = _status in TERMINAL_STATUSES


class Disposition(StrEnum):
    """What a trigger did.

    ``created`` (a new run with nothing ahead of it in its lane) · ``queued`` (a new run
    that waits behind an earlier run of its lane) · ``coalesced`` (no new run: the trigger
    joined an existing run) · ``idempotent`` (an earlier trigger with the same
    idempotency key made the run).
    """

    CREATED = "created"
    QUEUED = "queued"
    COALESCED = "coalesced"
    IDEMPOTENT = "idempotent"


class TriggerResult(NamedTuple):
    """The answer to a trigger: the run that covers it, and how.

    Immutable; a named tuple rather than a dataclass because every trigger makes one.
    """

    run_id: str
    """The run that covers the trigger (new, joined, or found by idempotency key)."""
    disposition: Disposition
    """What the trigger did."""
    job: str
    """The job's name."""
    concurrency_key: str | None
    """The lane the run belongs to, if any."""


@dataclass(frozen=True, slots=True)
class AttemptError:
    """The failure of one attempt."""

    attempt: int
    """Which attempt failed (1-based)."""
    type: str
    """The exception's class name."""
    message: str
    """``str()`` of the exception."""
    traceback: str
    """The formatted traceback."""
    at: float
    """When the attempt failed (epoch seconds)."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line a handler logged through ``ctx.log``."""

    at: float
    """When (epoch seconds)."""
    level: str
    """``info``, ``warning`` or ``error``."""
    message: str
    """The message."""
    data: JSONObject
    """Structured fields passed as keyword arguments."""
    attempt: int
    """The attempt that logged it."""

    def copy(self) -> LogEntry:
        """The same line with its own copy of ``data`` (the record keeps the original)."""
        return LogEntry(self.at, self.level, self.message, _json_copy(self.data), self.attempt)


@dataclass(frozen=True, slots=True)
class Progress:
    """The progress a handler reported through ``ctx.progress``."""

    current: float
    """Work done so far."""
    total: float | None
    """Total work, if known."""
    message: str | None
    """A short human-readable note."""

    @property
    def fraction(self) -> float | None:
        """``current / total`` clamped to [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.current / self.total))


@dataclass(frozen=True, slots=True)
class CoalescedTrigger:
    """A trigger that joined an existing run instead of creating one."""

    at: float
    """When the trigger was accepted (epoch seconds)."""
    input: JSONObject
    """The trigger's own input (before any merge)."""
    parent_run_id: str | None
    """The run whose handler sent the trigger, if any."""


@dataclass(frozen=True, slots=True)
class Run:
    """A snapshot of one run: one execution record of a job."""

    id: str
    """Unique id."""
    job: str
    """The job's name."""
    input: JSONObject
    """The input the handler receives (a copy)."""
    status: RunStatus
    """Current status."""
    concurrency_key: str | None
    """The lane, if any."""
    labels: dict[str, str]
    """String labels given at trigger time."""
    idempotency_key: str | None
    """The idempotency key of the trigger that created the run."""
    parent_run_id: str | None
    """The run whose handler triggered this one, if any."""
    attempt: int
    """How many times the handler was started (0 before the first start)."""
    max_attempts: int
    """1 + the job's retries."""
    trigger_count: int
    """1 + the number of triggers coalesced into this run."""
    created_at: float
    """When the run was created (epoch seconds)."""
    due_at: float
    """When the run is (or was) due to start."""
    started_at: float | None
    """When the latest attempt started."""
    finished_at: float | None
    """When the run became terminal."""
    output: Any
    """The handler's return value (any JSON value) once completed."""
    error: str | None
    """The last error message, if any."""
    errors: tuple[AttemptError, ...]
    """The failure of each failed attempt, oldest first."""
    progress: Progress | None
    """The latest progress report."""
    logs: tuple[LogEntry, ...]
    """The latest log lines (bounded)."""
    coalesced: tuple[CoalescedTrigger, ...]
    """The latest triggers coalesced into this run (bounded; see ``trigger_count``)."""
    interruptions: int
    """How many times an attempt was interrupted by a stop or a crash."""

    @property
    def is_terminal(self) -> bool:
        """True once the run is completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


def _json_copy(value: Any) -> Any:
    # Stored values are plain JSON (checked on the way in), so this is a deep copy.
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value
