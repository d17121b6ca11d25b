"""Per-run results of a batch write: a run storage refuses fails only its own triggers.

A backend may store a batch but some of its runs (``StorageBackend.write`` returns
them, with why). Triggers that made or joined a refused run are rolled back and fail
with StorageError; their neighbours in the same batch stand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keyflow import Disposition, Keyflow, RunContext, StorageError, TriggerResult
from keyflow.runs import JSONObject
from keyflow.storage_backends.base import Refusals, WriteBatch
from keyflow.storage_backends.sqlite import SQLiteBackend


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
        kept = WriteBatch(
            [r for r in batch.runs if r.id not in refused],
            [entry for entry in batch.idempotency if entry[2] not in refused],
            batch.pauses,
        )
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
        await super().write(WriteBatch([r for r in batch.runs if r.id not in refused]))
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
