"""The build under test is the one asked for (``make test`` runs the suite on both)."""

from __future__ import annotations

import os

import pytest

from keyflow.build import HOT_PATH_MODULES, compiled_modules, describe


def test_the_build_under_test_is_the_one_asked_for() -> None:
    wanted = os.environ.get("KEYFLOW_EXPECT_COMPILED")
    if wanted is None:
        pytest.skip("KEYFLOW_EXPECT_COMPILED is not set (make pytest-compiled sets it)")
    expected = list(HOT_PATH_MODULES) if wanted == "1" else []
    assert compiled_modules() == expected
    assert describe().startswith("compiled" if expected else "pure Python")
