"""SIGKILL at random moments, on SQLite, the JSON file and PostgreSQL: nothing acknowledged is lost.

See ``crash_workload.py`` for the workload and every check; this runs it with the
cycle count CI affords. ``python -m tests.crash_workload --cycles 500`` soaks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .crash_workload import crash_test
from .pg import drop_schemas, schema_for

CYCLES = int(os.environ.get("KEYFLOW_CRASH_CYCLES", "20"))


@pytest.mark.parametrize("backend", ["sqlite", "json", "postgresql", "postgresql-shared"])
def test_sigkill_loses_no_acknowledged_trigger(backend: str, tmp_path: Path) -> None:
    # PostgreSQL's checks are the same; half the kills keep the suite's time in bounds.
    cycles = CYCLES // 2 if backend.startswith("postgresql") else CYCLES
    try:
        report, problems = crash_test(backend, cycles, seed=20261128, directory=tmp_path)
    finally:
        if backend.startswith("postgresql"):
            drop_schemas(schema_for(tmp_path))
    assert len(report.boots) == cycles + 1
    # The children did real work before dying (on shared storage each trigger is a
    # database transaction of its own, and a restart waits out its predecessor's leases).
    per_cycle = 5 if backend == "postgresql-shared" else 15
    assert len(report.triggers) > per_cycle * cycles
    assert report.poison_run is not None  # the self-killing handler was in the mix
    assert problems == []
