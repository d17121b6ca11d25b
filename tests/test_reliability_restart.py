"""What a restart meets (issue: reliability): configuration that changed, runs of jobs
that are gone, handlers that killed their process, waiters that raced retention.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.cli import read_only_url
from keyflow.storage_backends import open_backend

from .conftest import DURABLE, MakeKeyflow, fresh_storage_url, storage_url_for
from .fakes import DiskLikeBackend
from .test_durability import Recorder, stored_run, write_records


@pytest.fixture(params=DURABLE)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_storage_url(request, tmp_path)


async def test_a_lower_lane_limit_after_a_restart_keeps_exclusion(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    # Three runs held slots under lane_limit=3 (two were running when the process died,
    # one was about to run); a restart with lane_limit=1 must run them one at a time,
    # the started ones first.
    await write_records(
        storage_url,
        stored_run("a", RunStatus.RUNNING, attempt=1),
        stored_run("b", RunStatus.RUNNING, attempt=1),
        stored_run("c", RunStatus.PENDING),
        stored_run("d", RunStatus.QUEUED),
    )
    executing: list[str] = []
    most = 0
    order: list[str] = []

    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        nonlocal most
        executing.append(ctx.run_id)
        order.append(ctx.run_id)
        most = max(most, len(executing))
        await asyncio.sleep(0)  # let any other run of the lane start, if one could
        await asyncio.sleep(0)
        executing.remove(ctx.run_id)

    kf = make_keyflow(storage=storage_url, lane_limit=1, workers=4)
    kf.job("work")(work)
    await kf.start()
    lane = kf.lane("k")
    assert lane.running == ("a",)
    assert lane.waiting == ("b", "c", "d")
    await kf.run_until_idle(timeout=10)
    assert most == 1
    assert order == ["a", "b", "c", "d"]
    assert {r.status for r in await kf.list_runs()} == {RunStatus.COMPLETED}


async def test_stored_runs_of_an_unregistered_job_fail_and_never_block_their_lane(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    gone = "renamed-away"
    await write_records(
        storage_url,
        stored_run("old-running", RunStatus.RUNNING, attempt=1, job=gone),
        stored_run("old-waiting", RunStatus.QUEUED, job=gone),
        stored_run("old-later", RunStatus.SCHEDULED, key="other", job=gone),
        stored_run("old-pending", RunStatus.PENDING, key="p", job=gone),
        stored_run("mine", RunStatus.QUEUED),
    )
    recorder = Recorder()
    kf = make_keyflow(storage=storage_url)
    kf.job("work")(recorder.handler)
    await kf.start()
    await kf.run_until_idle(timeout=10)  # returns: nothing waits for the unknown job
    runs = {r.id: r for r in await kf.list_runs()}
    for run_id in ("old-running", "old-waiting", "old-later", "old-pending"):
        assert runs[run_id].status is RunStatus.FAILED, run_id
        assert runs[run_id].errors[-1].type == "UnknownJob"
        assert "'renamed-away' is not registered" in (runs[run_id].error or "")
    assert runs["mine"].status is RunStatus.COMPLETED
    assert [run_id for run_id, _, _ in recorder.started] == ["mine"]


async def test_a_start_is_written_before_the_handler_runs() -> None:
    backend = DiskLikeBackend()  # every write suspends, like a disk
    kf = keyflow.Keyflow(storage=backend, workers=2)
    stored_at_start: list[RunStatus | None] = []

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        stored_at_start.append(backend.statuses.get(ctx.run_id))

    await kf.start()
    for _ in range(5):
        await job.trigger({})
    await kf.run_until_idle(timeout=5)
    await kf.stop()
    # At each handler's first line, storage already said "running": a crash inside
    # the handler is found at the next start and counted.
    assert stored_at_start == [RunStatus.RUNNING] * 5


SUICIDE = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import keyflow

    async def main(url: str, log: str, first: bool) -> None:
        kf = keyflow.Keyflow(storage=url)

        @kf.job()
        async def oom(ctx: keyflow.RunContext, input: dict) -> None:
            with open(log, "a") as out:
                out.write(f"{ctx.attempt}\\n")
            os.kill(os.getpid(), signal.SIGKILL)  # first thing, like an OOM kill

        async with kf:
            if first:
                await oom.trigger({})
            await kf.run_until_idle(timeout=30)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "first"))
    """
)


@pytest.mark.parametrize("backend", ["sqlite", "json"])
def test_a_handler_that_kills_its_process_is_failed_as_a_poison_pill(
    backend: str, tmp_path: Path
) -> None:
    url = storage_url_for(backend, tmp_path)
    log = tmp_path / "starts.log"
    codes = []
    for boot in range(5):
        done = subprocess.run(
            [sys.executable, "-c", SUICIDE, url, str(log), "first" if boot == 0 else "again"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        codes.append(done.returncode)
        if done.returncode == 0:
            break
    assert codes == [-9, -9, -9, 0]  # three deaths, then the run is failed, not rerun
    assert log.read_text().split() == ["1", "2", "3"]

    async def stored() -> list[keyflow.Run]:
        reader = open_backend(read_only_url(url), retention=100)
        await reader.open()
        try:
            return await reader.list_runs(keyflow.storage_backends.RunQuery())
        finally:
            await reader.close()

    (run,) = asyncio.run(stored())
    assert run.status is RunStatus.FAILED
    assert run.errors[-1].type == "Crashed"
    assert "poison pill" in run.errors[-1].message
    assert os.path.exists(url.split(":///", 1)[1])
