"""The SQLite writer's thread: every commit runs there whole, one at a time, in order;
a cancelled caller never cuts a transaction in half."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

from keyflow.backend_contract import record
from keyflow.storage_backends import RunQuery, WriteBatch
from keyflow.storage_backends.sqlite import SQLiteBackend
from keyflow.storage_backends.sqlite_checkpoints import BACKSTOP_PAGES, EVERY_COMMITS
from keyflow.storage_backends.sqlite_writer import Batch, Retention, SQLiteWriter


class HeldWriter(SQLiteWriter):
    """A writer whose transactions wait for the test, noting the thread they run on."""

    def __init__(self, path: Path, synchronous: str) -> None:
        super().__init__(path, synchronous)
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.threads: list[str] = []
        self.order: list[list[str]] = []

    def transaction(self, conn: Any, batch: Batch, finished: int, retention: Retention) -> int:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        self.release.wait(timeout=30)
        self.order.append([row[0] for row in batch.runs])
        return super().transaction(conn, batch, finished, retention)


class HeldSQLite(SQLiteBackend):
    writer_class = HeldWriter

    @property
    def writer(self) -> HeldWriter:
        assert isinstance(self._thread, HeldWriter)
        return self._thread


async def test_every_commit_runs_on_the_writers_thread(tmp_path: Path) -> None:
    backend = HeldSQLite(tmp_path / "runs.db")
    await backend.open()
    writer = backend.writer
    try:
        await backend.write(WriteBatch([record(1)]))
        await backend.write(WriteBatch([record(2)]))
    finally:
        await backend.close()
    threads = writer.threads
    assert len(threads) == 2
    assert all(name.startswith("keyflow-sqlite-writer") for name in threads)
    assert threading.current_thread().name not in threads


async def test_a_cancelled_write_still_commits_whole_before_the_next(tmp_path: Path) -> None:
    backend = HeldSQLite(tmp_path / "runs.db")
    await backend.open()
    try:
        writer = backend.writer
        writer.release.clear()
        first = asyncio.create_task(backend.write(WriteBatch([record(1), record(2)])))
        await asyncio.to_thread(writer.entered.wait, 30)  # inside the transaction
        first.cancel()
        second = asyncio.create_task(backend.write(WriteBatch([record(3)])))
        writer.release.set()
        await second
        assert first.cancelled()
        ids = {run.id for run in await backend.list_runs(RunQuery())}
    finally:
        await backend.close()
    assert ids == {"run-0001", "run-0002", "run-0003"}  # the first batch whole
    assert writer.order == [["run-0001", "run-0002"], ["run-0003"]]


def rows_in_the_database_file(path: Path) -> int:
    """Runs in the database file itself, the WAL ignored (what checkpoints copied)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        if "keyflow_runs" not in tables:  # (not even the schema was copied yet)
            return 0
        return int(db.execute("SELECT count(*) FROM keyflow_runs").fetchone()[0])


async def test_the_wal_is_checkpointed_beside_the_writer_not_by_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    backend = HeldSQLite(path)
    await backend.open()
    writer = backend.writer
    try:
        for n in range(EVERY_COMMITS - 1):
            await backend.write(WriteBatch([record(n)]))
        await writer.checkpoints.settled()
        assert rows_in_the_database_file(path) == 0  # all in the WAL: no commit copied it
        await backend.write(WriteBatch([record(EVERY_COMMITS)]))
        await writer.checkpoints.settled()
        assert rows_in_the_database_file(path) == EVERY_COMMITS  # the checkpointer did
        assert "keyflow-sqlite-checkpoints" in {t.name for t in threading.enumerate()}
        assert len(await backend.list_runs(RunQuery(limit=1_000))) == EVERY_COMMITS
    finally:
        await backend.close()
    assert "keyflow-sqlite-checkpoints" not in {t.name for t in threading.enumerate()}


async def test_the_wal_stays_bounded_while_a_writer_keeps_writing(tmp_path: Path) -> None:
    # A checkpoint beside a busy writer never copies every frame, so the WAL never starts
    # again by itself: the writer's own checkpoint at BACKSTOP_PAGES bounds it.
    path = tmp_path / "runs.db"
    backend = SQLiteBackend(path)
    await backend.open()
    largest = 0
    try:
        for first in range(0, 30_000, 100):
            runs = [record(n, key=f"k{n % 100}") for n in range(first, first + 100)]
            await backend.write(WriteBatch(runs))
            largest = max(largest, Path(f"{path}-wal").stat().st_size)
    finally:
        await backend.close()
    page = 4096
    assert largest > BACKSTOP_PAGES * page // 2  # (the load reached the backstop's scale)
    assert largest < (BACKSTOP_PAGES + 1_000) * page
