"""Checking a trigger's arguments before anything is decided or stored."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .coalesce import NAMED_STRATEGIES as _NAMED
from .coalesce import Coalesce, CoalesceOption, parse_coalesce
from .errors import (
    InvalidCoalesceError,
    InvalidInputError,
    InvalidTriggerError,
    KeyflowError,
    UnknownJobError,
)
from .jobs import DEFAULT, Default
from .jsonvalue import NotJSONError, copy_json_dict, json_object_copy
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


@dataclass(slots=True)
class PreparedTrigger:
    """A trigger whose arguments were checked and copied (internal; not frozen for speed)."""

    job: Job
    input: JSONObject
    key: str | None
    coalesce: Coalesce | None
    idempotency_key: str | None
    labels: dict[str, str] | None
    delay: float
    parent_run_id: str | None


def prepare_request(
    jobs: Mapping[str, Job], request: TriggerRequest, parent_run_id: str | None = None
) -> PreparedTrigger:
    """:func:`prepare_trigger` for a :class:`TriggerRequest`."""
    return prepare_trigger(
        jobs,
        request.job,
        request.input,
        request.concurrency_key,
        request.coalesce,
        request.idempotency_key,
        request.labels,
        request.delay,
        parent_run_id,
    )


def prepare_trigger(
    jobs: Mapping[str, Job],
    job_name: str,
    input: JSONObject | None,
    concurrency_key: str | Default | None,
    coalesce_option: CoalesceOption | Default,
    idempotency_key: str | None,
    labels: Mapping[str, str] | None,
    delay: float,
    parent_run_id: str | None,
) -> PreparedTrigger:
    """Check a trigger's arguments; return them with defaults applied and input copied.

    Raises:
        TriggerError: a subclass naming the problem; nothing was changed.
    """
    job = jobs.get(job_name) if isinstance(job_name, str) else None
    if job is None:
        known = ", ".join(repr(name) for name in sorted(jobs)) or "none"
        raise UnknownJobError(f"unknown job {job_name!r} (registered jobs: {known})")
    try:
        data = copy_json_dict(input) if type(input) is dict else _other_input(input)
    except NotJSONError as exc:
        raise InvalidInputError(f"input of job {job.name!r} is not a JSON object: {exc}") from None
    # Fast paths for the common argument types; the helpers check everything else.
    key = concurrency_key if type(concurrency_key) is str and concurrency_key else None
    if key is None:
        key = _key(job, concurrency_key, data)
    if coalesce_option is DEFAULT:
        coalesce = job.coalesce
    else:
        coalesce = _NAMED.get(coalesce_option) if type(coalesce_option) is str else None
        if coalesce is None:
            coalesce = parse_coalesce(coalesce_option)
    if coalesce is not None and key is None:
        raise InvalidCoalesceError(
            f"coalesce={coalesce.strategy!r} needs a concurrency_key (job {job.name!r} has none)"
        )
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not idempotency_key
    ):
        raise InvalidTriggerError(
            f"idempotency_key must be a non-empty string, got {idempotency_key!r}"
        )
    return PreparedTrigger(
        job,
        data,
        key,
        coalesce,
        idempotency_key,
        _labels(labels) if labels else None,
        _delay(delay) if delay else 0.0,
        parent_run_id,
    )


def _other_input(input: object) -> JSONObject:
    return {} if input is None else json_object_copy(input)


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
