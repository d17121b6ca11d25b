"""Checking and copying JSON values.

A run's input must be a JSON object; a handler's output any JSON value. Both are
copied on the way in, so later changes to the caller's objects never reach a stored run.
"""

from __future__ import annotations

import math
from typing import Any, Final

from .runs import JSONObject

_SCALARS: Final = (str, int, bool, type(None))
_EXACT_SCALARS: Final = frozenset({str, int, bool, type(None)})


class NotJSONError(ValueError):
    """The value cannot be stored as JSON; the message says where and why."""


def json_copy(value: object, where: str = "$") -> Any:
    """Return a copy of ``value`` made of dict/list/str/int/float/bool/None only.

    Tuples become lists. Dict keys must be strings; floats must be finite.

    Raises:
        NotJSONError: naming the path of the first offending value.
    """
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSONError(f"{where} is {value!r}, which JSON cannot represent")
        return value
    if isinstance(value, dict):
        return copy_json_dict(value, where)
    if isinstance(value, list | tuple):
        return [json_copy(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise NotJSONError(f"{where} is a {type(value).__name__}, which is not a JSON value")


def copy_json_dict(value: dict[Any, Any], where: str = "$") -> JSONObject:
    """Copy a dict as a JSON object (see :func:`json_copy`)."""
    out: JSONObject = {}
    for k, v in value.items():
        if type(k) is not str:
            if not isinstance(k, str):
                raise NotJSONError(f"{where} has a non-string key {k!r}")
            k = str(k)
        # Exact types first: the common case costs one set lookup per value.
        out[k] = v if type(v) in _EXACT_SCALARS else json_copy(v, f"{where}.{k}")
    return out


def json_object_copy(value: object) -> JSONObject:
    """Like :func:`json_copy`, but the value itself must be a dict (a JSON object)."""
    if not isinstance(value, dict):
        raise NotJSONError(f"expected a JSON object (dict), got {type(value).__name__}")
    return copy_json_dict(value, "$")
