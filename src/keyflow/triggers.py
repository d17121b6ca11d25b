"""Checking a trigger's arguments before anything is decided or stored."""

from __future__ import annotations

from collections.abc import Mapping

from .coalesce import NAMED_STRATEGIES as _NAMED
from .coalesce import Coalesce, parse_coalesce
from .errors import (
    InvalidCoalesceError,
    InvalidInputError,
    InvalidTriggerError,
    KeyflowError,
    UnknownJobError,
)
from .jobs import DEFAULT, Job  # at run time: compiled code checks PreparedTrigger.job
from .jsonvalue import (
    NotJSONError,
    check_size,
    check_text,
    copy_input,
    copy_json_dict,
    is_finite_number,
    json_object_copy,
    may_be_large,
    safe_repr,
)
from .options import MAX_SECONDS
from .runs import JSONObject
from .trigger_request import TriggerRequest


class PreparedTrigger:
    """A trigger whose arguments were checked and copied (internal).

    A plain class, not a dataclass: a compiled build runs a dataclass's generated
    ``__init__`` as interpreted code, on every trigger.
    """

    __slots__ = (
        "coalesce",
        "delay",
        "idempotency_key",
        "input",
        "job",
        "key",
        "labels",
        "parent_run_id",
    )

    def __init__(
        self,
        job: Job,
        input: JSONObject,
        key: str | None,
        coalesce: Coalesce | None,
        idempotency_key: str | None,
        labels: dict[str, str] | None,
        delay: float,
        parent_run_id: str | None,
    ) -> None:
        self.job = job
        self.input = input
        self.key = key
        self.coalesce = coalesce
        self.idempotency_key = idempotency_key
        self.labels = labels
        self.delay = delay
        self.parent_run_id = parent_run_id


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
    job_name: object,
    input: object,
    concurrency_key: object,
    coalesce_option: object,
    idempotency_key: object,
    labels: object,
    delay: object,
    parent_run_id: object,
) -> PreparedTrigger:
    """Check a trigger's arguments; return them with defaults applied and input copied.

    The arguments are typed ``object``: they come from callers as they are, and this is
    where their types are checked (a compiled build would otherwise refuse a wrong type
    with a bare TypeError before the message that names the problem).

    Raises:
        TriggerError: a subclass naming the problem; nothing was changed.
    """
    if isinstance(job_name, str):
        job = jobs.get(job_name)
    else:  # a Job handle of this scheduler works as its name
        name = getattr(job_name, "name", None)
        job = jobs.get(name) if isinstance(name, str) else None
        if job is not job_name:
            job = None
    if job is None:
        known = ", ".join(repr(name) for name in sorted(jobs)) or "none"
        raise UnknownJobError(f"unknown job {safe_repr(job_name)} (registered jobs: {known})")
    try:
        if type(input) is dict:
            data = copy_input(input)
        else:
            data = _other_input(input)
            if may_be_large(data):
                check_size(data, "$")
    except NotJSONError as exc:
        raise InvalidInputError(f"input of job {job.name!r} is not a JSON object: {exc}") from None
    # Fast paths for the common argument types; the helpers check everything else.
    key = (
        concurrency_key
        if type(concurrency_key) is str and concurrency_key and concurrency_key.isascii()
        else None
    )
    if key is None:
        key = _key(job, concurrency_key, data)
    coalesce: Coalesce | None = None
    if coalesce_option is DEFAULT:
        coalesce = job.coalesce
    else:
        if isinstance(coalesce_option, str):  # not `type() is str`: that narrows a Literal away
            coalesce = _NAMED.get(coalesce_option)
        if coalesce is None:
            coalesce = parse_coalesce(coalesce_option)
    if coalesce is not None and key is None:
        raise InvalidCoalesceError(
            f"coalesce={coalesce.strategy!r} needs a concurrency_key (job {job.name!r} has none)"
        )
    return PreparedTrigger(
        job,
        data,
        key,
        coalesce,
        None if idempotency_key is None else _idempotency_key(idempotency_key),
        _labels(labels) if labels else None,
        _delay(delay) if delay else 0.0,
        None if parent_run_id is None else _parent_run_id(parent_run_id),
    )


def _other_input(input: object) -> JSONObject:
    return {} if input is None else json_object_copy(input)


def _key(job: Job, option: object, data: JSONObject) -> str | None:
    key: object = job.concurrency_key if option is DEFAULT else option
    if callable(key):
        try:
            key = key(copy_json_dict(data))  # a copy: the function cannot change the input
        except KeyflowError:
            raise
        except Exception as exc:
            raise InvalidTriggerError(
                f"concurrency_key function of job {job.name!r} failed: {exc!r}"
            ) from exc
    if key is None:
        return None
    if isinstance(key, str) and key:
        return _text(key, "concurrency_key")
    raise InvalidTriggerError(f"concurrency_key must be a non-empty string, got {safe_repr(key)}")


def _idempotency_key(key: object) -> str:
    if isinstance(key, str) and key:
        return _text(key, "idempotency_key")
    raise InvalidTriggerError(f"idempotency_key must be a non-empty string, got {safe_repr(key)}")


def _parent_run_id(run_id: object) -> str:
    if isinstance(run_id, str) and run_id:
        return _text(run_id, "parent_run_id")
    raise InvalidTriggerError(
        f"parent_run_id must be a run id (a non-empty string) or None, got {safe_repr(run_id)}"
    )


def _text(text: str, name: str) -> str:
    # A value that cannot be stored is bad input, whatever the backend.
    try:
        check_text(text, name)
    except NotJSONError as exc:
        raise InvalidInputError(str(exc)) from None
    return str.__str__(text)  # a str subclass becomes a plain str, as storage reads it


def _labels(labels: object) -> dict[str, str] | None:
    if not labels:
        return None
    if not isinstance(labels, Mapping):
        raise InvalidTriggerError(f"labels must be a mapping of strings, got {safe_repr(labels)}")
    out: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidTriggerError(
                f"labels must map strings to strings; {safe_repr(name)}: {safe_repr(value)} is not"
            )
        out[_text(name, "a label name")] = _text(value, f"label {name!r}")
    return out


def _delay(delay: object) -> float:
    if not is_finite_number(delay) or delay > MAX_SECONDS:
        raise InvalidTriggerError(
            f"delay must be a finite number of seconds, at most {MAX_SECONDS:,} (ten years), "
            f"got {safe_repr(delay)[:100]}"
        )
    if delay < 0:
        raise InvalidTriggerError(f"delay must be >= 0, got {delay!r}")
    return float(delay)
