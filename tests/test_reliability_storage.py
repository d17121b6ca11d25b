"""Storage that fails halfway, files that vanish, read-only opens (issue: reliability).

A full disk, a deleted file or a read-only open must never let a trigger that raised
come back later, never wedge the store after the disk recovers, and never make two
processes run the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.cli import read_only_url
from keyflow.storage_backends import open_backend

from .conftest import DURABLE, MakeKeyflow, files_only, fresh_storage_url, storage_url_for
from .fakes import DiskLikeBackend
from .test_durability import Recorder, stored_run, write_records


@pytest.fixture(params=DURABLE)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_storage_url(request, tmp_path)


def path_of(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


async def stored_runs(url: str) -> dict[str, keyflow.Run]:
    """What a fresh reader of the files finds."""
    reader = open_backend(read_only_url(url), retention=1000)
    await reader.open()
    try:
        runs = await reader.list_runs(keyflow.storage_backends.RunQuery(limit=1000))
    finally:
        await reader.close()
    return {run.id: run for run in runs}


# -- read-only schedulers ------------------------------------------------------------


async def test_a_read_only_scheduler_never_executes_recovers_or_writes(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    writer_handler = Recorder(hold=True)
    writer = make_keyflow(workers=2)
    writer.job("work")(writer_handler.handler)
    await writer.start()
    running = await writer.trigger("work", {"n": 1}, concurrency_key="a")
    await writer_handler.any_started.wait()
    waiting = await writer.trigger("work", {"n": 2}, concurrency_key="a")
    later = await writer.trigger("work", {"n": 3}, delay=3600)
    await writer.list_runs()  # read your writes: everything above is on disk

    reader_handler = Recorder()
    reader = keyflow.Keyflow(storage=read_only_url(storage_url), workers=2)
    reader.job("work")(reader_handler.handler)
    await asyncio.wait_for(reader.start(), timeout=10)  # no crash count to write, no hang
    try:
        for call in (
            reader.trigger("work", {}),
            reader.batch_trigger([keyflow.TriggerRequest("work")]),
            reader.cancel(waiting.run_id),
            reader.retrigger(running.run_id),
        ):
            with pytest.raises(keyflow.ReadOnlyError, match="read-only"):
                await call
        await reader.run_until_idle(timeout=1)  # nothing executes here: returns at once
        assert reader_handler.started == []
        seen = {r.id: r.status for r in await reader.list_runs()}
        assert seen == {
            running.run_id: RunStatus.RUNNING,
            waiting.run_id: RunStatus.QUEUED,
            later.run_id: RunStatus.SCHEDULED,
        }
        # A waiter on the reader hears of the end of a run the writer executes.
        ended = asyncio.ensure_future(reader.wait(running.run_id, timeout=10))
        writer_handler.release.set()
        assert (await ended).status is RunStatus.COMPLETED
        assert reader_handler.started == []
    finally:
        await reader.stop()
    run = await writer.get_run(running.run_id)
    assert run is not None
    assert (run.attempt, run.interruptions) == (1, 0)  # nobody took it for a crash
    await writer.stop()


# -- a real full disk (a small tmpfs; root only) -------------------------------------


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str = "600k", options: str = "") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(mount)]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def backend_of(url: str) -> str:
    return url.split(":", 1)[0]


async def test_a_full_disk_refuses_triggers_cleanly_and_recovers_when_space_frees(
    storage_url: str, tmp_path: Path, make_keyflow: MakeKeyflow
) -> None:
    files_only(storage_url, "a full disk")
    with small_disk(tmp_path) as disk:
        url = storage_url_for(backend_of(storage_url), disk)
        kf = make_keyflow(storage=url)
        kf.job("work")(Recorder().handler)
        await kf.start()
        before = [await kf.trigger("work", {"n": n}, delay=60) for n in range(3)]
        filler = fill(disk)
        errors: list[str] = []
        for n in range(3, 40):  # a few may still fit in space already allocated
            try:
                before.append(await kf.trigger("work", {"n": n, "pad": "y" * 2000}, delay=60))
            except keyflow.StorageError as exc:
                errors.append(str(exc))
        assert errors
        for error in errors:  # the cause, not what the cleanup ran into
            assert "cannot rollback" not in error
            assert "full" in error or "No space" in error
        assert kf.statistics().storage_error is not None
        filler.unlink()  # space is back
        after = await kf.trigger("work", {"n": 99}, delay=60)
        assert kf.statistics().storage_error is None
        await kf.stop()
        stored = await stored_runs(url)
        assert set(stored) == {r.run_id for r in before} | {after.run_id}


# -- files deleted or replaced under a running scheduler -----------------------------


@pytest.mark.parametrize("victim", ["data", "journal", "lock"])
async def test_deleting_the_files_under_a_running_scheduler_fails_writes_loudly(
    make_keyflow: MakeKeyflow, storage_url: str, victim: str
) -> None:
    files_only(storage_url, "files deleted under the writer")
    path = path_of(storage_url)
    kf = make_keyflow()
    kf.job("work")(Recorder().handler)
    await kf.start()
    await kf.trigger("work", {}, delay=60)
    if victim == "data":
        path.unlink()
    elif victim == "journal":
        if storage_url.startswith("sqlite"):
            path.unlink()
            for extra in ("-wal", "-shm"):
                path.with_name(path.name + extra).unlink(missing_ok=True)
        else:
            path.with_name(path.name + ".journal").unlink()
    else:
        path.with_name(path.name + ".lock").unlink()
    with pytest.raises(keyflow.StorageError, match="deleted or replaced"):
        await kf.trigger("work", {}, delay=60)
    if victim == "lock":
        rival = keyflow.Keyflow(storage=storage_url)
        if storage_url.startswith("sqlite"):  # the database file itself is locked too
            with pytest.raises(keyflow.StorageLockedError):
                await rival.start()
        else:  # a second writer may now get in: the first must not write any more
            await rival.start()
            await rival.stop()
    await kf.stop()


# -- failing fast, reporting truly ---------------------------------------------------


async def test_a_trigger_fails_fast_while_storage_is_failing() -> None:
    backend = DiskLikeBackend()
    kf = keyflow.Keyflow(storage=backend, workers=2)
    recorder = Recorder(hold=True)
    kf.job("work")(recorder.handler)
    await kf.start()
    await kf.trigger("work", {})
    await recorder.any_started.wait()
    backend.fail = True
    recorder.release.set()  # the run's end cannot be written: retried, with pauses
    async with asyncio.timeout(3):  # the pauses grow to 5 s: triggers must not wait
        for _ in range(7):
            with pytest.raises(keyflow.StorageError, match="No space"):
                await kf.trigger("work", {})
    error = kf.statistics().storage_error
    assert error is not None
    assert "No space" in error
    with pytest.raises(keyflow.WaitTimeoutError, match="storage writes are failing"):
        await kf.run_until_idle(timeout=0.05)
    backend.fail = False
    await kf.trigger("work", {})
    assert kf.statistics().storage_error is None  # recovered: no stale error
    await kf.run_until_idle(timeout=5)
    await kf.stop()
    assert set(backend.statuses.values()) == {RunStatus.COMPLETED}


# -- opening what cannot be opened ---------------------------------------------------


async def test_an_unreadable_json_run_fails_every_open_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    backend = open_backend(f"json:///{path}", retention=10)
    await backend.open()
    await backend.close()
    snapshot = json.loads(path.read_text())
    snapshot["runs"] = [{"id": "half", "job": "work", "status": "queued"}]  # incomplete
    path.write_text(json.dumps(snapshot))
    for _ in range(2):  # the second open must not find the lock of the first
        kf = keyflow.Keyflow(storage=f"json:///{path}")
        with pytest.raises(keyflow.StorageCorruptError, match="'half' is unreadable"):
            await kf.start()


async def test_a_sqlite_run_stored_as_a_json_list_is_reported_not_raised_raw(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    await write_records(f"sqlite:///{path}", stored_run("a", RunStatus.QUEUED))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE keyflow_runs SET data = '[1, 2]' WHERE id = 'a'")
    db.close()
    for _ in range(2):
        kf = keyflow.Keyflow(storage=f"sqlite:///{path}")
        with pytest.raises(keyflow.StorageCorruptError, match="JSON list"):
            await kf.start()


async def test_a_directory_as_the_path_is_named(storage_url: str) -> None:
    files_only(storage_url, "a directory as the path")
    path_of(storage_url).mkdir()
    kf = keyflow.Keyflow(storage=storage_url)
    with pytest.raises(keyflow.StorageError, match="is a directory"):
        await kf.start()


async def test_a_read_only_directory_is_a_storage_error_naming_the_file(
    storage_url: str, tmp_path: Path
) -> None:
    files_only(storage_url, "a read-only directory")
    with small_disk(tmp_path, options=",ro") as disk:
        url = storage_url_for(backend_of(storage_url), disk)
        kf = keyflow.Keyflow(storage=url)
        with pytest.raises(keyflow.StorageError, match=str(disk)) as caught:
            await kf.start()
        assert "Read-only file system" in str(caught.value)
