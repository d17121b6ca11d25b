"""The filters of ``Keyflow.list_runs`` and ``count_runs``, checked into a ``RunQuery``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from .errors import ConfigurationError
from .jsonvalue import NotJSONError, check_text, is_finite_number, safe_repr
from .runs import RunStatus
from .storage_backends.base import RunQuery


class RunFilters(TypedDict, total=False):
    """The filters ``list_runs()`` and ``count_runs()`` take; every one given must match.

    Times are epoch seconds (the scheduler's clock): ``*_after`` is inclusive,
    ``*_before`` exclusive; only finished runs match a ``finished_*`` filter.
    """

    job: str | None
    status: RunStatus | str | None
    concurrency_key: str | None
    key_prefix: str | None
    labels: Mapping[str, str] | None
    text: str | None
    created_after: float | None
    created_before: float | None
    finished_after: float | None
    finished_before: float | None


FILTERS = frozenset(RunFilters.__annotations__)
"""The names :class:`RunFilters` allows."""


def build_query(filters: RunFilters, *, limit: int = 0, offset: int = 0) -> RunQuery:
    """The storage query for ``filters``.

    Raises:
        ConfigurationError: a filter is not valid (the message names it).
    """
    unknown = set(filters) - FILTERS
    if unknown:
        raise ConfigurationError(f"unknown filter(s): {', '.join(sorted(unknown))}")
    for name in ("job", "concurrency_key", "key_prefix", "text"):
        value = filters.get(name)
        if value is not None:
            _check_text(value, name)
    status = filters.get("status")
    try:
        wanted = None if status is None else RunStatus(status)
    except ValueError:
        known = ", ".join(repr(s.value) for s in RunStatus)
        raise ConfigurationError(
            f"unknown status {safe_repr(status)}; expected one of {known}"
        ) from None
    labels = filters.get("labels")
    if labels is not None and not isinstance(labels, Mapping):
        raise ConfigurationError(f"labels must be a mapping of strings, got {safe_repr(labels)}")
    pairs = tuple(sorted((labels or {}).items()))
    for name, value in pairs:
        _check_text(name, "a label name")
        _check_text(value, f"label {name!r}")
    times = {
        name: _time(filters.get(name), name)
        for name in ("created_after", "created_before", "finished_after", "finished_before")
    }
    return RunQuery(
        job=filters.get("job"),
        status=wanted,
        key=filters.get("concurrency_key"),
        labels=pairs,
        text=filters.get("text") or None,
        key_prefix=filters.get("key_prefix") or None,
        created_after=times["created_after"],
        created_before=times["created_before"],
        finished_after=times["finished_after"],
        finished_before=times["finished_before"],
        limit=limit,
        offset=offset,
    )


def _check_text(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, got {safe_repr(value)}")
    try:
        check_text(value, name)
    except NotJSONError as exc:
        raise ConfigurationError(str(exc)) from None


def _time(value: object, name: str) -> float | None:
    if value is None:
        return None
    if not is_finite_number(value):
        raise ConfigurationError(
            f"{name} must be a finite time in epoch seconds, got {safe_repr(value)}"
        )
    return float(value)
