"""The shape docs/architecture.md describes, checked on the sources.

One place decides created / queued / coalesced; handles and workers talk to narrow
ports, not to ``Keyflow``'s privates; modules stay small.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import keyflow

PACKAGE = Path(keyflow.__file__).parent
SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))
MAX_LINES = 460
"""About 400 lines, with room for a docstring or two: past it, split by concept."""


def _tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / name).read_text(encoding="utf-8"))


def _callers(function: str) -> set[str]:
    """The modules that call ``function`` by name."""
    found = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                callee = node.func
                name = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", None)
                if name == function:
                    found.add(path.relative_to(PACKAGE).as_posix())
    return found


@pytest.mark.skipif(not (PACKAGE / "state.py").exists(), reason="an installed wheel: no sources")
def test_one_pure_decision_is_applied_by_the_two_coordinators_alone() -> None:
    # The single-process core (admission.py) and the shared database's decisions
    # (shared/decide.py, inside a transaction holding the key's lock) apply the same
    # pure rules; nothing else decides, and no rule is written twice.
    coordinators = {"admission.py", "shared/decide.py"}
    assert _callers("plan_trigger") == coordinators
    assert _callers("new_run_disposition") == coordinators
    assert _callers("join_target") <= {"admission.py", "state.py"}


@pytest.mark.skipif(not (PACKAGE / "jobs.py").exists(), reason="an installed wheel: no sources")
@pytest.mark.parametrize("module", ["jobs.py", "context.py", "worker.py"])
def test_handles_and_workers_use_no_one_elses_privates(module: str) -> None:
    reached = [
        f"{ast.unparse(node.value)}.{node.attr}"
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert reached == []


@pytest.mark.skipif(not SOURCES, reason="an installed wheel: no sources")
def test_modules_stay_small() -> None:
    sizes = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in SOURCES
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
