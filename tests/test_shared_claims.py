"""Claims in shared mode: one statement leases and starts runs (the start computed in SQL,
as :meth:`RunRecord.begin_attempt` does it), runs given back unstarted, and leases a
process holds without knowing it (a reply lost after the commit)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus, StorageError
from keyflow.records import RunRecord
from keyflow.shared import sql

from .pg import coordinator_of, shared_schema

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """A fresh schema in shared mode, short leases (a sweep for orphans each second)."""
    yield from shared_schema(tmp_path)


async def test_a_start_whose_reply_was_lost_is_given_back_and_runs_as_the_same_attempt(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []
    async with keyflow.Keyflow(url, workers=0) as producer:
        worker = keyflow.Keyflow(url, workers=1)

        @worker.job("once")
        async def once(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            ran.append(ctx.attempt)

        producer.job("once")(once.handler)  # the same job everywhere

        coordinator = coordinator_of(worker)
        fetch = coordinator.fetch
        lost = False

        async def claim_then_lose_the_reply(query: str, *args: object) -> list[Any]:
            nonlocal lost
            rows = await fetch(query, *args)  # committed
            if query == sql.CLAIM and rows and not lost:
                lost = True
                raise StorageError("connection lost (as if the reply never came)")
            return rows

        monkeypatch.setattr(coordinator, "fetch", claim_then_lose_the_reply)
        result = await producer.trigger("once")
        async with worker:
            run = await producer.wait(result.run_id, timeout=60)
    assert lost
    assert run.status is RunStatus.COMPLETED
    assert ran == [1]  # it never ran before: the same attempt, and no crash counted
    assert run.attempt == 1
    assert "a reply from the database was lost" in caplog.text


async def test_a_pending_lease_nobody_knows_of_is_given_back(url: str) -> None:
    ran: list[int] = []
    async with keyflow.Keyflow(url, workers=0) as producer:
        worker = keyflow.Keyflow(url, workers=1)

        @worker.job("once")
        async def once(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            ran.append(ctx.attempt)

        producer.job("once")(once.handler)  # the same job everywhere

        result = await producer.trigger("once")
        owner = coordinator_of(worker).owner
        # Leased to the worker behind its back (its claim's reply lost), for an hour.
        await coordinator_of(producer).execute(
            "UPDATE keyflow_runs SET lease_owner = $1, generation = generation + 1, "
            "lease_until = clock_timestamp() + interval '1 hour' WHERE id = $2",
            owner,
            result.run_id,
        )
        async with worker:
            run = await producer.wait(result.run_id, timeout=60)
    assert run.status is RunStatus.COMPLETED
    assert ran == [1]


async def test_a_claim_runs_the_oldest_first_and_each_run_once(url: str) -> None:
    ran: list[int] = []
    async with keyflow.Keyflow(url, workers=0) as producer:
        workers = [keyflow.Keyflow(url, workers=3) for _ in range(3)]
        for kf in (producer, *workers):

            @kf.job("noop")
            async def noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
                ran.append(int(input["n"]))

        results = await producer.batch_trigger(
            [keyflow.TriggerRequest("noop", {"n": n}) for n in range(60)]
        )
        async with AsyncExitStack() as stack:
            for kf in workers:
                await stack.enter_async_context(kf)
            await asyncio.gather(*(producer.wait(r.run_id, timeout=60) for r in results))
    assert sorted(ran) == list(range(60))


async def _json_set(kf: keyflow.Keyflow, run_id: str, path: str, value: str) -> None:
    """Change one field of a run's stored JSON, behind keyflow's back."""
    await coordinator_of(kf).execute(
        "UPDATE keyflow_runs SET data = jsonb_set(data::jsonb, $2::text[], $3::jsonb)::text "
        "WHERE id = $1",
        run_id,
        [path],
        value,
    )


async def _rewrite(kf: keyflow.Keyflow, run_id: str, **fields: Any) -> None:
    """Change fields of a stored run, behind keyflow's back, stored as keyflow stores it."""
    coordinator = coordinator_of(kf)
    data = await coordinator.fetchval("SELECT data FROM keyflow_runs WHERE id = $1", run_id)
    record = coordinator.decode(data)
    for name, value in fields.items():
        setattr(record, name, value)
    await coordinator.execute(
        "UPDATE keyflow_runs SET data = $2 WHERE id = $1", run_id, record_json(record)
    )


ODD_INPUTS: list[dict[str, Any]] = [
    {"n": 0},
    {"x": 1e16, "z": -0.0, "big": 10**30, "tiny": 5e-324},  # numbers JSON may rewrite
    {"s": "a\x00b", "nested": {"status": "pending", "attempt": 7}},  # a NUL; lookalike keys
    {"b": 1, "a": 2},  # key order is the handler's to see
    {"u": "\u00e9\U0001f600", "q": '"status":"pending",'},
]


async def test_the_claim_starts_a_run_as_begin_attempt_does(url: str) -> None:
    async with keyflow.Keyflow(url, workers=0) as kf:
        kf.job("j")(_noop)
        made = [await kf.trigger("j", input) for input in ODD_INPUTS]
        again, retried = await kf.trigger("j", {"n": 1}), await kf.trigger("j", {"n": 2})
        # A run a stop cut short (the same attempt again, one more start), and a retry.
        await _rewrite(kf, again.run_id, stop_interrupted=True, attempt=1, starts=1)
        await _rewrite(kf, retried.run_id, attempt=2, starts=3)
        coordinator = coordinator_of(kf)
        at = 1234.5678901234567
        before = await coordinator.claim(["j"], 10, lambda: at, lambda k: 1)
        assert [r.id for r in before] == [r.run_id for r in (*made, again, retried)]
        for record in before:
            started = coordinator.decode(record_json(record))
            started.begin_attempt(at)  # what Python does
            assert coordinator.stored[record.id] == record_json(started)  # byte for byte
        for result, input in zip(made, ODD_INPUTS, strict=False):
            run = await kf.get_run(result.run_id)
            assert run is not None
            assert run.input == input
            assert list(run.input) == list(input)
            assert [type(v) for v in run.input.values()] == [type(v) for v in input.values()]
        stored = await kf.get_run(again.run_id)
        assert stored is not None
        assert (stored.status, stored.attempt, stored.started_at) == (RunStatus.RUNNING, 1, at)


async def test_a_run_stored_in_another_layout_is_started_all_the_same(url: str) -> None:
    async with keyflow.Keyflow(url, workers=0) as kf:
        kf.job("j")(_noop)
        result = await kf.trigger("j", {"b": 1, "a": 2})
        # Rewritten by jsonb (another key order, as an older keyflow stored runs).
        await _json_set(kf, result.run_id, "attempt", "0")
        coordinator = coordinator_of(kf)
        taken = await coordinator.claim(["j"], 10, lambda: 7.0, lambda k: 1)
        assert [r.id for r in taken] == [result.run_id]  # started by this very claim
        run = await kf.get_run(result.run_id)
        assert run is not None
        assert (run.status, run.attempt, run.started_at) == (RunStatus.RUNNING, 1, 7.0)


def record_json(record: RunRecord) -> str:
    """``record`` as the database stores it."""
    from keyflow.storage_backends.postgres import row_columns

    return str(row_columns(record)["data"])


async def _noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None


async def test_a_crash_suspect_beyond_its_share_is_given_back_unstarted(url: str) -> None:
    async with keyflow.Keyflow(url, workers=0) as kf:
        kf.job("j")(_noop)
        suspect = await kf.trigger("j")
        await _rewrite(kf, suspect.run_id, crashes=1)
        coordinator = coordinator_of(kf)
        assert await coordinator.claim(["j"], 10, lambda: 5.0, lambda k: 1, suspects=0) == []
        assert coordinator.leases == {}
        run = await kf.get_run(suspect.run_id)
        assert run is not None
        assert (run.status, run.attempt, run.started_at) == (RunStatus.PENDING, 0, None)
        # Unleased: a claim that may take a suspect takes it.
        taken = await coordinator.claim(["j"], 10, lambda: 6.0, lambda k: 1, suspects=1)
        assert [r.id for r in taken] == [suspect.run_id]


async def test_a_pending_run_asked_to_cancel_is_cancelled_unrun_when_claimed(url: str) -> None:
    ran: list[int] = []
    async with keyflow.Keyflow(url, workers=0) as producer:
        worker = keyflow.Keyflow(url, workers=1)
        for kf in (producer, worker):

            @kf.job("once", concurrency_key=lambda i: "k")
            async def once(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
                ran.append(int(input["n"]))

        # Asked to cancel while a process held it (a stop handing it back), which died.
        asked = await producer.trigger("once", {"n": 1})
        await _rewrite(producer, asked.run_id, cancel_requested=True)
        async with worker:
            run = await producer.wait(asked.run_id, timeout=60)
            assert run.status is RunStatus.CANCELLED
            after = await producer.trigger("once", {"n": 2})  # the lane is free again
            assert (await producer.wait(after.run_id, timeout=60)).status is RunStatus.COMPLETED
    assert ran == [2]


async def test_a_give_back_that_fails_leaves_the_run_to_the_orphan_sweep(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kf = keyflow.Keyflow(url, workers=0)
    coordinator = coordinator_of(kf)
    sweep = coordinator.find_orphans

    async def no_sweep(now: float) -> int:
        return 0

    # The scheduler's own sweeps (each second here) would see the orphan first on a slow
    # machine: this test sweeps by itself.
    monkeypatch.setattr(coordinator, "find_orphans", no_sweep)
    async with kf:
        kf.job("j")(_noop)
        normal = await kf.trigger("j")
        suspect = await kf.trigger("j")
        await _rewrite(kf, suspect.run_id, crashes=1)

        async def cut(*args: object) -> None:
            raise StorageError("connection lost")

        with monkeypatch.context() as patch:
            patch.setattr(coordinator, "lock_lanes", cut)  # the give-back's first step
            taken = await coordinator.claim(["j"], 10, lambda: 5.0, lambda k: 1, suspects=0)
        assert [r.id for r in taken] == [normal.run_id]  # the claim stands
        assert list(coordinator.leases) == [normal.run_id]
        assert await sweep(6.0) == 0  # seen once
        assert await sweep(7.0) == 1  # seen twice: given back
        run = await kf.get_run(suspect.run_id)
        assert run is not None
        assert run.status is RunStatus.PENDING


async def test_a_log_line_at_a_handlers_first_line_is_stored_while_it_runs(url: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    async with keyflow.Keyflow(url, workers=0) as producer:
        worker = keyflow.Keyflow(url, workers=1)
        for kf in (producer, worker):

            @kf.job("logs")
            async def logs(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
                ctx.log.info("start")
                started.set()
                await release.wait()

        result = await producer.trigger("logs")
        async with worker:
            await started.wait()
            await worker._core.pipeline.flush()  # what the worker wrote so far
            run = await producer.get_run(result.run_id)
            assert run is not None
            assert run.status is RunStatus.RUNNING
            assert [entry.message for entry in run.logs] == ["start"]  # not only at the end
            release.set()
            assert (await producer.wait(result.run_id, timeout=60)).logs


def test_a_copy_of_a_run_record_holds_every_field() -> None:
    record = RunRecord("r1", "j", "k", RunStatus.RUNNING, {"n": 1}, 1.0, 2.0, 3)
    values: dict[str, Any] = {
        "attempt": 4,
        "trigger_count": 5,
        "started_at": 6.0,
        "finished_at": 7.0,
        "output": {"ok": True},
        "error": "boom",
        "interruptions": 8,
        "crashes": 9,
        "retries_used": 10,
        "cancel_requested": True,
        "stop_interrupted": True,
        "starts": 11,
        "unsettled": 12,
    }
    for name, value in values.items():
        setattr(record, name, value)
    twin = record.copy()
    fields = {
        *values,
        *("id", "job", "key", "status", "input", "created_at", "due_at", "max_attempts"),
        *("labels", "idempotency_key", "parent_run_id", "by_queue", "durable"),
        *("logs", "errors", "coalesced", "progress"),
    }
    # Every field (a compiled class has no __slots__ to list: the pure one checks).
    slots = {n for cls in type(record).__mro__ for n in getattr(cls, "__slots__", ())}
    assert slots <= fields
    for name in fields:
        assert getattr(twin, name) == getattr(record, name), name
