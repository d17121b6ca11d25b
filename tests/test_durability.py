"""Durable storage (SQLite, JSON file): restarts, recovery, locking, failing writes.

The contract tests (every scheduler test, on every backend) live with the features;
these are what only a durable backend can do. The SIGKILL crash test is
``test_crash.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.cli import read_only_url
from keyflow.records import RunRecord
from keyflow.storage_backends import WriteBatch, open_backend
from keyflow.storage_backends.postgres import PostgreSQLBackend
from keyflow.storage_backends.sqlite import SQLiteBackend
from keyflow.storage_backends.sqlite_writer import Retention, SQLiteWriter
from keyflow.testing import VirtualClock

from .conftest import DURABLE, MakeKeyflow, fresh_storage_url
from .fakes import FaultyJSON
from .pg import schema_of


@pytest.fixture(params=DURABLE)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_storage_url(request, tmp_path)


class Recorder:
    """A handler that records starts and finishes when released (or at once)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.started: list[tuple[str, int, dict[str, Any]]] = []
        self.any_started = asyncio.Event()
        self.release = asyncio.Event()

    async def handler(self, ctx: keyflow.RunContext, input: dict[str, Any]) -> dict[str, Any]:
        self.started.append((ctx.run_id, ctx.attempt, input))
        self.any_started.set()
        if self.hold:
            await self.release.wait()
        return input


async def write_records(url: str, *records: RunRecord) -> None:
    """Put runs in storage directly, as a process that died would have left them."""
    backend = open_backend(url, retention=100)
    await backend.open()
    try:
        await backend.write(WriteBatch(list(records)))
    finally:
        await backend.close()


def stored_run(run_id: str, status: RunStatus, *, key: str = "k", **fields: Any) -> RunRecord:
    record = RunRecord(run_id, "work", key, status, {"id": run_id}, 1.0, 1.0, 3)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


async def test_a_restart_restores_lanes_order_delays_and_joined_inputs(
    make_keyflow: MakeKeyflow, storage_url: str, clock: VirtualClock
) -> None:
    before = Recorder(hold=True)
    kf = make_keyflow(workers=2)
    kf.job("work")(before.handler)
    kf.job("other")(before.handler)
    await kf.start()
    first = await kf.trigger("work", {"n": 1}, concurrency_key="k")
    await before.any_started.wait()
    second = await kf.trigger("other", {"n": 2}, concurrency_key="k")
    third = await kf.trigger("work", {"n": 3}, concurrency_key="k", coalesce="queue")
    joined = await kf.trigger("work", {"n": 4}, concurrency_key="k", coalesce="queue")
    later = await kf.trigger("work", {"n": 5}, concurrency_key="k2", delay=60)
    assert joined.run_id == third.run_id
    await kf.stop(grace=0)  # the running handler is interrupted: back to its lane's head

    after = Recorder()
    again = make_keyflow(workers=2)
    again.job("work")(after.handler)
    again.job("other")(after.handler)
    await again.start()
    lane = again.lane("k")
    assert lane.state == "running+queued"
    assert (lane.running, lane.waiting) == ((first.run_id,), (second.run_id, third.run_id))
    assert again.lane("k2").scheduled == (later.run_id,)
    delayed = await again.get_run(later.run_id)
    assert delayed is not None
    assert delayed.due_at == clock.now() + 60  # the delay kept its due time
    await again.run_until_idle()
    assert [(run_id, attempt) for run_id, attempt, _ in after.started] == [
        (first.run_id, 1),  # a stop cut it short: it runs again as the same attempt
        (second.run_id, 1),
        (third.run_id, 1),
        (later.run_id, 1),
    ]
    assert after.started[2][2] == {"n": 4}  # the joined trigger's input survived
    restarted = await again.get_run(first.run_id)
    assert restarted is not None
    assert (restarted.status, restarted.interruptions) == (RunStatus.COMPLETED, 1)
    assert (restarted.attempt, restarted.errors) == (1, ())  # no error, no retry used
    assert "interrupted by stop" in restarted.logs[0].message


async def test_a_run_found_running_after_a_crash_runs_again_without_using_a_retry(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    await write_records(
        storage_url,
        stored_run("crashed", RunStatus.RUNNING, attempt=1),
        stored_run("behind", RunStatus.QUEUED),
        stored_run("poison", RunStatus.RUNNING, key="p", attempt=1, crashes=2),
        stored_run("cancelled", RunStatus.RUNNING, key="c", attempt=1, cancel_requested=True),
    )
    recorder = Recorder()
    kf = make_keyflow()
    kf.job("work")(recorder.handler)
    await kf.start()
    await kf.run_until_idle()
    assert [(run_id, attempt) for run_id, attempt, _ in recorder.started] == [
        ("crashed", 2),
        ("behind", 1),
    ]
    crashed = await kf.get_run("crashed")
    assert crashed is not None
    assert (crashed.status, crashed.interruptions, crashed.errors) == (
        RunStatus.COMPLETED,
        1,
        (),
    )
    poison = await kf.get_run("poison")
    assert poison is not None
    assert poison.status is RunStatus.FAILED
    assert poison.error is not None
    assert "3 times" in poison.error
    assert poison.errors[-1].type == "Crashed"
    cancelled = await kf.get_run("cancelled")
    assert cancelled is not None
    assert cancelled.status is RunStatus.CANCELLED


async def test_a_retry_backoff_keeps_its_slot_and_due_time_across_a_restart(
    make_keyflow: MakeKeyflow, storage_url: str, clock: VirtualClock
) -> None:
    due = clock.now() + 30
    await write_records(
        storage_url,
        stored_run("backing-off", RunStatus.SCHEDULED, attempt=1, retries_used=1, due_at=due),
        stored_run("waiting", RunStatus.QUEUED),
    )
    recorder = Recorder()
    kf = make_keyflow()
    kf.job("work")(recorder.handler)
    await kf.start()
    lane = kf.lane("k")
    assert (lane.running, lane.waiting) == (("backing-off",), ("waiting",))
    await kf.run_until_idle()
    assert [run_id for run_id, _, _ in recorder.started] == ["backing-off", "waiting"]
    assert clock.now() >= due


async def test_a_second_writer_is_refused_and_a_reader_is_welcome(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    kf = make_keyflow()
    kf.job("work")(Recorder().handler)
    await kf.start()
    done = await kf.trigger("work", {"n": 1})
    await kf.run_until_idle()

    rival = make_keyflow()
    with pytest.raises(keyflow.StorageLockedError, match="in use by another keyflow process"):
        await rival.start()

    reader = open_backend(read_only_url(storage_url), retention=100)
    await reader.open()
    try:
        run = await reader.get_run(done.run_id)
        assert run is not None
        assert run.status is RunStatus.COMPLETED
        with pytest.raises(keyflow.StorageError, match="read-only"):
            await reader.write(WriteBatch([]))
    finally:
        await reader.close()

    await kf.stop()
    successor = make_keyflow()  # the lock went with the first writer
    await successor.start()


class FailingWriter(SQLiteWriter):
    """A SQLite writer whose transactions fail after writing, like a disk that filled up."""

    failing = False

    def prune(self, conn: Any, finished: int, retention: Retention) -> int:
        if self.failing:  # the rows are in the transaction already: it must roll back
            raise sqlite3.OperationalError("database or disk is full")
        return super().prune(conn, finished, retention)


class FailingSQLite(SQLiteBackend):
    """SQLite whose transactions fail after writing (see :class:`FailingWriter`)."""

    writer_class = FailingWriter

    @property
    def failing(self) -> bool:
        return isinstance(self._thread, FailingWriter) and self._thread.failing

    @failing.setter
    def failing(self, value: bool) -> None:
        assert isinstance(self._thread, FailingWriter)
        self._thread.failing = value


class FailingJSON(FaultyJSON):
    """A JSON backend whose appends stop half-way, like a disk that filled up."""

    @property
    def failing(self) -> bool:
        return self.faults.append

    @failing.setter
    def failing(self, value: bool) -> None:
        self.faults.append = value


class FailingPostgreSQL(PostgreSQLBackend):
    """PostgreSQL whose writes fail after storing their rows, like a server whose disk filled.

    The server itself fails them: while ``failing``, a trigger on the count of writes
    (which every write bumps, whichever way it is written) raises PostgreSQL's
    ``disk_full``, after the rows are in the statement or transaction, which must then
    leave nothing behind.
    """

    failing = False
    _armed = False

    async def write(self, batch: WriteBatch) -> dict[str, Exception] | None:
        if self.failing != self._armed:
            raw = (await self._writable().get_raw_connection()).driver_connection
            assert raw is not None
            await raw.execute(
                _DISK_FULL if self.failing else "DROP TRIGGER disk_full ON keyflow_schema"
            )
            self._armed = self.failing
        refused = await super().write(batch)
        return None if refused is None else dict(refused)


_DISK_FULL = """
CREATE OR REPLACE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100';
END $$;
CREATE TRIGGER disk_full BEFORE UPDATE ON keyflow_schema FOR EACH ROW EXECUTE FUNCTION disk_full();
"""


def failing_backend(url: str) -> FailingSQLite | FailingJSON | FailingPostgreSQL:
    if url.startswith("postgresql"):
        return FailingPostgreSQL(url.partition("?")[0], schema=schema_of(url))
    path = url.split(":///", 1)[1]
    return FailingSQLite(path) if url.startswith("sqlite") else FailingJSON(path)


async def test_failed_writes_leave_no_trace_in_memory_or_on_disk(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    backend = failing_backend(storage_url)
    recorder = Recorder()
    kf = make_keyflow(storage=backend)
    kf.job("work")(recorder.handler)
    await kf.start()
    kept = await kf.trigger("work", {"n": 0}, concurrency_key="k", delay=60)
    backend.failing = True
    for n in (1, 2):
        with pytest.raises(keyflow.StorageError, match=r"full|No space"):
            await kf.trigger("work", {"n": n}, concurrency_key="k", idempotency_key=f"i{n}")
    with pytest.raises(keyflow.StorageError):  # a join is rolled back too
        await kf.trigger("work", {"n": 3}, concurrency_key="k", coalesce="queue")
    assert [r.id for r in await kf.list_runs()] == [kept.run_id]
    assert kf.lane("k").scheduled == (kept.run_id,)
    assert kf.lane("k").coalesced == 0
    backend.failing = False
    works = await kf.trigger("work", {"n": 4}, concurrency_key="k", idempotency_key="i1")
    assert works.disposition is keyflow.Disposition.CREATED  # i1 was never stored
    await kf.stop(grace=0)

    reopened = make_keyflow()
    reopened.job("work")(recorder.handler)
    await reopened.start()
    stored = {r.id: r for r in await reopened.list_runs()}
    assert set(stored) == {kept.run_id, works.run_id}
    assert stored[kept.run_id].trigger_count == 1
    await reopened.run_until_idle()
    ran = [inp["n"] for _, _, inp in recorder.started]
    assert set(ran) == {0, 4}  # 4 may have run twice: stop(grace=0) may interrupt it
    finished = await reopened.list_runs()
    assert {r.status for r in finished} == {RunStatus.COMPLETED}


async def test_schema_from_a_newer_keyflow_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    backend = SQLiteBackend(path)
    await backend.open()
    await backend.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE keyflow_schema SET version = 99")
    before = path.read_bytes()
    with pytest.raises(keyflow.StorageCorruptError, match=r"schema version 99.*newer keyflow"):
        await SQLiteBackend(path).open()
    assert path.read_bytes() == before


async def test_a_sequential_producers_job_costs_one_commit(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    # A trigger's commit; the run promoted once it is durable; started and finished by
    # a worker at once; the next trigger. The promotion waits a turn of the loop for
    # the start, the finish and the next trigger to join it: one commit per job.
    kf = make_keyflow(workers=4)
    recorder = Recorder()
    kf.job("work")(recorder.handler)
    await kf.start()
    before = kf.statistics().storage_batches
    for n in range(40):
        await kf.trigger("work", {"n": n})
    await kf.run_until_idle()
    batches = kf.statistics().storage_batches - before
    assert sorted(data["n"] for _, _, data in recorder.started) == list(range(40))
    assert batches <= 40 + 5  # (was two per job: the promotion alone, then the rest)
    stored = await kf.list_runs(limit=100)
    assert [run.status for run in stored] == [RunStatus.COMPLETED] * 40


async def test_concurrent_triggers_share_commits(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    kf = make_keyflow()
    kf.job("work")(Recorder().handler)
    await kf.start()
    before = kf.statistics().storage_batches
    results = await asyncio.gather(
        *(kf.trigger("work", {"n": n}, concurrency_key=f"k{n}", delay=60) for n in range(100))
    )
    batches = kf.statistics().storage_batches - before
    assert len({r.run_id for r in results}) == 100
    assert batches <= 10  # one commit in flight, the rest grouped behind it
    assert {r.id for r in await kf.list_runs(limit=200)} == {r.run_id for r in results}
