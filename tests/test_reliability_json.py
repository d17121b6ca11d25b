"""The JSON file on a failing disk (issue: reliability): a fault-injecting journal.

Appends that stop half-way, repairs that fail too, compactions cut short: a trigger
that raised never comes back, one that returned is never lost, and the store works
again by itself once the disk does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from pathlib import Path

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.records import RunRecord
from keyflow.storage_backends import WriteBatch, jsonfile_snapshots
from keyflow.storage_backends.jsonfile import JSONFileBackend

from .conftest import MakeKeyflow
from .fakes import FaultyJSON
from .test_durability import Recorder
from .test_reliability_storage import stored_runs


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"json:///{tmp_path / 'runs.json'}"


async def started(make_keyflow: MakeKeyflow, path: Path) -> tuple[FaultyJSON, keyflow.Keyflow]:
    """A scheduler started on a fault-injecting store at ``path``, with a ``work`` job."""
    backend = FaultyJSON(path)
    kf = make_keyflow(storage=backend)
    kf.job("work")(Recorder().handler)
    await kf.start()
    return backend, kf


async def test_json_recovers_when_neither_the_append_nor_its_repair_could_be_written(
    make_keyflow: MakeKeyflow, tmp_path: Path
) -> None:
    path = tmp_path / "runs.json"
    backend, kf = await started(make_keyflow, path)
    kept = await kf.trigger("work", {"n": 0}, delay=60)
    backend.faults.append = backend.faults.cut = True
    for n in (1, 2):
        with pytest.raises(keyflow.StorageError, match=r"No space left|tail of a failed append"):
            await kf.trigger("work", {"n": n}, delay=60)
    backend.faults.append = False  # space is back; the half line is still in the file
    with pytest.raises(keyflow.StorageError, match="tail of a failed append"):
        await kf.trigger("work", {"n": 3}, delay=60)  # cannot be cut yet: refused, cleanly
    backend.faults.cut = False
    after = await kf.trigger("work", {"n": 4}, delay=60)  # repaired by itself
    await kf.stop()
    assert set(await stored_runs(f"json:///{path}")) == {kept.run_id, after.run_id}
    lines = (tmp_path / "runs.json.journal").read_bytes().split(b"\n")
    assert lines[-1] == b""  # no torn tail: every line is whole
    for line in lines[:-1]:
        json.loads(line)


async def test_a_refused_json_append_is_not_written_at_stop(
    make_keyflow: MakeKeyflow, tmp_path: Path
) -> None:
    path = tmp_path / "runs.json"
    backend, kf = await started(make_keyflow, path)
    backend.faults.append = True
    with pytest.raises(keyflow.StorageError):
        await kf.trigger("work", {"n": 1}, delay=60)
    backend.faults.append = False
    await kf.stop()
    assert await stored_runs(f"json:///{path}") == {}


async def test_a_failed_compaction_never_fails_a_durable_append(
    make_keyflow: MakeKeyflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonfile_snapshots, "MIN_COMPACT_BYTES", 2_000)  # compact early
    path = tmp_path / "runs.json"
    backend, kf = await started(make_keyflow, path)
    backend.faults.snapshot = True
    made = [await kf.trigger("work", {"n": n, "pad": "x" * 300}, delay=60) for n in range(20)]
    assert kf.statistics().storage_error is None  # every append landed: no failure
    backend.faults.snapshot = False
    made += [await kf.trigger("work", {"n": n, "pad": "x" * 300}, delay=60) for n in range(20, 40)]
    generation = json.loads(path.read_text())["generation"]
    assert generation > 1  # compaction caught up once the disk allowed it
    await kf.stop()
    assert set(await stored_runs(f"json:///{path}")) == {r.run_id for r in made}


async def test_a_compaction_cut_before_its_new_journal_loses_nothing(
    make_keyflow: MakeKeyflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonfile_snapshots, "MIN_COMPACT_BYTES", 2_000)
    path = tmp_path / "runs.json"
    backend, kf = await started(make_keyflow, path)
    backend.faults.new_journal = True  # the journal is rotated out, the new one not made
    acknowledged: list[str] = []
    refused = 0
    for n in range(30):
        try:
            result = await kf.trigger("work", {"n": n, "pad": "x" * 300}, delay=60)
        except keyflow.StorageError:
            refused += 1
        else:
            acknowledged.append(result.run_id)
    assert refused > 0  # nothing may go to the journal rotated out
    backend.faults.new_journal = False
    acknowledged.append((await kf.trigger("work", {"n": 99}, delay=60)).run_id)
    await kf.stop()
    assert set(await stored_runs(f"json:///{path}")) == set(acknowledged)


async def test_a_folder_sync_failing_after_a_compaction_wedges_nothing(
    make_keyflow: MakeKeyflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonfile_snapshots, "MIN_COMPACT_BYTES", 2_000)
    path = tmp_path / "runs.json"
    backend, kf = await started(make_keyflow, path)
    acknowledged: list[str] = []
    for n in range(30):  # several compactions: the first one's folder sync fails
        backend.faults.directory_sync = n < 10
        with contextlib.suppress(keyflow.StorageError):
            acknowledged.append(
                (await kf.trigger("work", {"n": n, "pad": "x" * 300}, delay=60)).run_id
            )
    backend.faults.directory_sync = False
    acknowledged.append((await kf.trigger("work", {"n": 99}, delay=60)).run_id)
    assert len(acknowledged) >= 25  # only the writes racing a failed sync may fail
    await kf.stop()
    assert set(await stored_runs(f"json:///{path}")) == set(acknowledged)


async def test_a_journal_that_cannot_be_reopened_once_wedges_nothing(
    make_keyflow: MakeKeyflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonfile_snapshots, "MIN_COMPACT_BYTES", 2_000)
    path = tmp_path / "runs.json"
    backend, kf = await started(make_keyflow, path)
    backend.faults.open_journal = True  # too many open files, for a while
    acknowledged: list[str] = []
    refused = 0
    for n in range(20):
        try:
            acknowledged.append(
                (await kf.trigger("work", {"n": n, "pad": "x" * 300}, delay=60)).run_id
            )
        except keyflow.StorageError:
            refused += 1
    assert refused > 0
    backend.faults.open_journal = False
    acknowledged.append((await kf.trigger("work", {"n": 99}, delay=60)).run_id)
    await kf.stop()
    assert set(await stored_runs(f"json:///{path}")) == set(acknowledged)


async def test_a_journal_truncated_under_the_writer_fails_writes_loudly(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    kf = make_keyflow()
    kf.job("work")(Recorder().handler)
    await kf.start()
    await kf.trigger("work", {}, delay=60)
    journal = Path(storage_url.split(":///", 1)[1] + ".journal")
    os.truncate(journal, 10)
    with pytest.raises(keyflow.StorageError, match="changed under keyflow"):
        await kf.trigger("work", {}, delay=60)


async def test_close_waits_for_a_stalled_append_before_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    backend = FaultyJSON(path)
    await backend.open()
    backend.faults.stall = threading.Event()
    record = RunRecord("r1", "work", None, RunStatus.QUEUED, {}, 1.0, 1.0, 1)
    writing = asyncio.ensure_future(backend.write(WriteBatch([record])))
    await asyncio.to_thread(backend.faults.stalled.wait)  # the append sits in the kernel
    await backend.close()  # returns: the store closes once the append returns
    rival = JSONFileBackend(path)
    with pytest.raises(keyflow.StorageLockedError):
        await rival.open()  # the lock is kept meanwhile, and so is the descriptor
    backend.faults.stall.set()
    await writing
    await rival.open()  # now it is let go
    try:
        assert await rival.get_run("r1") is not None  # the append landed where it belongs
    finally:
        await rival.close()


async def test_a_start_whose_recovery_cannot_be_written_fails_and_a_later_one_recovers(
    make_keyflow: MakeKeyflow, tmp_path: Path
) -> None:
    """A run left running must have its crash counted durably before it runs again; on a
    full disk that write fails: the start raises (it used to retry for ever), and a start
    once there is space recovers the run."""
    path = tmp_path / "runs.json"
    setup = JSONFileBackend(path)
    await setup.open()
    left = RunRecord("left-1", "work", "k", RunStatus.PENDING, {}, 1.0, 1.0, 3)
    left.status, left.attempt, left.started_at = RunStatus.RUNNING, 1, 2.0
    await setup.write(WriteBatch([left]))
    await setup.close()
    full = FaultyJSON(path)
    full.faults.append = True
    refused = make_keyflow(storage=full)
    refused.job("work")(Recorder().handler)
    with pytest.raises(keyflow.StorageError, match="No space left"):
        await asyncio.wait_for(refused.start(), timeout=30)
    recorder = Recorder()
    kf = make_keyflow(storage=f"json:///{path}")
    kf.job("work")(recorder.handler)
    await kf.start()
    run = await kf.wait("left-1", timeout=30)
    assert run.status is RunStatus.COMPLETED
    assert run.interruptions == 1


async def test_commits_go_on_while_a_compaction_writes_its_snapshot(
    make_keyflow: MakeKeyflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot is written in the background: triggers are acknowledged meanwhile
    (appended to the new journal), and files copied mid-compaction, as a crash would
    leave them, hold every run acknowledged by then."""
    monkeypatch.setattr(jsonfile_snapshots, "MIN_COMPACT_BYTES", 2_000)
    path = tmp_path / "runs.json"
    backend, kf = await started(make_keyflow, path)
    backend.faults.snapshot_stall = threading.Event()
    made: list[str] = []
    try:
        while not backend.old_journal_path.exists():  # until a compaction rotates
            made.append((await kf.trigger("work", {"pad": "x" * 300}, delay=60)).run_id)
        assert len(made) < 50
        for n in range(20):  # its snapshot is stalled: the commits are not
            made.append((await kf.trigger("work", {"n": n}, delay=60)).run_id)
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        for name in ("runs.json", "runs.json.journal", "runs.json.journal.old"):
            (crashed / name).write_bytes((tmp_path / name).read_bytes())
    finally:
        backend.faults.snapshot_stall.set()
    await backend.compact()  # (waits for the stalled one, then compacts again)
    await kf.stop()
    assert not backend.old_journal_path.exists()  # folded in, then deleted
    assert set(await stored_runs(f"json:///{path}")) == set(made)
    # The crash's files: the old snapshot, the old journal, the new journal.
    assert set(await stored_runs(f"json:///{crashed / 'runs.json'}")) == set(made)
    reopened = JSONFileBackend(crashed / "runs.json")
    await reopened.open()  # a writer's open finishes the compaction first
    await reopened.close()
    assert not (crashed / "runs.json.journal.old").exists()
    assert json.loads((crashed / "runs.json").read_text())["generation"] == 2
    assert set(await stored_runs(f"json:///{crashed / 'runs.json'}")) == set(made)


async def test_an_old_journal_left_after_its_snapshot_is_ignored_and_deleted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.json"
    backend = JSONFileBackend(path)
    await backend.open()
    first = RunRecord("a", "work", None, RunStatus.QUEUED, {}, 1.0, 1.0, 3)
    await backend.write(WriteBatch([first]))
    await backend.compact()
    stale = backend.journal_path.read_bytes()  # generation 2, holding nothing new
    done = first.copy()
    done.status, done.finished_at = RunStatus.CANCELLED, 2.0
    await backend.write(WriteBatch([done]))
    await backend.compact()  # generation 3; a crash before the old journal went:
    await backend.close()
    backend.old_journal_path.write_bytes(stale)
    reopened = JSONFileBackend(path)
    await reopened.open()
    run = await reopened.get_run("a")
    await reopened.close()
    assert run is not None
    assert run.status is RunStatus.CANCELLED
    assert not reopened.old_journal_path.exists()
