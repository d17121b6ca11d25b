"""Checking and copying JSON values, and making text safe to store.

A run's input must be a JSON object; a handler's output any JSON value. Both are
copied on the way in, so later changes to the caller's objects never reach a stored run,
and checked to be *storable*: JSON that every backend can write as UTF-8 text and read
back. So, beyond the JSON types, strings must be valid Unicode (no lone surrogates,
which ``os.listdir`` returns for file names that are not UTF-8) and integers must have
at most :data:`MAX_INT_DIGITS` digits (Python refuses to write longer ones as text).

Text keyflow stores on a handler's behalf (exception messages, tracebacks, log lines)
goes through :func:`storable_text` instead of being refused: a bad character there must
not cost the run.
"""

from __future__ import annotations

import math
from typing import Any, Final

from .runs import JSONObject

MAX_INT_DIGITS: Final = 4000
"""The longest integer (in decimal digits) a stored value may hold."""
_INT_BOUND: Final = 10**MAX_INT_DIGITS
_SCALARS: Final = (bool, type(None))


class NotJSONError(ValueError):
    """The value cannot be stored as JSON; the message says where and why."""


def json_copy(value: object, where: str = "$") -> Any:
    """Return a copy of ``value`` made of dict/list/str/int/float/bool/None only.

    Tuples become lists. Dict keys must be strings; floats must be finite; strings valid
    Unicode; integers at most :data:`MAX_INT_DIGITS` digits long.

    Raises:
        NotJSONError: naming the path of the first offending value.
    """
    # Subclasses (enums...) become their base type: what every backend reads back.
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, str):
        if not value.isascii():
            check_text(value, where)
        return value if type(value) is str else str.__str__(value)
    if isinstance(value, int):
        if not -_INT_BOUND < value < _INT_BOUND:
            raise NotJSONError(f"{where} is an integer longer than {MAX_INT_DIGITS} digits")
        return value if type(value) is int else int.__int__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSONError(f"{where} is {value!r}, which JSON cannot represent")
        return value if type(value) is float else float.__float__(value)
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
                raise NotJSONError(f"{where} has a non-string key {safe_repr(k)}")
            k = str(k)
        if not k.isascii():
            check_text(k, f"{where} key")
        # Exact types first: the common case costs a type test or two per value.
        t = type(v)
        if t is str:
            if not v.isascii():
                check_text(v, f"{where}.{k}")
            out[k] = v
        elif t is int:
            if not -_INT_BOUND < v < _INT_BOUND:
                raise NotJSONError(f"{where}.{k} is an integer longer than {MAX_INT_DIGITS} digits")
            out[k] = v
        elif t is bool or v is None:
            out[k] = v
        else:
            out[k] = json_copy(v, f"{where}.{k}")
    return out


def json_object_copy(value: object) -> JSONObject:
    """Like :func:`json_copy`, but the value itself must be a dict (a JSON object)."""
    if not isinstance(value, dict):
        raise NotJSONError(f"expected a JSON object (dict), got {type(value).__name__}")
    return copy_json_dict(value, "$")


def check_text(text: str, where: str) -> None:
    """Refuse a string that cannot be written as UTF-8 (a lone surrogate).

    Raises:
        NotJSONError: naming ``where`` and the offending position.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotJSONError(
            f"{where} is not valid Unicode text: a lone surrogate "
            f"{text[exc.start]!a} at position {exc.start}"
        ) from None


def storable_text(text: str) -> str:
    """``text`` made writable as UTF-8: a lone surrogate becomes a backslash escape."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def safe_str(value: object) -> str:
    """``str(value)`` as storable text, whatever ``value``'s ``__str__`` does."""
    try:
        text = str(value)
    except Exception as exc:  # a __str__ that raises, an int too long to print ...
        return f"<{type(value).__name__} that cannot be printed: {type(exc).__name__}>"
    return storable_text(text) if isinstance(text, str) else "<not text>"


def safe_repr(value: object) -> str:
    """``repr(value)`` as storable text, whatever ``value``'s ``__repr__`` does."""
    try:
        text = repr(value)
    except Exception as exc:
        return f"<{type(value).__name__} that cannot be shown: {type(exc).__name__}>"
    return storable_text(text) if isinstance(text, str) else "<not text>"
