"""README.md as written: its Python blocks run, its commands exist, its table is current.

The blocks are read from the file itself, so the README cannot drift from the code.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from keyflow.demo.report import table
from keyflow.demo.runner import compare

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every fenced block of ``language`` in the README."""
    text = README.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) == language:
            line = text.count("\n", 0, match.start(2)) + 1
            found.append((line, match.group(2)))
    return found


PYTHON = blocks("python")


def test_the_readme_has_python_blocks() -> None:
    assert len(PYTHON) >= 6


@pytest.mark.parametrize(("line", "code"), PYTHON, ids=[f"README.md:{n}" for n, _ in PYTHON])
def test_every_python_block_runs_as_written(
    line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # blocks may name storage files
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)


def test_the_first_two_commands_are_make_targets() -> None:
    _, first = blocks("sh")[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert commands[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)


def test_the_compare_table_is_what_the_demo_prints() -> None:
    reports = asyncio.run(compare(24))
    printed = table(reports)
    shown = next(code for _, code in blocks("text") if "A/skip" in code)
    assert printed in shown
