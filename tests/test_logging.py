"""keyflow's own log lines (issue: first contact): failures, retries, poison pills,
storage failures and recoveries, start and stop, under ``logging.getLogger("keyflow")``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus

from .conftest import MakeKeyflow
from .fakes import DiskLikeBackend
from .test_durability import stored_run, write_records


def lines(caplog: pytest.LogCaptureFixture, logger: str, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


async def test_each_failed_attempt_is_a_warning_naming_the_run(
    make_keyflow: MakeKeyflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyflow")
    kf = make_keyflow()

    @kf.job(retries=1, backoff=0)
    async def flaky(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        raise ConnectionError(f"down on attempt {ctx.attempt}")

    await kf.start()
    run = await flaky.trigger_and_wait({}, concurrency_key="k", timeout=5)
    assert run.status is RunStatus.FAILED
    warnings = lines(caplog, "keyflow.worker", logging.WARNING)
    assert len(warnings) == 2
    first, last = warnings
    for line in (first, last):
        assert run.id in line
        assert "job 'flaky'" in line
        assert "key 'k'" in line
        assert "ConnectionError" in line
    assert "attempt 1 of 2" in first
    assert "down on attempt 1" in first
    assert "retry in 0s" in first
    assert "attempt 2 of 2" in last
    assert "no retry left: the run failed" in last


async def test_start_and_stop_are_summed_up(
    make_keyflow: MakeKeyflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyflow")
    kf = make_keyflow(workers=3)

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    async with kf:
        await job.trigger_and_wait({}, timeout=5)
    (started,) = lines(caplog, "keyflow.scheduler", logging.INFO)[:1]
    assert "keyflow started" in started
    assert "3 workers" in started
    stopped = lines(caplog, "keyflow.scheduler", logging.INFO)[-1]
    assert "keyflow stopped" in stopped
    assert "1 run(s) completed" in stopped


async def test_storage_failures_and_recovery_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="keyflow")
    backend = DiskLikeBackend()
    kf = keyflow.Keyflow(storage=backend)

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    async with kf:
        backend.fail = True
        with pytest.raises(keyflow.StorageError):
            await job.trigger({})
        backend.fail = False
        await job.trigger({})
    errors = lines(caplog, "keyflow.commit", logging.ERROR)
    assert errors
    assert "No space left on device" in errors[0]
    assert any("succeed again" in line for line in lines(caplog, "keyflow.commit", logging.WARNING))


async def test_crash_recovery_and_poison_pills_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keyflow")
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    await write_records(
        url,
        stored_run("again", RunStatus.RUNNING, attempt=1),
        stored_run("poison", RunStatus.RUNNING, key="p", attempt=1, crashes=2),
    )
    kf = keyflow.Keyflow(storage=url)

    @kf.job("work")
    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    async with kf:
        await kf.run_until_idle(timeout=5)
    recovery = lines(caplog, "keyflow.recovery", logging.WARNING)
    assert any("again" in line and "crash 1 of 3" in line for line in recovery)
    (poison,) = lines(caplog, "keyflow.recovery", logging.ERROR)
    assert "poison" in poison
    assert "poison pill" in poison


def test_keyflow_adds_no_handler_and_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert logging.getLogger("keyflow").handlers == []
    keyflow.Keyflow()
    assert capsys.readouterr() == ("", "")
