"""Checking and copying JSON values, and making text safe to store.

A run's input must be a JSON object; a handler's output any JSON value. Both are
copied on the way in, so later changes to the caller's objects never reach a stored run,
and checked to be *storable*: JSON that every backend can write as UTF-8 text and read
back. So, beyond the JSON types, strings must be valid Unicode (no lone surrogates,
which ``os.listdir`` returns for file names that are not UTF-8), integers must be short
enough to print (:data:`MAX_INT_DIGITS`, and Python's own limit if the application
lowered it), nesting at most :data:`MAX_DEPTH` deep, and a whole value at most
:data:`MAX_VALUE_CHARS` characters of JSON.

Text keyflow stores on a handler's behalf (exception messages, tracebacks, log lines)
goes through :func:`storable_text` instead of being refused: a bad character or a huge
message there must not cost the run.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Final, TypeGuard

from .runs import JSONObject

MAX_INT_DIGITS: Final = 4000
"""The longest integer (in decimal digits) a stored value may hold."""
MAX_DEPTH: Final = 100
"""How deeply lists and objects may nest in a stored value."""
MAX_VALUE_CHARS: Final = 1 << 20
"""The longest a stored input or output may be, as JSON text (1 MiB of characters)."""
MAX_TEXT: Final = 10_000
"""The longest text stored on a handler's behalf (a message, a log line, a note)."""
_SHORT: Final = 1024  # see may_be_large
_SAFE_INT: Final = 10**600  # below Python's lowest settable limit (640 digits): printable
_SCALARS: Final = (bool, type(None))


class NotJSONError(ValueError):
    """The value cannot be stored as JSON; the message says where and why."""


def json_copy(value: object, where: str = "$", depth: int = 0) -> Any:
    """Return a copy of ``value`` made of dict/list/str/int/float/bool/None only.

    Tuples become lists. Dict keys must be strings; floats must be finite; strings valid
    Unicode; integers printable; nesting at most :data:`MAX_DEPTH` deep.

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
        if not -_SAFE_INT < value < _SAFE_INT:
            check_int(value, where)
        return value if type(value) is int else int.__int__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSONError(f"{where} is {value!r}, which JSON cannot represent")
        return value if type(value) is float else float.__float__(value)
    if isinstance(value, dict):
        return copy_json_dict(value, where, depth)
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise NotJSONError(f"{where} nests deeper than {MAX_DEPTH} levels")
        return [json_copy(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise NotJSONError(f"{where} is a {type(value).__name__}, which is not a JSON value")


def copy_json_dict(value: dict[Any, Any], where: str = "$", depth: int = 0) -> JSONObject:
    """Copy a dict as a JSON object (see :func:`json_copy`)."""
    if depth >= MAX_DEPTH:
        raise NotJSONError(f"{where} nests deeper than {MAX_DEPTH} levels")
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
            if not -_SAFE_INT < v < _SAFE_INT:
                check_int(v, f"{where}.{k}")
            out[k] = v
        elif t is bool or v is None:
            out[k] = v
        else:
            out[k] = json_copy(v, f"{where}.{k}", depth + 1)
    return out


def copy_input(value: dict[Any, Any]) -> JSONObject:
    """:func:`copy_json_dict` of a trigger's input, refused when too long to store.

    The hot path of every trigger: the copy's own walk tells whether the value could be
    near :data:`MAX_VALUE_CHARS` (many keys, long text, nesting), and only then is it
    measured (what :func:`may_be_large` and :func:`check_size` do, in one walk).

    Raises:
        NotJSONError: as :func:`json_copy`, or the value is too long.
    """
    out: JSONObject = {}
    bulky = len(value) > 64
    for k, v in value.items():
        if type(k) is not str:
            if not isinstance(k, str):
                raise NotJSONError(f"$ has a non-string key {safe_repr(k)}")
            k = str(k)
        if not k.isascii():
            check_text(k, "$ key")
        if len(k) > _SHORT:
            bulky = True
        t = type(v)
        if t is str:
            if not v.isascii():
                check_text(v, f"$.{k}")
            if len(v) > _SHORT:
                bulky = True
            out[k] = v
        elif t is int:
            if not -_SAFE_INT < v < _SAFE_INT:
                check_int(v, f"$.{k}")
            out[k] = v
        elif t is bool or v is None:
            out[k] = v
        else:
            out[k] = json_copy(v, f"$.{k}", 1)
            bulky = True
    if bulky:
        check_size(out, "$")
    return out


def check_int(value: int, where: str) -> None:
    """Refuse an integer too long to write as text (ours or Python's current limit).

    Raises:
        NotJSONError: naming ``where``.
    """
    limit = sys.get_int_max_str_digits() or MAX_INT_DIGITS
    digits = min(MAX_INT_DIGITS, limit)
    if not -(10**digits) < value < 10**digits:
        raise NotJSONError(f"{where} is an integer longer than {digits} digits")


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """True for an int or float (not a bool) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def dumps_text(value: object) -> str:
    """Compact JSON text of a (checked) value."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def check_size(value: object, where: str) -> None:
    """Refuse a (checked) JSON value longer than :data:`MAX_VALUE_CHARS` as text.

    Raises:
        NotJSONError: naming ``where`` and the size.
    """
    size = len(dumps_text(value))
    if size > MAX_VALUE_CHARS:
        raise NotJSONError(
            f"{where} is {size:,} characters of JSON; at most {MAX_VALUE_CHARS:,} are stored"
        )


def may_be_large(value: JSONObject) -> bool:
    """Could ``value`` come near :data:`MAX_VALUE_CHARS`? A cheap test: then measure."""
    # 64 keys and values of at most 1,024 characters each stay under the limit even when
    # every character is written as a six-character escape (\u0001).
    if len(value) > 64:
        return True
    for k, v in value.items():
        if len(k) > _SHORT:
            return True
        t = type(v)
        if t is str:
            if len(v) > _SHORT:
                return True
        elif t is list or t is dict:
            return True
    return False


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


def storable_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` made storable: lone surrogates escaped, the text cut at ``limit``.

    A cut text ends with a note saying how much was left out.
    """
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit:,} more characters)"
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
