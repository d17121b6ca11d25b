"""Runs as JSON rows: the form the durable backends store and read back.

A row is a plain dict of JSON values holding every persistent field of a run, so a
backend can write it as text (SQLite) or as a line of a journal (JSON file). Rows are
made while the scheduler waits (before a backend's first ``await``) and share only
values the scheduler never changes in place (inputs, outputs and labels are replaced,
never mutated), so a row stays the state it was made from.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from ..errors import StorageError
from ..records import MAX_COALESCED_KEPT, MAX_LOG_LINES, RunRecord
from ..runs import AttemptError, LogEntry, Progress, Run, RunStatus

Row = dict[str, Any]
"""One run, as JSON values."""

FORMAT_VERSION = 1
"""The layout of a row; stored with the data so a later version can migrate it."""


def record_row(record: RunRecord) -> Row:
    """The persistent fields of ``record`` now."""
    progress = record.progress
    return {
        "id": record.id,
        "job": record.job,
        "key": record.key,
        "status": record.status.value,
        "input": record.input,
        "labels": record.labels,
        "idempotency_key": record.idempotency_key,
        "parent_run_id": record.parent_run_id,
        "attempt": record.attempt,
        "max_attempts": record.max_attempts,
        "trigger_count": record.trigger_count,
        "created_at": record.created_at,
        "due_at": record.due_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "output": record.output,
        "error": record.error,
        "errors": [_error_row(e) for e in record.errors] if record.errors else [],
        "progress": None
        if progress is None
        else [progress.current, progress.total, progress.message],
        "logs": [_log_row(e) for e in record.logs] if record.logs else [],
        "coalesced": [list(entry) for entry in record.coalesced] if record.coalesced else [],
        "interruptions": record.interruptions,
        "crashes": record.crashes,
        "retries_used": record.retries_used,
        "cancel_requested": record.cancel_requested,
        "by_queue": record.by_queue,
    }


def row_record(row: Row) -> RunRecord:
    """A live record rebuilt from ``row`` (durable: it came from storage).

    Raises:
        StorageError: the row is not a run this version can read.
    """
    try:
        record = RunRecord(
            row["id"],
            row["job"],
            row["key"],
            RunStatus(row["status"]),
            row["input"],
            row["created_at"],
            row["due_at"],
            row["max_attempts"],
            row["labels"] or None,
            row["idempotency_key"],
            row["parent_run_id"],
            row["by_queue"],
            True,
        )
        record.attempt = row["attempt"]
        record.trigger_count = row["trigger_count"]
        record.started_at = row["started_at"]
        record.finished_at = row["finished_at"]
        record.output = row["output"]
        record.error = row["error"]
        if row["errors"]:
            record.errors = [AttemptError(**e) for e in row["errors"]]
        if row["progress"] is not None:
            record.progress = Progress(*row["progress"])
        if row["logs"]:
            record.logs = deque((LogEntry(**e) for e in row["logs"]), maxlen=MAX_LOG_LINES)
        if row["coalesced"]:
            record.coalesced = deque(
                (tuple(e) for e in row["coalesced"]),
                maxlen=MAX_COALESCED_KEPT,
            )
        record.interruptions = row["interruptions"]
        record.crashes = row["crashes"]
        record.retries_used = row["retries_used"]
        record.cancel_requested = row["cancel_requested"]
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"stored run {row.get('id')!r} is unreadable: {exc!r}") from exc
    return record


def row_run(row: Row) -> Run:
    """The caller's snapshot of a stored row."""
    return row_record(row).snapshot()


def dumps(value: Any) -> str:
    """Compact JSON text (rows hold JSON values only: checked when they came in)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _error_row(error: AttemptError) -> Row:
    return {
        "attempt": error.attempt,
        "type": error.type,
        "message": error.message,
        "traceback": error.traceback,
        "at": error.at,
    }


def _log_row(entry: LogEntry) -> Row:
    return {
        "at": entry.at,
        "level": entry.level,
        "message": entry.message,
        "data": entry.data,
        "attempt": entry.attempt,
    }
