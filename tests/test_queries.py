"""Run queries on every backend: key prefixes, time ranges, capped counts, free text."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.storage_backends.sqlite import SQLiteBackend
from keyflow.testing import VirtualClock

from .conftest import MakeKeyflow, shared_differs


async def noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None


@pytest.fixture
async def kf(make_keyflow: MakeKeyflow) -> keyflow.Keyflow:
    kf = make_keyflow()
    kf.job("job")(noop)
    kf.job("other")(noop)
    await kf.start()
    return kf


async def ids(kf: keyflow.Keyflow, **filters: Any) -> list[str]:
    return [run.id for run in await kf.list_runs(limit=1000, **filters)]


async def test_key_prefixes_match_exactly_and_use_no_wildcards(kf: keyflow.Keyflow) -> None:
    keys = ["org:acme:1", "org:acme:2", "org:beta", "Org:acme", "a_b%c", "axb%c", None]
    made = {key: (await kf.trigger("job", {}, concurrency_key=key)).run_id for key in keys}
    await kf.run_until_idle(timeout=5)
    assert set(await ids(kf, key_prefix="org:acme")) == {made["org:acme:1"], made["org:acme:2"]}
    assert set(await ids(kf, key_prefix="org:")) == {
        made["org:acme:1"],
        made["org:acme:2"],
        made["org:beta"],
    }
    assert await ids(kf, key_prefix="a_b%") == [made["a_b%c"]]  # no LIKE wildcards
    assert await ids(kf, key_prefix="Org") == [made["Org:acme"]]  # case matters
    assert await kf.count_runs(key_prefix="org:acme") == 2


async def test_time_ranges_pick_runs_by_creation_and_finish(
    kf: keyflow.Keyflow, clock: VirtualClock
) -> None:
    start = clock.now()
    first = await kf.trigger("job", {})
    await kf.run_until_idle(timeout=5)  # finished at start
    clock.advance(10)
    second = await kf.trigger("job", {})
    await kf.run_until_idle(timeout=5)  # finished at start + 10
    clock.advance(10)
    waiting = await kf.trigger("job", {}, delay=60)  # created at start + 20, unfinished
    assert await ids(kf, created_after=start + 10) == [waiting.run_id, second.run_id]
    assert await ids(kf, created_before=start + 10) == [first.run_id]
    assert await ids(kf, created_after=start + 5, created_before=start + 15) == [second.run_id]
    assert await ids(kf, finished_after=start) == [second.run_id, first.run_id]
    assert await ids(kf, finished_before=start + 10) == [first.run_id]
    assert await kf.count_runs(finished_after=start + 1) == 1
    with pytest.raises(keyflow.ConfigurationError, match="created_after"):
        await kf.list_runs(created_after=float("nan"))


async def test_counts_can_stop_early(kf: keyflow.Keyflow) -> None:
    for n in range(7):
        await kf.trigger("job", {"n": n}, labels={"team": "a"})
    await kf.run_until_idle(timeout=5)
    assert await kf.count_runs(labels={"team": "a"}) == 7
    assert await kf.count_runs(labels={"team": "a"}, at_most=3) == 3
    assert await kf.count_runs(labels={"team": "a"}, at_most=100) == 7
    assert await kf.count_runs(at_most=0) == 0
    with pytest.raises(keyflow.ConfigurationError, match="at_most"):
        await kf.count_runs(at_most=-1)


async def test_free_text_finds_finished_and_unfinished_runs_alike(kf: keyflow.Keyflow) -> None:
    done = await kf.trigger("job", {"note": "needle in a haystack"})
    await kf.run_until_idle(timeout=5)
    waiting = await kf.trigger("job", {"note": "another NEEDLE"}, delay=60)
    await kf.trigger("job", {"note": "hay only"}, delay=60)
    assert set(await ids(kf, text="needle")) == {done.run_id, waiting.run_id}
    assert set(await ids(kf, text="NeEdLe")) == {done.run_id, waiting.run_id}
    assert await ids(kf, text="in a hay") == [done.run_id]
    assert await ids(kf, text="le") != []  # shorter than a trigram: still found
    assert await kf.count_runs(text="needle") == 2
    assert await kf.count_runs(text="needle", status=RunStatus.COMPLETED) == 1
    assert await ids(kf, text="no such words") == []


async def test_free_text_forgets_pruned_runs(make_keyflow: MakeKeyflow, storage_url: str) -> None:
    shared_differs(
        storage_url,
        "pruning at once",
        "finished runs beyond retention= are pruned every 10 seconds, not at each write",
    )
    kf = make_keyflow(retention=2)
    kf.job("job")(noop)
    await kf.start()
    made = [(await kf.trigger("job", {"word": f"word{n}"})).run_id for n in range(6)]
    await kf.run_until_idle(timeout=5)
    await kf.trigger("job", {"word": "word9"})  # one more write: the pruning is stored
    await kf.run_until_idle(timeout=5)
    assert await ids(kf, text="word0") == []
    assert await ids(kf, text="word5") == [made[5]]


async def test_a_version_1_sqlite_store_is_migrated_with_its_labels_and_text(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE keyflow_schema (version INTEGER NOT NULL);
            INSERT INTO keyflow_schema VALUES (1);
            CREATE TABLE keyflow_runs (id VARCHAR PRIMARY KEY, job VARCHAR NOT NULL,
              concurrency_key VARCHAR, status VARCHAR NOT NULL, created_at FLOAT NOT NULL,
              finished_at FLOAT, data TEXT NOT NULL);
            CREATE TABLE keyflow_idempotency (job VARCHAR, idempotency_key VARCHAR,
              run_id VARCHAR NOT NULL, PRIMARY KEY (job, idempotency_key));
            """
        )
        for n, status in enumerate(("completed", "queued")):
            row: dict[str, Any] = {
                "id": f"old-{n}", "job": "job", "key": "k", "status": status,
                "input": {"note": f"legacy note {n}"}, "labels": {"équipe": "données"},
                "idempotency_key": None, "parent_run_id": None, "attempt": 1 - n,
                "max_attempts": 1, "trigger_count": 3, "created_at": 10.0 + n,
                "due_at": 10.0 + n, "started_at": 11.0 if n == 0 else None,
                "finished_at": 12.0 if n == 0 else None, "output": None, "error": None,
                "errors": [], "progress": None, "logs": [], "coalesced": [],
                "interruptions": 0, "crashes": 0, "retries_used": 0,
                "cancel_requested": False, "by_queue": False,
            }  # fmt: skip
            db.execute(
                "INSERT INTO keyflow_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row["id"], "job", "k", status, row["created_at"], row["finished_at"],
                 json.dumps(row)),
            )  # fmt: skip
    db.close()
    backend = SQLiteBackend(path)
    await backend.open()
    try:
        from keyflow.storage_backends import RunQuery

        labelled = await backend.list_runs(RunQuery(labels=(("équipe", "données"),)))
        assert [r.id for r in labelled] == ["old-1", "old-0"]
        found = await backend.list_runs(RunQuery(text="legacy note 0"))
        assert [r.id for r in found] == ["old-0"]
    finally:
        await backend.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM keyflow_schema").fetchone() == (3,)
        columns = db.execute(
            "SELECT started_at, attempt, trigger_count FROM keyflow_runs ORDER BY id"
        ).fetchall()
    db.close()
    assert columns == [(11.0, 1, 3), (None, 0, 3)]
