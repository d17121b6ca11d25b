"""Per-run results of a batch write: a run storage refuses fails only its own triggers.

A backend may store a batch but some of its runs (``StorageBackend.write`` returns
them, with why). Triggers that made or joined a refused run are rolled back and fail
with StorageError; their neighbours in the same batch stand.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from keyflow import Disposition, Keyflow, RunContext, StorageError, TriggerResult
from keyflow.runs import JSONObject
from keyflow.storage_backends import MemoryBackend
from keyflow.storage_backends.base import Refusals, WriteBatch
from keyflow.storage_backends.sqlite import SQLiteBackend


def _without(batch: WriteBatch, refused: Refusals) -> WriteBatch:
    """``batch`` less the refused runs and their idempotency keys: what a refusing
    backend stores."""
    return WriteBatch(
        [r for r in batch.runs if r.id not in refused],
        [entry for entry in batch.idempotency if entry[2] not in refused],
        batch.pauses,
    )


class RefusingSQLite(SQLiteBackend):
    """SQLite that refuses to store runs labelled ``refuse`` (as a shared database
    might refuse a run whose idempotency key another process took first)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[int] = []
        """How many runs each batch carried (to see triggers share a batch)."""

    async def write(self, batch: WriteBatch) -> Refusals | None:
        refused: dict[str, Exception] = {
            r.id: ValueError("labelled refuse") for r in batch.runs if r.labels.get("refuse")
        }
        kept = _without(batch, refused)
        self.batches.append(len(batch.runs))
        await super().write(kept)
        return refused or None


async def _noop(ctx: RunContext, input: JSONObject) -> None:
    return None


async def _gather(
    kf: Keyflow, calls: list[tuple[str, dict[str, str] | None, str | None]]
) -> list[TriggerResult | BaseException]:
    return await asyncio.gather(
        *(
            kf.trigger("work", {"n": i}, concurrency_key=key, labels=labels, coalesce="queue")
            for i, (key, labels, _note) in enumerate(calls)
        ),
        return_exceptions=True,
    )


async def test_a_refused_run_fails_its_trigger_alone(tmp_path: Path) -> None:
    backend = RefusingSQLite(tmp_path / "runs.db")
    kf = Keyflow(backend)
    kf.job("work")(_noop)
    async with kf:
        calls: list[tuple[str, dict[str, str] | None, str | None]] = [
            (f"k{i}", {"refuse": "yes"} if i == 3 else None, None) for i in range(8)
        ]
        results = await _gather(kf, calls)
        assert max(backend.batches) == 8  # all eight shared one batch
        refused = results[3]
        assert isinstance(refused, StorageError)
        assert "refused" in str(refused)
        ok = [r for i, r in enumerate(results) if i != 3]
        assert all(isinstance(r, TriggerResult) for r in ok)
        await kf.run_until_idle()
        runs = await kf.list_runs(limit=100)
        assert sorted(r.concurrency_key or "" for r in runs) == [
            f"k{i}" for i in range(8) if i != 3
        ]
        assert all(r.status == "completed" for r in runs)
        assert kf.statistics().triggers.created == 7
        assert kf.lane("k3").state == "idle"
        assert kf.statistics().storage_error is None  # a refusal is not an outage
        # Storage still takes the key that was refused, once its run is storable.
        again = await kf.trigger("work", concurrency_key="k3")
        assert again.disposition is Disposition.CREATED


async def test_triggers_that_joined_a_refused_run_fail_with_it(tmp_path: Path) -> None:
    backend = RefusingSQLite(tmp_path / "runs.db")
    kf = Keyflow(backend)
    kf.job("work")(_noop)
    async with kf:
        # The first trigger of lane "a" makes a run storage refuses; the second joins
        # that run (coalesced) in the same batch; lane "b" is a neighbour.
        calls: list[tuple[str, dict[str, str] | None, str | None]] = [
            ("a", {"refuse": "yes"}, None),
            ("a", None, None),
            ("b", None, None),
        ]
        results = await _gather(kf, calls)
        assert isinstance(results[0], StorageError)
        assert isinstance(results[1], StorageError)
        kept = results[2]
        assert isinstance(kept, TriggerResult)
        await kf.run_until_idle()
        runs = await kf.list_runs(limit=10)
        assert [r.id for r in runs] == [kept.run_id]
        assert kf.statistics().triggers.coalesced == 0


@pytest.mark.parametrize("refuse_first", [True, False])
async def test_a_queued_run_behind_a_refused_one_still_runs(
    tmp_path: Path, refuse_first: bool
) -> None:
    backend = RefusingSQLite(tmp_path / "runs.db")
    kf = Keyflow(backend)
    kf.job("work")(_noop)
    async with kf:
        # Two runs of one lane without coalescing: the second waits behind the first.
        labels = ({"refuse": "yes"}, None) if refuse_first else (None, {"refuse": "yes"})
        results = await asyncio.gather(
            *(kf.trigger("work", concurrency_key="k", labels=lab) for lab in labels),
            return_exceptions=True,
        )
        good = results[1] if refuse_first else results[0]
        assert isinstance(good, TriggerResult)
        assert sum(isinstance(r, StorageError) for r in results) == 1
        await kf.run_until_idle()
        run = await kf.get_run(good.run_id)
        assert run is not None
        assert run.status == "completed"
        assert await kf.count_runs() == 1


class RefusesFirstFinish(SQLiteBackend):
    """SQLite that refuses the first write of each finished run once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.refused: list[str] = []

    async def write(self, batch: WriteBatch) -> Refusals | None:
        refused: dict[str, Exception] = {
            r.id: ValueError("not now")
            for r in batch.runs
            if r.status.is_terminal and r.id not in self.refused
        }
        self.refused.extend(refused)
        await super().write(_without(batch, refused))
        return refused or None


async def test_a_refused_execution_change_is_written_again(tmp_path: Path) -> None:
    backend = RefusesFirstFinish(tmp_path / "runs.db")
    kf = Keyflow(backend)
    kf.job("work")(_noop)
    async with kf:
        result = await kf.trigger("work", concurrency_key="k")
        await kf.run_until_idle()
        assert backend.refused == [result.run_id]
        run = await kf.get_run(result.run_id)
        assert run is not None
        assert run.status == "completed"
    reopened = SQLiteBackend(tmp_path / "runs.db")
    async with Keyflow(reopened) as again:
        stored = await again.get_run(result.run_id)
        assert stored is not None
        assert stored.status == "completed"


class AnswersJunk(SQLiteBackend):
    """SQLite whose write() returns something that is no answer (a backend bug), once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.junk_left = 1

    async def write(self, batch: WriteBatch) -> Refusals | None:
        await super().write(batch)
        if self.junk_left:
            self.junk_left -= 1
            return True  # type: ignore[return-value]  # the bug under test
        return None


async def test_a_write_that_returns_junk_counts_as_failed(tmp_path: Path) -> None:
    kf = Keyflow(AnswersJunk(tmp_path / "runs.db"))
    kf.job("work")(_noop)
    async with kf:
        with pytest.raises(StorageError, match="must return None or a mapping"):
            await kf.trigger("work", concurrency_key="k")
        assert kf.lane("k").state == "idle"  # rolled back
        result = await kf.trigger("work", concurrency_key="k")  # storage takes work again
        await kf.run_until_idle()
        run = await kf.get_run(result.run_id)
        assert run is not None
        assert run.status == "completed"


class RefusingInputs(SQLiteBackend):
    """SQLite that refuses runs whose input says ``refuse``."""

    async def write(self, batch: WriteBatch) -> Refusals | None:
        refused: dict[str, Exception] = {
            r.id: ValueError("input says refuse") for r in batch.runs if r.input.get("refuse")
        }
        kept = _without(batch, refused)
        await super().write(kept)
        return refused or None


class GatedRefusingInputs(RefusingInputs):
    """RefusingInputs whose writes wait at a gate, to interleave triggers."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing = asyncio.Event()
        self.gate = asyncio.Event()

    async def write(self, batch: WriteBatch) -> Refusals | None:
        if batch.runs:
            self.writing.set()
            await self.gate.wait()
        return await super().write(batch)


async def test_a_key_whose_run_storage_refuses_is_free_again(tmp_path: Path) -> None:
    backend = GatedRefusingInputs(tmp_path / "runs.db")
    kf = Keyflow(backend)
    kf.job("work")(_noop)
    async with kf:
        first = asyncio.ensure_future(kf.trigger("work", {"refuse": True}, idempotency_key="a"))
        await backend.writing.wait()  # decided, its write in flight
        second = asyncio.ensure_future(kf.trigger("work", {"n": 2}, idempotency_key="a"))
        backend.gate.set()
        with pytest.raises(StorageError, match="refused"):
            await first
        result = await second  # it never leant on the refused run: it made its own
        assert result.disposition is Disposition.CREATED
        await kf.run_until_idle()
        runs = await kf.list_runs()
        assert [(r.id, r.input, r.status) for r in runs] == [(result.run_id, {"n": 2}, "completed")]


async def test_a_trigger_replacing_a_refused_run_stands_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kf = Keyflow(RefusingInputs(tmp_path / "runs.db"))
    kf.job("work")(_noop)
    async with kf:
        refused, replacing = await asyncio.gather(
            kf.trigger("work", {"refuse": True}, concurrency_key="k"),
            kf.trigger("work", {}, concurrency_key="k", coalesce="cancel"),
            return_exceptions=True,
        )
        assert isinstance(refused, StorageError)
        assert isinstance(replacing, TriggerResult)  # nothing left to replace: it stands
        await kf.run_until_idle()
        assert kf.statistics().cancelled == 0
        run = await kf.get_run(replacing.run_id)
        assert run is not None
        assert run.status == "completed"
        assert await kf.count_runs() == 1
    assert "failed to settle" not in caplog.text


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_acknowledged_trigger_is_stored_and_runs(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    kf = Keyflow(RefusingInputs(tmp_path / "runs.db"))
    kf.job("work")(_noop)
    async with kf:
        for _ in range(5):
            calls = []
            for _ in range(50):
                options: dict[str, Any] = {
                    "concurrency_key": f"k{rng.randrange(4)}",
                    "coalesce": rng.choice([None, "skip", "queue", "cancel"]),
                }
                if rng.random() < 0.3:
                    options["idempotency_key"] = f"i{rng.randrange(10)}"
                calls.append(kf.trigger("work", {"refuse": rng.random() < 0.3}, **options))
            results = await asyncio.gather(*calls, return_exceptions=True)
            await kf.run_until_idle()
            for result in results:
                if isinstance(result, TriggerResult):
                    run = await kf.get_run(result.run_id)
                    assert run is not None, result
                    assert run.status in ("completed", "cancelled"), (result, run.status)
                else:
                    assert isinstance(result, StorageError), result
        assert await kf.count_runs(status="queued") == 0


class RefusesOneForever(MemoryBackend):
    """The in-memory fake, refusing every write of one finished run."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.victim: str | None = None
        self.refusals = 0
        self.refused_twice = asyncio.Event()

    def write_sync(self, batch: WriteBatch) -> Refusals | None:
        self.writes += 1
        refused = {r.id: ValueError("never") for r in batch.runs if r.id == self.victim}
        self.refusals += len(refused)
        if self.refusals >= 2:
            self.refused_twice.set()
        super().write_sync(_without(batch, refused))
        return refused or None


class RefusesOneForeverSQLite(SQLiteBackend):
    """SQLite refusing every write of one finished run."""

    writes = 0
    victim: str | None = None
    refusals = 0

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.refused_twice = asyncio.Event()

    async def write(self, batch: WriteBatch) -> Refusals | None:
        self.writes += 1
        refused = {r.id: ValueError("never") for r in batch.runs if r.id == self.victim}
        self.refusals += len(refused)
        if self.refusals >= 2:
            self.refused_twice.set()
        await super().write(_without(batch, refused))
        return refused or None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_change_refused_forever_is_retried_with_pauses_and_stop_ends(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyflow.lifecycle

    monkeypatch.setattr(keyflow.lifecycle, "STOP_FLUSH_SECONDS", 0.5)
    backend: RefusesOneForever | RefusesOneForeverSQLite = (
        RefusesOneForever() if kind == "memory" else RefusesOneForeverSQLite(tmp_path / "r.db")
    )
    kf = Keyflow(backend)
    finished = asyncio.Event()

    @kf.job
    async def work(ctx: RunContext, input: JSONObject) -> None:
        backend.victim = ctx.run_id  # its finish is what storage will refuse
        finished.set()

    await kf.start()
    await kf.trigger("work")
    await finished.wait()
    await backend.refused_twice.wait()  # refused, and refused again when retried
    assert "refused" in (kf.statistics().storage_error or "")
    before = backend.writes
    await asyncio.wait_for(kf.stop(grace=0), 5)  # bounded, the loop never blocked
    # Paced by the retry pauses (0.01 s, 0.05 s, ...), not thousands of writes a second.
    assert backend.writes - before < 100


class RefusingFake(MemoryBackend):
    """The in-memory fake, refusing new runs whose input says ``refuse``."""

    def write_sync(self, batch: WriteBatch) -> Refusals | None:
        refused = {r.id: ValueError("no") for r in batch.runs if r.input.get("refuse")}
        super().write_sync(_without(batch, refused))
        return refused or None


async def test_a_memory_fake_with_its_own_write_sync_can_refuse_new_runs() -> None:
    kf = Keyflow(RefusingFake())
    ran: list[str] = []

    @kf.job
    async def work(ctx: RunContext, input: JSONObject) -> None:
        ran.append(ctx.run_id)

    async with kf:
        with pytest.raises(StorageError, match="refused"):
            await kf.trigger("work", {"refuse": True})
        kept = await kf.trigger("work", {})
        await kf.run_until_idle()
    assert ran == [kept.run_id]
