"""Runs as JSON rows: the form the durable backends store and read back.

A row is a plain dict of JSON values holding every persistent field of a run, so a
backend can write it as text (SQLite) or as a line of a journal (JSON file). Rows are
made while the scheduler waits (before a backend's first ``await``) and share only
values the scheduler never changes in place (inputs, outputs and labels are replaced,
never mutated), so a row stays the state it was made from.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from typing import Any

from ..errors import StorageCorruptError
from ..jsonvalue import NotJSONError, json_copy, safe_repr, storable_text
from ..records import MAX_COALESCED_KEPT, MAX_LOG_LINES, RunRecord
from ..runs import AttemptError, LogEntry, Progress, Run, RunStatus

Row = dict[str, Any]
"""One run, as JSON values."""

logger = logging.getLogger("keyflow.storage")

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
        "stop_interrupted": record.stop_interrupted,
        "by_queue": record.by_queue,
    }


def row_record(row: Row) -> RunRecord:
    """A live record rebuilt from ``row`` (durable: it came from storage).

    Raises:
        StorageCorruptError: the row is not a run this version can read.
    """
    if not isinstance(row, dict):
        raise StorageCorruptError(
            f"a stored run is a JSON {type(row).__name__}, not an object: unreadable"
        )
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
        record.stop_interrupted = bool(row.get("stop_interrupted", False))  # (since 0.2)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StorageCorruptError(
            f"stored run {safe_repr(row.get('id'))} is unreadable: {safe_repr(exc)}"
        ) from exc
    return record


def row_run(row: Row) -> Run:
    """The caller's snapshot of a stored row."""
    return row_record(row).snapshot()


def dumps(value: Any) -> str:
    """Compact JSON text (rows hold JSON values only: checked when they came in)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_row(row: Row) -> tuple[Row, str]:
    """The JSON text of ``row``, ready to write as UTF-8; and the row it stands for.

    Every value was checked storable on its way in. Should one slip through anyway (a
    keyflow bug), the run is stored with that value made safe (text escaped, a huge
    number replaced by a note) rather than blocking storage for everyone: the returned
    row is then that safe copy.
    """
    try:
        text = dumps(row)
        if not text.isascii():
            text.encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        logger.error(
            "run %s holds a value storage cannot write (%r); stored made safe", row.get("id"), exc
        )
        row = _made_safe(row)
        text = dumps(row)
    return row, text


def loads_row(text: str | bytes, where: str) -> Row:
    """A row read back from storage.

    Raises:
        StorageCorruptError: the text is not a JSON object (``where`` names the place).
    """
    try:
        row = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise StorageCorruptError(f"{where} holds a run that is not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise StorageCorruptError(f"{where} holds a run that is a JSON {type(row).__name__}")
    return row


def _made_safe(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        try:
            json_copy(value)
        except NotJSONError:
            return f"<an integer of about {value.bit_length() * 3 // 10} digits>"
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): _made_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_made_safe(v) for v in value]
    return safe_repr(value)


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
