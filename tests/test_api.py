"""The public surface: exports, docstrings, and the virtual clock."""

from __future__ import annotations

import ast
import inspect
import itertools
from pathlib import Path

import pytest

import keyflow
from keyflow.testing import VirtualClock


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(keyflow) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(keyflow, name))}
    modules.add("annotations")  # from __future__ import annotations
    assert set(keyflow.__all__) - {"__version__"} == public - modules
    assert keyflow.__version__


def alias_docstrings() -> dict[str, str]:
    """Type aliases are documented by a string right after them, in their module."""
    docs: dict[str, str] = {}
    for path in Path(keyflow.__file__).parent.rglob("*.py"):
        body = ast.parse(path.read_text()).body
        for statement, following in itertools.pairwise(body):
            target = getattr(statement, "target", None) or next(
                iter(getattr(statement, "targets", [])), None
            )
            if (
                isinstance(target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[target.id] = following.value.value
    return docs


ALIAS_DOCS = alias_docstrings()


@pytest.mark.parametrize("name", sorted(set(keyflow.__all__) - {"__version__"}))
def test_every_public_name_is_documented(name: str) -> None:
    obj = getattr(keyflow, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):  # a type alias
        assert ALIAS_DOCS.get(name), f"keyflow.{name} has no docstring after it"
        return
    assert inspect.getdoc(obj), f"keyflow.{name} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not callable(member):
                continue
            assert inspect.getdoc(member), f"keyflow.{name}.{attr} has no docstring"


def test_errors_share_one_root_and_carry_default_messages() -> None:
    for name in keyflow.__all__:
        obj = getattr(keyflow, name)
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj is not keyflow.Retry:
            assert issubclass(obj, keyflow.KeyflowError)
            assert str(obj())  # the docstring is the default message
    assert not issubclass(keyflow.Retry, keyflow.KeyflowError)
    with pytest.raises(ValueError, match=">= 0"):
        keyflow.Retry(delay=-1)


def test_virtual_clock_fires_timers_in_order() -> None:
    clock = VirtualClock(start=100.0)
    fired: list[tuple[str, float]] = []
    clock.call_at(130, lambda: fired.append(("b", clock.now())))
    clock.call_at(110, lambda: fired.append(("a", clock.now())))
    cancelled = clock.call_at(120, lambda: fired.append(("x", clock.now())))
    cancelled.cancel()
    clock.advance(15)
    assert fired == [("a", 110)]
    assert clock.now() == 115
    assert clock.jump()
    assert fired == [("a", 110), ("b", 130)]
    assert not clock.jump()
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)


def test_str_enums_compare_and_hash_as_their_values() -> None:
    assert keyflow.RunStatus.QUEUED.value == "queued"
    assert str(keyflow.RunStatus.QUEUED) == "queued"
    assert {"queued": 1}[keyflow.RunStatus.QUEUED] == 1
    assert keyflow.Disposition("coalesced") is keyflow.Disposition.COALESCED
