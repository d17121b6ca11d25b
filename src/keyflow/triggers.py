"""Checking a trigger's arguments before anything is decided or stored."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .coalesce import Coalesce, CoalesceOption, parse_coalesce
from .errors import (
    InvalidCoalesceError,
    InvalidInputError,
    InvalidTriggerError,
    KeyflowError,
    UnknownJobError,
)
from .jobs import DEFAULT, Default
from .jsonvalue import NotJSONError, json_object_copy
from .runs import JSONObject

if TYPE_CHECKING:
    from .jobs import Job


@dataclass(frozen=True, slots=True)
class TriggerRequest:
    """One trigger of a :meth:`keyflow.Keyflow.batch_trigger`; fields as in ``trigger()``."""

    job: str
    input: JSONObject | None = None
    concurrency_key: str | Default | None = DEFAULT
    coalesce: CoalesceOption | Default = DEFAULT
    idempotency_key: str | None = None
    labels: Mapping[str, str] | None = None
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class PreparedTrigger:
    """A trigger whose arguments were checked and copied."""

    job: Job
    input: JSONObject
    key: str | None
    coalesce: Coalesce | None
    idempotency_key: str | None
    labels: dict[str, str] | None
    delay: float
    parent_run_id: str | None


def prepare_trigger(
    jobs: Mapping[str, Job], request: TriggerRequest, parent_run_id: str | None = None
) -> PreparedTrigger:
    """Check ``request`` and return it with defaults applied and input copied.

    Raises:
        TriggerError: a subclass naming the problem; nothing was changed.
    """
    job = jobs.get(request.job) if isinstance(request.job, str) else None
    if job is None:
        known = ", ".join(repr(name) for name in sorted(jobs)) or "none"
        raise UnknownJobError(f"unknown job {request.job!r} (registered jobs: {known})")
    raw = {} if request.input is None else request.input
    try:
        data = json_object_copy(raw)
    except NotJSONError as exc:
        raise InvalidInputError(f"input of job {job.name!r} is not a JSON object: {exc}") from None
    key = _key(job, request.concurrency_key, data)
    coalesce = job.coalesce if request.coalesce is DEFAULT else parse_coalesce(request.coalesce)
    if coalesce is not None and key is None:
        raise InvalidCoalesceError(
            f"coalesce={coalesce.strategy!r} needs a concurrency_key (job {job.name!r} has none)"
        )
    idem = request.idempotency_key
    if idem is not None and (not isinstance(idem, str) or not idem):
        raise InvalidTriggerError(f"idempotency_key must be a non-empty string, got {idem!r}")
    return PreparedTrigger(
        job=job,
        input=data,
        key=key,
        coalesce=coalesce,
        idempotency_key=idem,
        labels=_labels(request.labels),
        delay=_delay(request.delay),
        parent_run_id=parent_run_id,
    )


def _key(job: Job, option: str | Default | None, data: JSONObject) -> str | None:
    key = job.concurrency_key if option is DEFAULT else option
    if callable(key):
        try:
            key = key(data)
        except KeyflowError:
            raise
        except Exception as exc:
            raise InvalidTriggerError(
                f"concurrency_key function of job {job.name!r} failed: {exc!r}"
            ) from exc
    if key is not None and (not isinstance(key, str) or not key):
        raise InvalidTriggerError(f"concurrency_key must be a non-empty string, got {key!r}")
    return key


def _labels(labels: Mapping[str, str] | None) -> dict[str, str] | None:
    if not labels:
        return None
    if not isinstance(labels, Mapping):
        raise InvalidTriggerError(f"labels must be a mapping of strings, got {labels!r}")
    out: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidTriggerError(
                f"labels must map strings to strings; {name!r}: {value!r} is not"
            )
        out[name] = value
    return out


def _delay(delay: float) -> float:
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
        raise InvalidTriggerError(f"delay must be a finite number of seconds, got {delay!r}")
    if delay < 0:
        raise InvalidTriggerError(f"delay must be >= 0, got {delay!r}")
    return float(delay)
