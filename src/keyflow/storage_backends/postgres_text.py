"""What PostgreSQL's text columns can hold, checked before anything is written.

Two limits, both refused with a clear error naming the field rather than left to the
server's error deep in a write (which, in the single-writer mode, would fail the whole
batch it rides in):

* no NUL character: PostgreSQL text cannot hold one;
* at most :data:`MAX_TEXT_BYTES` bytes (UTF-8) in a job name, concurrency key,
  idempotency key, label name or label value: each is indexed (alone or beside another
  of them), and a btree index entry must fit in a third of a page (2704 bytes with
  PostgreSQL's default 8 kB pages). Two such texts in one entry, plus the entry's
  headers, stay under it.

Run data (input, output, logs) is JSON in an unindexed column: neither limit applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ..errors import InvalidInputError
from ..records import RunRecord
from .base import RunQuery

MAX_TEXT_BYTES: Final = 1024
"""The longest job name, concurrency key, idempotency key, label name or label value
PostgreSQL storage takes, in bytes of UTF-8."""

NUL: Final = "\x00"


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored in an indexed PostgreSQL column, or None."""
    if NUL in text:
        return "holds a NUL character"
    if len(text) * 4 <= MAX_TEXT_BYTES:  # short enough however it encodes
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        return (
            f"is {size} bytes long (UTF-8); PostgreSQL storage takes at most "
            f"{MAX_TEXT_BYTES} bytes in a job name, concurrency key, idempotency key, "
            "label name or label value"
        )
    return None


def unstorable(
    job: str, key: str | None, idempotency_key: str | None, labels: Mapping[str, str] | None
) -> str | None:
    """Why a run with these texts cannot be stored in PostgreSQL, or None.

    The reason names the field: ``"its concurrency key holds a NUL character"``.
    """
    fields = [("job name", job), ("concurrency key", key), ("idempotency key", idempotency_key)]
    for name, value in (labels or {}).items():
        fields += [("label name", name), ("label value", value)]
    for field, text in fields:
        problem = None if text is None else text_problem(text)
        if problem is not None:
            return f"its {field} {problem}"
    return None


def refuse_unstorable(
    job: str, key: str | None, idempotency_key: str | None, labels: Mapping[str, str] | None
) -> None:
    """Refuse a trigger whose texts PostgreSQL cannot hold, before any write.

    Raises:
        InvalidInputError: a text holds a NUL or is longer than :data:`MAX_TEXT_BYTES`
            (retrying never helps).
    """
    reason = unstorable(job, key, idempotency_key, labels)
    if reason is not None:
        raise InvalidInputError(
            f"a run of job {shortened(job)} cannot be stored in PostgreSQL: {reason}"
        )


def nul_field(
    job: str, key: str | None, idempotency_key: str | None, labels: Mapping[str, str] | None
) -> str | None:
    """Which of a run's text fields holds a NUL (PostgreSQL text cannot), if any."""
    if NUL in job:
        return "job"
    if key is not None and NUL in key:
        return "concurrency key"
    if idempotency_key is not None and NUL in idempotency_key:
        return "idempotency key"
    if labels and any(NUL in n or NUL in v for n, v in labels.items()):
        return "labels"
    return None


def shortened(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, cut at ``limit`` characters (a 1 MB key is not shown)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def run_refusal(record: RunRecord) -> InvalidInputError | None:
    """The error that refuses ``record``, if PostgreSQL cannot hold one of its texts."""
    if NUL in record.id:
        return refusal(record.id, "its id holds a NUL character")
    reason = unstorable(record.job, record.key, record.idempotency_key, record.labels)
    return None if reason is None else refusal(record.id, reason)


def refusal(run_id: str, reason: str) -> InvalidInputError:
    """The error that refuses run ``run_id`` for ``reason`` (see :func:`unstorable`)."""
    return InvalidInputError(f"run {shortened(run_id)} cannot be stored in PostgreSQL: {reason}")


def nul_in_query(query: RunQuery) -> bool:
    """Whether a question holds a NUL: no stored text does, and PostgreSQL refuses to compare."""
    texts = (query.job, query.key, query.key_prefix, query.text)
    return any(t is not None and NUL in t for t in texts) or any(
        NUL in n or NUL in v for n, v in query.labels
    )
