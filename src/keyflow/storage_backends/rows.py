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
from typing import Any, Final

import msgspec

from ..errors import StorageCorruptError
from ..jsonvalue import safe_repr, storable_text
from ..records import MAX_COALESCED_KEPT, MAX_LOG_LINES, RunRecord
from ..runs import AttemptError, LogEntry, Progress, Run, RunStatus

Row = dict[str, Any]
"""One run, as JSON values."""

logger = logging.getLogger("keyflow.storage")

FORMAT_VERSION = 1
"""The layout of a row; stored with the data so a later version can migrate it."""


def record_row(record: RunRecord) -> Row:
    """The persistent fields of ``record`` now.

    What a start changes comes first, always in this order, numbers and literals only
    (:data:`START_PREFIX`): a shared database starts a claimed run by rewriting that
    prefix of its stored text (``keyflow.shared.sql.CLAIM``), the rest untouched.
    """
    progress = record.progress
    return {
        "status": record.status.value,
        "attempt": record.attempt,
        "starts": record.starts,
        "started_at": record.started_at,
        "stop_interrupted": record.stop_interrupted,
        "id": record.id,
        "job": record.job,
        "key": record.key,
        "input": record.input,
        "labels": record.labels,
        "idempotency_key": record.idempotency_key,
        "parent_run_id": record.parent_run_id,
        "max_attempts": record.max_attempts,
        "trigger_count": record.trigger_count,
        "created_at": record.created_at,
        "due_at": record.due_at,
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


START_PREFIX: Final = (
    r'^(\{"status":"pending","attempt":([0-9]+),"starts":([0-9]+),"started_at":[^,]*,'
    r'"stop_interrupted":(true|false),)'
)
"""A POSIX regular expression for the start of a pending run's stored text (see
:func:`record_row`): the whole prefix, its attempt, its starts, and whether a stop cut
its last attempt short."""


_NUMBER = (int, float)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "job": (str,),
    "key": (str, type(None)),
    "status": (str,),
    "input": (dict,),
    "labels": (dict, type(None)),
    "idempotency_key": (str, type(None)),
    "parent_run_id": (str, type(None)),
    "attempt": (int,),
    "max_attempts": (int,),
    "trigger_count": (int,),
    "created_at": _NUMBER,
    "due_at": _NUMBER,
    "started_at": (*_NUMBER, type(None)),
    "finished_at": (*_NUMBER, type(None)),
    "error": (str, type(None)),
    "errors": (list,),
    "progress": (list, type(None)),
    "logs": (list,),
    "coalesced": (list,),
    "interruptions": (int,),
    "crashes": (int,),
    "retries_used": (int,),
    "cancel_requested": (bool,),
    "by_queue": (bool,),
}
"""What each field of a stored run must be; anything else is a corrupt row."""


def _check_types(row: Row) -> None:
    for name, types in _FIELD_TYPES.items():
        if name not in row:
            raise ValueError(f"it has no {name!r}")
        value = row[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"its {name!r} is {safe_repr(value)[:60]}")
    labels = row["labels"] or {}
    if not all(isinstance(n, str) and isinstance(v, str) for n, v in labels.items()):
        raise ValueError("its labels are not all text")


def check_row(row: object, where: str) -> Row:
    """``row`` if it is a run this version can read.

    Raises:
        StorageCorruptError: naming ``where``, the run and the field.
    """
    if not isinstance(row, dict):
        raise StorageCorruptError(
            f"{where} holds a run that is a JSON {type(row).__name__}, not an object"
        )
    try:
        _check_types(row)
        RunStatus(row["status"])
    except ValueError as exc:
        raise StorageCorruptError(
            f"{where}: stored run {safe_repr(row.get('id'))} is unreadable: {exc}"
        ) from None
    return row


def row_record(row: Row, where: str = "storage") -> RunRecord:
    """A live record rebuilt from ``row`` (durable: it came from storage).

    Args:
        row: the stored row.
        where: the file (or store) it came from, for the error message.

    Raises:
        StorageCorruptError: the row is not a run this version can read.
    """
    if not isinstance(row, dict):
        raise StorageCorruptError(
            f"{where} holds a run that is a JSON {type(row).__name__}, not an object"
        )
    try:
        _check_types(row)
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
        starts = row.get("starts", record.attempt)  # (since 0.2: before, attempts)
        record.starts = starts if isinstance(starts, int) else record.attempt
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StorageCorruptError(
            f"{where}: stored run {safe_repr(row.get('id'))} is unreadable: {exc}"
        ) from exc
    return record


def row_run(row: Row) -> Run:
    """The caller's snapshot of a stored row."""
    return row_record(row).snapshot()


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# Never changed: one encoder for every call (json.dumps with options builds one per call).
_FAST_ENCODER: Final = msgspec.json.Encoder()
# msgspec's: the same compact text (exponents written 1e16, not 1e+16) about six times
# faster; every durable write encodes its runs on the event loop.


def dumps(value: Any) -> str:
    """Compact JSON text (rows hold JSON values only: checked when they came in).

    What the fast encoder refuses (a lone surrogate, which UTF-8 cannot hold) is
    encoded by the standard library's, whose text the callers check and make safe.
    """
    try:
        return _FAST_ENCODER.encode(value).decode()
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return _ENCODER.encode(value)


MAX_ROW_CHARS = 64 << 20
"""A stored run longer than this (64 Mi characters) is stored slimmed (see encode_row)."""


def encode_row(row: Row) -> tuple[Row, str]:
    """The JSON text of ``row``, ready to write as UTF-8; and the row it stands for.

    Every value was checked storable on its way in, and sizes are bounded. Should a row
    still be unwritable (a keyflow bug, an application that lowered Python's integer
    limit after the fact), it is stored made safe (text escaped, a huge number replaced
    by a note), and a row too long for storage is stored slimmed (logs, joined inputs and
    old errors dropped): never does one run block storage for everyone. The returned row
    is then that copy.
    """
    try:
        text = _encoded(row)
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        logger.error(
            "run %s holds a value storage cannot write (%r); stored made safe",
            safe_repr(row.get("id")),
            exc,
        )
        row = _made_safe(row)
        text = _encoded(row)
    if len(text) > MAX_ROW_CHARS:
        logger.error(
            "run %s is %d characters long; stored without its logs, joined inputs and older errors",
            safe_repr(row.get("id")),
            len(text),
        )
        row = _slimmed(row)
        text = _encoded(row)
    return row, text


def encode_rows(rows: list[Row]) -> tuple[list[Row], str]:
    """The JSON array text of ``rows``, and the rows it stands for: ``encode_row`` of each.

    The same text as joining each row's ``encode_row``; made in one piece when every row
    is writable as it is and the whole fits in ``MAX_ROW_CHARS`` (then so does each row),
    else row by row, so that one unwritable or oversized run is stored made safe or
    slimmed and never blocks the others.
    """
    try:
        text = _encoded(rows)
    except (ValueError, TypeError):
        pass  # a row storage cannot write as it is: found and made safe below
    else:
        if len(text) <= MAX_ROW_CHARS:
            return rows, text
    encoded = [encode_row(row) for row in rows]
    return [row for row, _ in encoded], "[" + ",".join(text for _, text in encoded) + "]"


def _encoded(row: Row | list[Row]) -> str:
    text = dumps(row)
    if not text.isascii():
        text.encode("utf-8")
    return text


def _slimmed(row: Row) -> Row:
    slim = dict(row)
    slim["logs"] = []
    slim["coalesced"] = [[at, {}, parent] for at, _input, parent in row.get("coalesced") or []]
    slim["errors"] = (row.get("errors") or [])[-5:]
    if len(dumps(slim.get("output"))) > MAX_ROW_CHARS // 4:
        slim["output"] = "<output too long to store>"
    return slim


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
            str(value)  # printable under Python's current limit?
        except ValueError:
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
