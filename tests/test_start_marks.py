"""Start marks (issue: reliability): a run is known as started before its handler runs.

Each worker overwrites its own slot of ``<storage file>.starts`` before a handler, so a
process that dies inside the handler is counted as a crash at the next start without
every run waiting for a commit first. The subprocess poison-pill test in
``test_reliability_restart.py`` kills real processes; these check the file and the
fallback when a mark cannot be written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.storage_backends import open_backend
from keyflow.storage_backends.startmarks import SLOT, StartMarks

from .conftest import storage_url_for
from .test_durability import stored_run, write_records


def test_marks_survive_a_reopen_and_torn_slots_read_as_nothing(tmp_path: Path) -> None:
    path = tmp_path / "runs.db.starts"
    marks = StartMarks(path)
    assert marks.open() == {}
    assert marks.mark(0, "a", 1)
    assert marks.mark(2, "b", 3)
    assert marks.mark(0, "c", 2)  # the worker moved on: its slot says so
    marks.close()
    assert not marks.mark(1, "d", 1)  # closed: the caller waits for a commit instead

    with path.open("r+b") as raw:  # a slot cut short by a crash mid-write
        raw.seek(SLOT + 3)
        raw.write(b"bad")
        raw.seek(4 * SLOT)
        raw.write(b"x" * 10)
    again = StartMarks(path)
    assert again.open() == {"c": 2, "b": 3}
    assert not again.mark(0, "r" * SLOT, 1)  # cannot fit: not written, nothing torn
    again.clear()
    again.close()
    assert StartMarks(path).open() == {}


@pytest.fixture(params=("sqlite", "json"))
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return storage_url_for(request.param, tmp_path)


def marks_path(storage_url: str) -> Path:
    return Path(storage_url.split(":///", 1)[1] + ".starts")


async def test_the_mark_is_written_before_the_handler_and_emptied_after_recovery(
    storage_url: str,
) -> None:
    # The row of a run killed right after its mark still says "pending".
    await write_records(storage_url, stored_run("dead", RunStatus.PENDING, attempt=0))
    marks = StartMarks(marks_path(storage_url))
    marks.open()
    assert marks.mark(5, "dead", 1)
    marks.close()

    seen: dict[str, dict[str, int]] = {}
    kf = keyflow.Keyflow(storage=storage_url, workers=2)

    @kf.job()
    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        reader = StartMarks(marks_path(storage_url))
        seen[ctx.run_id] = reader.open()
        reader.close()

    async with kf:
        await kf.run_until_idle(timeout=10)
        run = await kf.get_run("dead")
        fresh = await work.trigger({})
        await kf.run_until_idle(timeout=10)
    assert run is not None
    # Found started: a crash, so its rerun is attempt 2 and a suspect run alone.
    assert (run.status, run.interruptions, run.attempt) == (RunStatus.COMPLETED, 1, 2)
    assert any("crash of its process" in line.message for line in run.logs)
    # The dead process's mark was forgotten once recovery was written; each handler
    # found its own start marked in its worker's slot.
    assert seen["dead"] == {"dead": 2}
    assert seen[fresh.run_id][fresh.run_id] == 1
    assert marks_path(storage_url).stat().st_size <= 2 * SLOT  # slot 5 is gone


async def test_a_mark_behind_or_level_with_its_row_is_no_crash(storage_url: str) -> None:
    # A clean stop leaves marks behind; the rows say as much or more.
    await write_records(
        storage_url,
        stored_run("cut", RunStatus.PENDING, attempt=1, starts=1, stop_interrupted=True),
    )
    marks = StartMarks(marks_path(storage_url))
    marks.open()
    assert marks.mark(0, "cut", 1)
    assert marks.mark(1, "long-gone", 7)  # finished and pruned since: ignored
    marks.close()
    attempts: list[int] = []
    kf = keyflow.Keyflow(storage=storage_url, workers=2)

    @kf.job()
    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        attempts.append(ctx.attempt)

    async with kf:
        await kf.run_until_idle(timeout=10)
        run = await kf.get_run("cut")
    assert run is not None
    assert (run.status, run.interruptions, attempts) == (RunStatus.COMPLETED, 0, [1])
    assert not any("crash" in line.message for line in run.logs)


async def test_without_a_mark_the_worker_waits_for_the_commit(storage_url: str) -> None:
    backend = open_backend(storage_url, retention=1000)
    kf = keyflow.Keyflow(storage=backend, workers=2)
    stored: list[RunStatus | None] = []

    @kf.job()
    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        run = await backend.get_run(ctx.run_id)
        stored.append(None if run is None else run.status)

    async with kf:
        assert backend.start_marks is not None
        backend.start_marks.close()  # every mark fails from now on
        for _ in range(4):
            await work.trigger({})
        await kf.run_until_idle(timeout=10)
    assert stored == [RunStatus.RUNNING] * 4


async def test_a_marks_file_that_cannot_be_opened_fails_the_start(storage_url: str) -> None:
    marks_path(storage_url).parent.mkdir(parents=True, exist_ok=True)
    marks_path(storage_url).mkdir()
    kf = keyflow.Keyflow(storage=storage_url)
    with pytest.raises(keyflow.StorageError, match=r"\.starts"):
        await kf.start()
    marks_path(storage_url).rmdir()
    again = keyflow.Keyflow(storage=storage_url)  # nothing was left locked
    async with again:
        assert again.running


@pytest.mark.parametrize("scheme", ["sqlite", "json"])
async def test_a_marks_file_that_is_a_link_is_refused_and_its_target_untouched(
    scheme: str, tmp_path: Path
) -> None:
    """keyflow overwrites <storage>.starts: it must never write through a link."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n" * 100)
    name = "runs.db" if scheme == "sqlite" else "runs.json"
    (tmp_path / f"{name}.starts").symlink_to(victim)
    kf = keyflow.Keyflow(storage=f"{scheme}:///{tmp_path / name}")
    with pytest.raises(keyflow.StorageError, match="symbolic link"):
        await kf.start()
    assert victim.read_text() == "precious\n" * 100


async def test_damaged_marks_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marks = StartMarks(tmp_path / "runs.db.starts")
    marks.open()
    assert marks.mark(0, "run-1", 1)
    marks.close()
    with (tmp_path / "runs.db.starts").open("r+b") as f:
        f.seek(SLOT)
        f.write(b"\x8f garbage that is no mark" * 5)
    again = StartMarks(tmp_path / "runs.db.starts")
    assert again.open() == {"run-1": 1}  # the good slot still counts
    again.close()
    assert "start marks are damaged" in caplog.text
