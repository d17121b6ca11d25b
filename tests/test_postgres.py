"""What the PostgreSQL backend promises beyond the contract in its single-writer mode
(``mode=single``): one writer, NUL refusals, schema versions, read-only opens, URLs and
clear errors (against the real server). Shared mode: ``test_shared_*.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import keyflow
from keyflow.backend_contract import T0, finish, record
from keyflow.runs import JSONObject
from keyflow.storage_backends import RunQuery, WriteBatch, open_backend
from keyflow.storage_backends import postgres_schema as schema
from keyflow.storage_backends.postgres import PostgreSQLBackend

from .pg import POSTGRES, drop_schemas, postgres_url, schema_for


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A fresh schema's URL in the single-writer mode, dropped after the test."""
    found = postgres_url(tmp_path) + "&mode=single"
    yield found
    drop_schemas(schema_for(tmp_path))


@asynccontextmanager
async def sql() -> AsyncIterator[Any]:
    """A plain asyncpg connection to the test server (to look and meddle)."""
    conn = await asyncpg.connect(POSTGRES)
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def opened(url: str, retention: int = 1_000) -> AsyncIterator[PostgreSQLBackend]:
    backend = open_backend(url, retention=retention)
    assert isinstance(backend, PostgreSQLBackend)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def _noop(ctx: keyflow.RunContext, input: JSONObject) -> None:
    return None


# -- one writer -----------------------------------------------------------------------


async def test_a_second_writer_is_refused_until_the_first_closes(url: str, tmp_path: Path) -> None:
    first = open_backend(url, retention=100)
    await first.open()
    try:
        second = open_backend(url, retention=100)
        with pytest.raises(keyflow.StorageLockedError) as refused:
            await second.open()
        message = str(refused.value)
        assert "127.0.0.1:5432/test" in message
        assert schema_for(tmp_path) in message
        await second.close()  # a refused open leaves nothing to close: still fine
        other = open_backend(postgres_url(tmp_path / "other"), retention=100)
        await other.open()  # another schema has a writer of its own
        await other.close()
    finally:
        await first.close()
        drop_schemas(schema_for(tmp_path / "other"))
    successor = open_backend(url, retention=100)
    await successor.open()  # the lock went with the first writer's close
    await successor.close()


async def test_the_writer_holds_its_advisory_lock_while_open(url: str) -> None:
    backend = open_backend(url, retention=100)
    assert isinstance(backend, PostgreSQLBackend)
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1"
    low = backend.lock_key & 0xFFFFFFFF  # pg_locks shows a 64-bit key in two halves
    async with sql() as conn:
        await backend.open()
        assert await conn.fetchval(query, low) == 1
        await backend.close()
        assert await conn.fetchval(query, low) == 0


async def test_a_writer_whose_session_ended_locks_again_before_it_writes(url: str) -> None:
    holder = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1"
    async with opened(url) as backend, sql() as conn:
        low = backend.lock_key & 0xFFFFFFFF
        await conn.execute("SELECT pg_terminate_backend($1)", await conn.fetchval(holder, low))
        with pytest.raises(keyflow.StorageError):  # the session is gone, and the lock too
            await backend.write(WriteBatch([record(1)]))
        rival = open_backend(url, retention=100)
        await rival.open()  # took the lock meanwhile
        with pytest.raises(keyflow.StorageLockedError):
            await backend.write(WriteBatch([record(2)]))
        await rival.close()
        await backend.write(WriteBatch([record(3)]))  # a new session, locked again
        assert await conn.fetchval(holder, low) is not None
        assert [r.id for r in await backend.list_runs(RunQuery())] == ["run-0003"]


async def test_a_batch_is_one_statement_unless_it_stores_a_pause(url: str) -> None:
    async with opened(url) as backend:
        driver = (await backend._writable().get_raw_connection()).driver_connection
        assert driver is not None
        await backend.write(WriteBatch([record(1)]))  # the first: asyncpg learns the types
        statements: list[str] = []  # (asyncpg tells its query loggers at its next turn)
        driver.add_query_logger(lambda query: statements.append(query.query))
        labelled = record(2, labels={"org": "acme"})
        await backend.write(WriteBatch([record(1), labelled], [("crawl", "idem", "run-0002")]))
        await backend.write(WriteBatch([finish(record(1))]))
        assert await backend.find_idempotent("crawl", "idem") == "run-0002"  # (reads: elsewhere)
        found = await backend.list_runs(RunQuery(labels=(("org", "acme"),)))
        assert [run.id for run in found] == ["run-0002"]
        stored = await backend.get_run("run-0001")
        assert stored is not None
        assert stored.status is keyflow.RunStatus.COMPLETED
        assert len(statements) == 2  # runs, keys, labels, the count of writes: one each
        paused = WriteBatch([record(3)])
        paused.pauses = [("job", "crawl", True)]
        await backend.write(paused)  # the rare batch: a transaction of statements
        assert await backend.get_run("run-0003") is not None
        assert len(statements) > 3
    again = open_backend(url, retention=1_000)
    state = await again.open()
    await again.close()
    assert ("job", "crawl") in state.paused
    assert [run.id for run in state.unfinished] == ["run-0002", "run-0003"]


# -- NUL characters: refused one run at a time ---------------------------------------


async def test_a_nul_fails_its_trigger_alone_and_its_batch_neighbours_stand(url: str) -> None:
    kf = keyflow.Keyflow(storage=url, workers=2)
    kf.job("work")(_noop)
    async with kf:
        keys = [f"k{i}" if i != 3 else "k\x003" for i in range(6)]
        results = await asyncio.gather(
            *(kf.trigger("work", {"n": i}, concurrency_key=key) for i, key in enumerate(keys)),
            kf.trigger("work", {}, labels={"tag\x00": "x"}),
            kf.trigger("work", {}, idempotency_key="once\x00"),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 3
        assert all(isinstance(r, keyflow.InvalidInputError) and "NUL" in str(r) for r in failed)
        assert [type(r).__name__ for r in results[:6]].count("TriggerResult") == 5
        await kf.run_until_idle()
        stored = await kf.list_runs(limit=100)
        assert sorted(r.concurrency_key or "" for r in stored) == ["k0", "k1", "k2", "k4", "k5"]
        assert {r.status for r in stored} == {keyflow.RunStatus.COMPLETED}
        assert (
            await kf.list_runs(concurrency_key="k\x003") == []
        )  # a question with a NUL: no answer
        assert await kf.count_runs(labels={"tag\x00": "x"}) == 0


async def test_the_backend_refuses_runs_it_cannot_hold_and_stores_the_rest(url: str) -> None:
    async with opened(url) as backend:
        good = record(1, input={"text": "a\x00b"})  # JSON text: a NUL written escaped
        bad_job, bad_label, joined = (
            record(2, job="j\x00"),
            record(3, labels={"a": "\x00"}),
            record(4),
        )
        refused = await backend.write(
            WriteBatch([good, bad_job, bad_label, joined], [("crawl", "i\x00", "run-0004")])
        )
        assert refused is not None
        assert sorted(refused) == ["run-0002", "run-0003", "run-0004"]
        assert "job" in str(refused["run-0002"])
        assert "idempotency key" in str(refused["run-0004"])
        assert [r.id for r in await backend.list_runs(RunQuery())] == ["run-0001"]
        found = await backend.get_run("run-0001")
        assert found is not None
        assert found.input == {"text": "a\x00b"}
        assert await backend.find_idempotent("crawl", "i\x00") is None


# -- the schema: versions, migrations, sharing ---------------------------------------


async def test_a_schema_from_a_newer_keyflow_is_refused(url: str, tmp_path: Path) -> None:
    async with opened(url):
        pass
    async with sql() as conn:
        await conn.execute(f'UPDATE "{schema_for(tmp_path)}".keyflow_schema SET version = 99')
    backend = open_backend(url, retention=100)
    with pytest.raises(keyflow.StorageCorruptError, match="schema version 99") as refused:
        await backend.open()
    assert schema_for(tmp_path) in str(refused.value)
    reader = open_backend(url.replace("mode=single", "mode=ro"), retention=100)
    with pytest.raises(keyflow.StorageCorruptError, match="schema version 99"):
        await reader.open()


async def test_an_older_schema_is_migrated_at_open(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(url) as backend:
        await backend.write(WriteBatch([record(1)]))
    # A later version adds a column: the current version is migrated to it.
    current = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setattr(
        schema, "MIGRATIONS", {current: ["ALTER TABLE keyflow_runs ADD COLUMN note TEXT"]}
    )
    async with opened(url) as backend:
        assert (await backend.get_run("run-0001")) is not None
    async with sql() as conn:
        name = schema_for(tmp_path)
        assert await conn.fetchval(f'SELECT version FROM "{name}".keyflow_schema') == current + 1
        assert await conn.fetchval(f'SELECT note FROM "{name}".keyflow_runs') is None


async def test_a_version_2_schema_is_migrated_to_fewer_index_entries(
    url: str, tmp_path: Path
) -> None:
    async with opened(url) as backend:
        await backend.write(WriteBatch([finish(record(1)), record(2)]))
    name = schema_for(tmp_path)
    async with sql() as conn:  # back to version 2's shape
        await conn.execute(f'SET search_path TO "{name}"')
        await conn.execute(
            "ALTER TABLE keyflow_runs ADD CONSTRAINT keyflow_runs_seq_key UNIQUE (seq)"
        )
        await conn.execute("DROP INDEX keyflow_runs_finished")
        await conn.execute("DROP TABLE keyflow_watchers")
        await conn.execute("CREATE INDEX keyflow_runs_finished ON keyflow_runs (finished_at)")
        await conn.execute("ALTER TABLE keyflow_runs DROP COLUMN entered")
        await conn.execute("DROP SEQUENCE keyflow_entered")
        await conn.execute("UPDATE keyflow_schema SET version = 2")
    async with opened(url, retention=1) as backend:
        assert {r.id for r in await backend.list_runs(RunQuery())} == {"run-0001", "run-0002"}
        await backend.write(WriteBatch([finish(record(3))]))  # prunes the oldest finished
        assert {r.id for r in await backend.list_runs(RunQuery())} == {"run-0002", "run-0003"}
    async with sql() as conn:
        version = await conn.fetchval(f'SELECT version FROM "{name}".keyflow_schema')
        assert version == schema.SCHEMA_VERSION
        indexes = {
            row[0]: row[1]
            for row in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", name
            )
        }
    assert "keyflow_runs_seq_key" not in indexes
    assert "WHERE (finished_at IS NOT NULL)" in indexes["keyflow_runs_finished"]
    assert "keyflow_watchers_pkey" in indexes


async def test_a_version_3_schema_keeps_its_queues_order_when_migrated(
    url: str, tmp_path: Path
) -> None:
    late = record(1)
    late.due_at = T0 + 10  # became due after the two made next: it waits behind them
    async with opened(url) as backend:
        await backend.write(WriteBatch([late, record(2), record(3), finish(record(5))]))
    name = schema_for(tmp_path)
    async with sql() as conn:  # back to version 3's shape
        await conn.execute(f'SET search_path TO "{name}"')
        await conn.execute("ALTER TABLE keyflow_runs DROP COLUMN entered")
        await conn.execute("DROP SEQUENCE keyflow_entered")
        await conn.execute("UPDATE keyflow_schema SET version = 3")
    async with opened(url) as backend:
        await backend.write(WriteBatch([record(4)]))  # made after the migration
    async with sql() as conn:
        await conn.execute(f'SET search_path TO "{name}"')
        assert await conn.fetchval("SELECT version FROM keyflow_schema") == 4
        order = [
            row[0]
            for row in await conn.fetch(
                "SELECT id FROM keyflow_runs WHERE status = 'queued' ORDER BY entered"
            )
        ]
    assert order == ["run-0002", "run-0003", "run-0001", "run-0004"]


async def test_a_schema_shared_with_other_tables_is_fine(url: str, tmp_path: Path) -> None:
    name = schema_for(tmp_path)
    async with sql() as conn:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        await conn.execute(f'CREATE TABLE "{name}".orders (id int)')
    async with opened(url) as backend:
        await backend.write(WriteBatch([record(1)]))
    async with opened(url) as backend:
        assert [r.id for r in await backend.list_runs(RunQuery())] == ["run-0001"]
    async with sql() as conn:
        assert await conn.fetchval(f'SELECT count(*) FROM "{name}".orders') == 0


async def test_ties_of_creation_time_keep_creation_order_across_updates(url: str) -> None:
    async with opened(url) as backend:
        runs = [record(n) for n in (1, 2, 3)]
        for run in runs:
            run.created_at = T0  # one instant
        await backend.write(WriteBatch(runs))
        await backend.write(WriteBatch([finish(runs[0])]))  # an update keeps its seq
        assert [r.id for r in await backend.list_runs(RunQuery())] == [
            "run-0003",
            "run-0002",
            "run-0001",
        ]
    async with opened(url) as backend:
        again = open_backend(url.replace("mode=single", "mode=ro"), retention=100)
        state = await again.open()
        await again.close()
        assert [r.id for r in state.unfinished] == ["run-0002", "run-0003"]


async def test_pruning_takes_a_runs_idempotency_key_and_labels(url: str, tmp_path: Path) -> None:
    async with opened(url, retention=1) as backend:
        for n in (1, 2, 3):
            run = finish(record(n, labels={"n": str(n)}))
            await backend.write(WriteBatch([run], [("crawl", f"i{n}", run.id)]))
        assert [r.id for r in await backend.list_runs(RunQuery())] == ["run-0003"]
        assert await backend.find_idempotent("crawl", "i1") is None
        assert await backend.find_idempotent("crawl", "i3") == "run-0003"
    async with sql() as conn:
        name = schema_for(tmp_path)
        assert await conn.fetchval(f'SELECT count(*) FROM "{name}".keyflow_labels') == 1
        assert await conn.fetchval(f'SELECT count(*) FROM "{name}".keyflow_idempotency') == 1


# -- read-only opens ------------------------------------------------------------------


async def test_a_read_only_open_reads_beside_the_writer_and_writes_nothing(url: str) -> None:
    reader = open_backend(url.replace("mode=single", "mode=ro"), retention=100)
    with pytest.raises(keyflow.StorageCorruptError, match="no keyflow tables"):
        await reader.open()  # nothing there yet, and a reader creates nothing
    async with opened(url) as writer:
        await writer.write(WriteBatch([record(1)], pauses=[("key", "k", True)]))
        reader = open_backend(url.replace("mode=single", "mode=ro"), retention=100)
        state = await reader.open()  # no lock taken: the writer holds it
        try:
            assert [r.id for r in state.unfinished] == ["run-0001"]
            assert state.paused == frozenset({("key", "k")})
            before = await reader.change_token()
            await writer.write(WriteBatch([finish(record(1))]))
            assert await reader.change_token() != before
            done = await reader.get_run("run-0001")
            assert done is not None
            assert done.status is keyflow.RunStatus.COMPLETED
            with pytest.raises(keyflow.StorageError, match="read-only"):
                await reader.write(WriteBatch([record(2)]))
        finally:
            await reader.close()
        assert await writer.get_run("run-0002") is None


# -- URLs and errors ------------------------------------------------------------------


def test_urls_name_the_database_schema_and_mode() -> None:
    plain = open_backend("postgresql://kf@db.example:6543/jobs", retention=5)
    assert isinstance(plain, PostgreSQLBackend)
    assert (plain.url.host, plain.url.port, plain.url.database) == ("db.example", 6543, "jobs")
    assert (plain.schema, plain.read_only, plain.retention) == ("public", False, 5)
    spelled = open_backend("postgresql+asyncpg://kf@h/jobs?schema=Kf%20Runs&mode=ro", retention=5)
    assert isinstance(spelled, PostgreSQLBackend)
    assert (spelled.schema, spelled.read_only) == ("Kf Runs", True)
    assert plain.lock_key != spelled.lock_key


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://kf:s3cret@h/db?scheme=x", "unknown option"),
        ("postgresql://kf:s3cret@h/db?mode=rx", "mode must be"),
        ("postgresql://kf:s3cret@h/db?schema=", "schema must be"),
        ("postgresql://kf:s3cret@h/db?schema=" + "x" * 64, "schema must be"),
    ],
)
def test_bad_options_are_refused_without_showing_the_password(url: str, problem: str) -> None:
    with pytest.raises(keyflow.ConfigurationError, match=problem) as refused:
        open_backend(url, retention=5)
    assert "s3cret" not in str(refused.value)


async def test_an_unreachable_server_is_a_storage_error_at_once() -> None:
    backend = open_backend("postgresql://kf:s3cret@127.0.0.1:1/nowhere", retention=5)
    started = time.monotonic()
    with pytest.raises(keyflow.StorageError, match=r"cannot connect to .*127\.0\.0\.1:1/nowhere"):
        await backend.open()
    assert time.monotonic() - started < 5
    kf = keyflow.Keyflow(storage="postgresql://kf:s3cret@127.0.0.1:1/nowhere")
    with pytest.raises(keyflow.StorageError) as failed:
        await kf.start()
    assert "s3cret" not in str(failed.value)


async def test_a_driver_error_is_said_in_the_drivers_words(url: str, tmp_path: Path) -> None:
    async with opened(url) as backend:
        async with sql() as conn:
            await conn.execute(f'DROP TABLE "{schema_for(tmp_path)}".keyflow_pauses')
        with pytest.raises(keyflow.StorageError) as failed:
            await backend.write(WriteBatch([record(1)], pauses=[("job", "crawl", True)]))
        message = str(failed.value)
        assert 'relation "keyflow_pauses" does not exist' in message
        assert "INSERT" not in message  # not SQLAlchemy's statement dump
        assert await backend.get_run("run-0001") is None  # the batch rolled back whole
        await backend.write(WriteBatch([record(1)]))  # the connection still writes
        assert await backend.get_run("run-0001") is not None


async def test_a_batch_trigger_with_one_nul_run_is_refused_whole(url: str) -> None:
    kf = keyflow.Keyflow(storage=url, workers=2)
    kf.job("work")(_noop)
    async with kf:
        with pytest.raises(keyflow.InvalidInputError, match="NUL"):
            await kf.batch_trigger(
                [
                    keyflow.TriggerRequest("work", concurrency_key="fine"),
                    keyflow.TriggerRequest("work", concurrency_key="bad\x00key"),
                ]
            )
        await kf.run_until_idle()
        assert await kf.count_runs() == 0  # all or nothing, as batch_trigger promises
