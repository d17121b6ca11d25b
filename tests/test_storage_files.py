"""The storage files themselves: corrupt, truncated, foreign and torn files; compaction."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.records import RunRecord
from keyflow.runs import LogEntry
from keyflow.storage_backends import (
    RunQuery,
    WriteBatch,
    jsonfile_snapshots,
    open_backend,
    sqlite_schema,
)
from keyflow.storage_backends import rows as rows_module
from keyflow.storage_backends.jsonfile import JSONFileBackend
from keyflow.storage_backends.sqlite import SQLiteBackend


def record(run_id: str, status: RunStatus = RunStatus.QUEUED) -> RunRecord:
    return RunRecord(run_id, "work", "k", status, {"id": run_id}, 1.0, 1.0, 1)


async def write_json(path: Path, *batches: list[RunRecord]) -> None:
    backend = JSONFileBackend(path)
    await backend.open()
    try:
        for runs in batches:
            await backend.write(WriteBatch(runs))
    finally:
        await backend.close()


async def unfinished_ids(backend: JSONFileBackend | SQLiteBackend) -> list[str]:
    state = await backend.open()
    await backend.close()
    return [r.id for r in state.unfinished]


def contents(*paths: Path) -> list[bytes | None]:
    return [p.read_bytes() if p.exists() else None for p in paths]


# -- JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snapshot", "message"),
    [
        (b'{"format": "keyflow-snap', "not JSON"),
        (b'{"hello": "world"}', "not a keyflow snapshot"),
        (b"[1, 2, 3]", "not a keyflow snapshot"),
        (
            b'{"format": "keyflow-snapshot", "version": 7, "generation": 1}',
            "format version 7",
        ),
        (
            b'{"format": "keyflow-snapshot", "version": 1, "generation": 1, "runs": [{"id": 1}]}',
            "malformed snapshot",
        ),
    ],
)
async def test_a_bad_snapshot_stops_the_open_and_is_left_untouched(
    tmp_path: Path, snapshot: bytes, message: str
) -> None:
    path = tmp_path / "runs.json"
    path.write_bytes(snapshot)
    with pytest.raises(keyflow.StorageCorruptError, match=message) as caught:
        await JSONFileBackend(path).open()
    assert str(path) in str(caught.value)
    assert path.read_bytes() == snapshot
    assert not (tmp_path / "runs.json.journal").exists()


async def test_a_corrupt_journal_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    journal = tmp_path / "runs.json.journal"
    await write_json(path, [record("a")], [record("b")], [record("c")])
    lines = journal.read_bytes().split(b"\n")
    lines[2] = b'{"runs": [oops'  # the second batch, not the last line
    journal.write_bytes(b"\n".join(lines))
    before = contents(path, journal)
    with pytest.raises(keyflow.StorageCorruptError, match=r"runs\.json\.journal:3: unreadable"):
        await JSONFileBackend(path).open()
    assert contents(path, journal) == before


async def test_a_torn_last_journal_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    journal = tmp_path / "runs.json.journal"
    await write_json(path, [record("a")], [record("b")])
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-25])  # the crash cut the last append short
    assert await unfinished_ids(JSONFileBackend(path)) == ["a"]
    # the torn bytes are gone, so later appends follow a whole line
    await write_json(path, [record("c")])
    assert await unfinished_ids(JSONFileBackend(path)) == ["a", "c"]


async def test_a_journal_older_than_the_snapshot_is_ignored(tmp_path: Path) -> None:
    # A crash between the snapshot's replacement and the journal's leaves the old journal.
    path = tmp_path / "runs.json"
    journal = tmp_path / "runs.json.journal"
    await write_json(path, [record("a")])
    old_journal = journal.read_bytes()
    backend = JSONFileBackend(path)
    await backend.open()
    await backend.write(WriteBatch([record("a", RunStatus.CANCELLED)]))
    await backend.compact()
    await backend.close()
    journal.write_bytes(old_journal)  # still says "a" is queued, at the old generation
    reopened = JSONFileBackend(path)
    assert await unfinished_ids(reopened) == []
    await reopened.open()
    run = await reopened.get_run("a")
    await reopened.close()
    assert run is not None
    assert run.status is RunStatus.CANCELLED


async def test_compaction_folds_the_journal_into_a_readable_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonfile_snapshots, "MIN_COMPACT_BYTES", 2_000)
    path = tmp_path / "runs.json"
    journal = tmp_path / "runs.json.journal"
    await write_json(path, *([record(f"r{n}")] for n in range(40)))
    snapshot = json.loads(path.read_text())
    assert snapshot["generation"] > 1  # compacted at least once
    lines = journal.read_bytes().splitlines()[1:]  # (after the header)
    assert lines
    assert len(lines) < 20  # under half of the 40 appended lines
    assert await unfinished_ids(JSONFileBackend(path)) == [f"r{n}" for n in range(40)]


@pytest.mark.parametrize("problem", ["none", "unwritable", "too long"])
async def test_a_journal_line_holds_each_run_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    # A batch is encoded in one piece when it can be; a run that cannot be written as it
    # is (a lone surrogate that got past validation, a run too long) is stored made safe
    # or slimmed, and its siblings exactly as they are.
    monkeypatch.setattr(rows_module, "MAX_ROW_CHARS", 2_000)
    path = tmp_path / "runs.json"
    odd = record("odd")
    if problem == "unwritable":
        odd.output = "caf\udce9"
    elif problem == "too long":
        odd.add_log(LogEntry(1.0, "info", "x" * 3_000, {}, 1))
    batch = [record("a"), odd, record("b")]
    expected = [rows_module.encode_row(rows_module.record_row(r)) for r in batch]
    await write_json(path, batch)
    (line,) = (tmp_path / "runs.json.journal").read_text().splitlines()[1:]
    assert json.loads(line)["runs"] == [row for row, _ in expected]
    assert line.startswith('{"runs":[' + ",".join(text for _, text in expected) + "]")
    stored = json.loads(line)["runs"][1]
    if problem == "unwritable":
        assert stored["output"] != odd.output
        assert stored["output"].startswith("caf")
    elif problem == "too long":
        assert stored["logs"] == []
    else:
        assert stored == rows_module.record_row(odd)


async def test_retention_prunes_the_files_too(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    backend = JSONFileBackend(path, retention=2)
    await backend.open()
    for n in range(5):
        await backend.write(WriteBatch([record(f"r{n}", RunStatus.COMPLETED)]))
    await backend.write(WriteBatch([]))  # carries the last prune
    await backend.close()
    reopened = JSONFileBackend(path, retention=100)
    await reopened.open()
    kept = [r.id for r in await reopened.list_runs(RunQuery())]
    await reopened.close()
    assert kept == ["r4", "r3"]


# -- SQLite --------------------------------------------------------------------------


async def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"this is a text file, not a database\n" * 200)
    before = path.read_bytes()
    with pytest.raises(keyflow.StorageCorruptError, match="cannot be opened") as caught:
        await SQLiteBackend(path).open()
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before


async def test_a_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('ada')")
    db.close()
    before = path.read_bytes()
    with pytest.raises(keyflow.StorageCorruptError, match=r"not a keyflow database.*users"):
        await SQLiteBackend(path).open()
    assert path.read_bytes() == before


async def test_a_truncated_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    backend = SQLiteBackend(path)
    await backend.open()
    await backend.write(WriteBatch([record(f"r{n}") for n in range(300)]))
    await backend.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    before = path.read_bytes()
    with pytest.raises(keyflow.StorageCorruptError):
        await SQLiteBackend(path).open()
    assert path.read_bytes() == before


async def test_sqlite_survives_reopening_with_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    backend = SQLiteBackend(path, synchronous="FULL")
    await backend.open()
    await backend.write(
        WriteBatch([record("a"), record("b", RunStatus.COMPLETED)], [("work", "once", "a")])
    )
    await backend.close()
    assert await unfinished_ids(SQLiteBackend(path)) == ["a"]
    again = SQLiteBackend(path)
    await again.open()
    try:
        assert await again.find_idempotent("work", "once") == "a"
        done = await again.get_run("b")
        assert done is not None
        assert done.status is RunStatus.COMPLETED
    finally:
        await again.close()


async def test_sqlite_columns_hold_each_write_of_a_run(tmp_path: Path) -> None:
    # The upsert is SQL text with positional values: every column of the table, each
    # holding its own field, and a later write updating what changed.
    assert sorted(sqlite_schema.RUN_COLUMNS) == sorted(c.name for c in sqlite_schema.runs_table.c)
    path = tmp_path / "runs.db"
    backend = SQLiteBackend(path)
    await backend.open()
    run = record("a")
    run.labels = {"team": "x"}
    await backend.write(WriteBatch([run], [("work", "once", "a")]))
    run.status, run.attempt, run.started_at = RunStatus.RUNNING, 1, 2.0
    await backend.write(WriteBatch([run]))
    run.status, run.finished_at, run.trigger_count = RunStatus.COMPLETED, 3.0, 2
    await backend.write(WriteBatch([run], [("work", "once", "b")]))
    await backend.close()
    with sqlite3.connect(path) as db:
        columns = ", ".join(sqlite_schema.RUN_COLUMNS)
        (stored,) = db.execute(f"SELECT {columns} FROM keyflow_runs").fetchall()
        labels = db.execute("SELECT run_id, name, value FROM keyflow_labels").fetchall()
        keys = db.execute("SELECT job, idempotency_key, run_id FROM keyflow_idempotency").fetchall()
    values = dict(zip(sqlite_schema.RUN_COLUMNS, stored, strict=True))
    assert json.loads(values.pop("data"))["status"] == "completed"
    assert values == {
        "id": "a",
        "job": "work",
        "concurrency_key": "k",
        "status": "completed",
        "created_at": 1.0,
        "finished_at": 3.0,
        "due_at": 1.0,
        "started_at": 2.0,
        "attempt": 1,
        "trigger_count": 2,
    }
    assert labels == [("a", "team", "x")]
    assert keys == [("work", "once", "a")]  # a key stored already keeps its run


async def test_an_older_schema_is_migrated_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.db"
    backend = SQLiteBackend(path)
    await backend.open()
    await backend.write(WriteBatch([record("a")]))
    await backend.close()
    migration = ["ALTER TABLE keyflow_runs ADD COLUMN note TEXT"]
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 4)
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", {**sqlite_schema.MIGRATIONS, 3: migration})
    assert await unfinished_ids(SQLiteBackend(path)) == ["a"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM keyflow_schema").fetchall() == [(4,)]
        columns = [row[1] for row in db.execute("PRAGMA table_info(keyflow_runs)")]
    db.close()
    assert "note" in columns


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///runs.db", (SQLiteBackend, "runs.db", "NORMAL", False)),
        ("sqlite:////abs/dir/runs.db", (SQLiteBackend, "/abs/dir/runs.db", "NORMAL", False)),
        ("sqlite:///runs.db?synchronous=full", (SQLiteBackend, "runs.db", "FULL", False)),
        ("sqlite:///runs.db?mode=ro", (SQLiteBackend, "runs.db", "NORMAL", True)),
        ("json:///data/runs.json?mode=ro", (JSONFileBackend, "data/runs.json", None, True)),
    ],
)
def test_storage_urls(url: str, expected: tuple[type, str, str | None, bool]) -> None:
    backend = open_backend(url, retention=5)
    kind, path, sync_mode, read_only = expected
    assert isinstance(backend, kind)
    assert isinstance(backend, SQLiteBackend | JSONFileBackend)
    assert (str(backend.path), backend.read_only, backend.retention) == (path, read_only, 5)
    if isinstance(backend, SQLiteBackend):
        assert backend.sync_mode == sync_mode


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "needs a path"),
        ("sqlite:///runs.db?synchronous=off", "synchronous must be NORMAL or FULL"),
        ("json:///runs.json?mode=append", "mode must be 'rw' or 'ro'"),
        ("json:///runs.json?fsync=no", "unknown option"),
        ("postgres:///x", "unknown storage scheme 'postgres'"),
    ],
)
def test_bad_storage_urls(url: str, message: str) -> None:
    with pytest.raises(keyflow.ConfigurationError, match=message):
        open_backend(url, retention=5)


async def test_a_json_reader_sees_what_the_writer_adds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "runs.json"
    writer = JSONFileBackend(path)
    await writer.open()
    reader = JSONFileBackend(path, read_only=True)
    reader.refresh_seconds = 0.0
    try:
        await writer.write(WriteBatch([record("a")]))
        await reader.open()
        assert await reader.get_run("a") is not None
        await writer.write(WriteBatch([record("b")]))
        await writer.compact()
        await writer.write(WriteBatch([record("c")]))
        ids = [r.id for r in await reader.list_runs(RunQuery())]
        assert ids == ["c", "b", "a"]
    finally:
        await writer.close()
        await reader.close()


async def test_closing_sqlite_waits_for_reads_in_flight(tmp_path: Path) -> None:
    """A dashboard's query running when storage closes ends well, its connection closed."""
    backend = SQLiteBackend(tmp_path / "runs.db")
    await backend.open()
    reads = [asyncio.ensure_future(backend.list_runs(RunQuery(limit=10))) for _ in range(3)]
    token = asyncio.ensure_future(backend.change_token())
    await asyncio.sleep(0)  # the reads are under way (one turn of the loop, not a wait)
    await backend.close()
    assert all(read.done() for read in (*reads, token))
    assert [await read for read in reads] == [[], [], []]
    with pytest.raises(keyflow.StorageError, match="not open"):
        await backend.list_runs(RunQuery())
