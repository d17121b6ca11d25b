"""The :class:`~keyflow.StorageBackend` contract, as tests a backend's suite can run.

keyflow's own backends (memory, SQLite, JSON file) pass it, and so must a backend
written elsewhere. In a pytest module (with pytest-asyncio in auto mode)::

    from keyflow.backend_contract import StorageBackendContract

    class TestMyBackend(StorageBackendContract):
        durable = True  # False when a reopen starts empty

        def make_backend(self, place: Path, retention: int) -> StorageBackend:
            return MyBackend(place / "runs.db", retention=retention)

``make_backend`` is called again with the same ``place`` to reopen a store. The tests
talk to the backend only through :class:`~keyflow.StorageBackend`'s methods, with
records built by :func:`record`; they need nothing but pytest's ``tmp_path``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .records import RunRecord
from .runs import RunStatus
from .storage_backends.base import RunQuery, StorageBackend, WriteBatch

T0 = 1_767_225_600.0
"""When the contract's runs are created (epoch seconds), one second apart."""


def record(
    n: int,
    *,
    job: str = "crawl",
    key: str | None = "k",
    status: RunStatus = RunStatus.QUEUED,
    labels: dict[str, str] | None = None,
    input: dict[str, Any] | None = None,
) -> RunRecord:
    """A run record as the scheduler makes it: ``run-<n>``, created at ``T0 + n``."""
    return RunRecord(
        f"run-{n:04d}",
        job,
        key,
        status,
        {"n": n} if input is None else input,
        T0 + n,
        T0 + n,
        3,
        labels,
    )


def finish(run: RunRecord, status: RunStatus = RunStatus.COMPLETED) -> RunRecord:
    """``run`` ended with ``status`` one second after its creation (changed in place)."""
    run.status = status
    run.attempt = 1
    run.started_at = run.created_at + 0.25
    run.finished_at = run.created_at + 1.0
    run.output = {"done": run.id}
    return run


class StorageBackendContract(ABC):
    """The contract's tests; subclass it as ``Test<Name>`` and give ``make_backend``."""

    durable: bool = True
    """True when what was written survives a close and a reopen."""

    @abstractmethod
    def make_backend(self, place: Path, retention: int) -> StorageBackend:
        """A new, unopened backend over the store at ``place`` (a fresh directory)."""

    async def opened(self, place: Path, retention: int = 1_000) -> StorageBackend:
        """``make_backend`` opened (the caller closes it)."""
        backend = self.make_backend(place, retention)
        state = await backend.open()
        assert isinstance(state.unfinished, list)
        return backend

    async def test_an_empty_store_opens_with_nothing_unfinished(self, tmp_path: Path) -> None:
        """An empty store opens with nothing unfinished."""
        backend = self.make_backend(tmp_path, 1_000)
        state = await backend.open()
        try:
            assert state.unfinished == []
            assert state.paused == frozenset()
            assert await backend.list_runs(RunQuery()) == []
            assert await backend.count_runs(RunQuery()) == 0
            assert await backend.get_run("run-0001") is None
        finally:
            await backend.close()

    async def test_a_written_run_reads_back_as_written(self, tmp_path: Path) -> None:
        """A written run reads back as written."""
        backend = await self.opened(tmp_path)
        try:
            run = record(1, labels={"org": "acme"}, input={"n": 1, "text": "café"})
            await backend.write(WriteBatch([run]))
            found = await backend.get_run("run-0001")
            assert found is not None
            assert (found.job, found.concurrency_key, found.status) == ("crawl", "k", "queued")
            assert found.input == {"n": 1, "text": "café"}
            assert found.labels == {"org": "acme"}
            assert found.created_at == T0 + 1
            await backend.write(WriteBatch([finish(run)]))  # a later write replaces it
            done = await backend.get_run("run-0001")
            assert done is not None
            assert done.status is RunStatus.COMPLETED
            assert done.output == {"done": "run-0001"}
            assert done.finished_at == T0 + 2
        finally:
            await backend.close()

    async def test_a_storable_batch_is_stored_whole(self, tmp_path: Path) -> None:
        """``write`` answers None (or no refusals) for runs it can store."""
        backend = await self.opened(tmp_path)
        try:
            runs = [record(1), record(2, labels={"a": "b"}), finish(record(3))]
            batch = WriteBatch(runs, [("crawl", "key-1", "run-0001")])
            batch.groups.append(("run-0001", "run-0002"))
            result = await backend.write(batch)
            assert result is None or (isinstance(result, Mapping) and not result), result
            assert await backend.count_runs(RunQuery()) == 3
            assert await backend.find_idempotent("crawl", "key-1") == "run-0001"
        finally:
            await backend.close()

    async def test_due_times_are_queryable(self, tmp_path: Path) -> None:
        """Waiting runs come back by due time; others never do."""
        backend = await self.opened(tmp_path)
        try:
            waiting = []
            for n, due_in in ((1, 50.0), (2, 10.0), (3, 30.0), (4, 10.0)):
                run = record(n, status=RunStatus.SCHEDULED)
                run.due_at = T0 + due_in
                waiting.append(run)
            queued = record(5)  # due already, but not waiting for a time
            done = finish(record(6, status=RunStatus.SCHEDULED))
            await backend.write(WriteBatch([*waiting, queued, done]))
            due = await backend.due_runs(T0 + 30.0)
            assert [r.id for r in due] == ["run-0002", "run-0004", "run-0003"]
            assert [r.id for r in await backend.due_runs(T0 + 30.0, limit=1)] == ["run-0002"]
            assert await backend.due_runs(T0) == []
            everything = await backend.due_runs(T0 + 1e6)
            assert [r.id for r in everything] == ["run-0002", "run-0004", "run-0003", "run-0001"]
            waiting[0].status = RunStatus.QUEUED  # run-0001 became due and left the wait
            await backend.write(WriteBatch([waiting[0]]))
            assert "run-0001" not in [r.id for r in await backend.due_runs(T0 + 1e6)]
        finally:
            await backend.close()

    async def test_queries_filter_and_page_newest_first(self, tmp_path: Path) -> None:
        """Queries filter and page newest first."""
        backend = await self.opened(tmp_path)
        try:
            runs = [
                record(1, job="crawl", key="org-1/a", labels={"env": "prod"}),
                record(2, job="process", key="org-1", input={"note": "Hello World"}),
                finish(record(3, job="crawl", key="org-2/b")),
                finish(record(4, job="process", key=None), RunStatus.FAILED),
                record(5, job="crawl", key="org-1/c", labels={"env": "dev"}),
            ]
            await backend.write(WriteBatch(runs))

            async def ids(**filters: Any) -> list[str]:
                return [r.id for r in await backend.list_runs(RunQuery(**filters))]

            assert await ids() == ["run-0005", "run-0004", "run-0003", "run-0002", "run-0001"]
            assert await ids(limit=2, offset=1) == ["run-0004", "run-0003"]
            assert await ids(job="process") == ["run-0004", "run-0002"]
            assert await ids(status=RunStatus.FAILED) == ["run-0004"]
            assert await ids(key="org-1") == ["run-0002"]
            assert await ids(key_prefix="org-1/") == ["run-0005", "run-0001"]
            assert await ids(labels=(("env", "prod"),)) == ["run-0001"]
            assert await ids(text="hello world") == ["run-0002"]  # any case
            assert await ids(created_after=T0 + 2, created_before=T0 + 4) == [
                "run-0003",
                "run-0002",
            ]
            assert await ids(finished_after=T0) == ["run-0004", "run-0003"]
            assert await ids(finished_before=T0 + 4.5) == ["run-0003"]
            assert await backend.count_runs(RunQuery(job="crawl")) == 3
            assert await backend.count_runs(RunQuery(), at_most=2) == 2
        finally:
            await backend.close()

    async def test_idempotency_keys_name_their_run(self, tmp_path: Path) -> None:
        """Idempotency keys name their run."""
        backend = await self.opened(tmp_path)
        try:
            await backend.write(WriteBatch([record(1)], [("crawl", "once", "run-0001")]))
            assert await backend.find_idempotent("crawl", "once") == "run-0001"
            assert await backend.find_idempotent("process", "once") is None
            assert await backend.find_idempotent("crawl", "twice") is None
        finally:
            await backend.close()

    async def test_retention_prunes_the_oldest_finished_runs_only(self, tmp_path: Path) -> None:
        """Retention prunes the oldest finished runs only."""
        backend = await self.opened(tmp_path, retention=3)
        try:
            waiting = record(0)
            await backend.write(WriteBatch([waiting]))
            for n in range(1, 7):
                await backend.write(WriteBatch([finish(record(n))]))
            finished = await backend.list_runs(RunQuery(status=RunStatus.COMPLETED))
            assert [r.id for r in finished] == ["run-0006", "run-0005", "run-0004"]
            assert await backend.get_run("run-0001") is None
            assert await backend.get_run("run-0000") is not None  # unfinished: never pruned
        finally:
            await backend.close()

    async def test_a_reopened_store_hands_back_its_unfinished_runs(self, tmp_path: Path) -> None:
        """A reopened store hands back its unfinished runs."""
        backend = await self.opened(tmp_path)
        try:
            await backend.write(
                WriteBatch(
                    [record(1), finish(record(2)), record(3, key="other")],
                    pauses=[("job", "crawl", True), ("key", "k", True), ("key", "k", False)],
                )
            )
            assert await backend.paused() == frozenset({("job", "crawl")})
        finally:
            await backend.close()
        if not self.durable:
            return
        again = self.make_backend(tmp_path, 1_000)
        state = await again.open()
        try:
            assert [r.id for r in state.unfinished] == ["run-0001", "run-0003"]  # creation order
            assert state.paused == frozenset({("job", "crawl")})
            assert (await again.get_run("run-0002")) is not None
        finally:
            await again.close()

    async def test_summaries_timings_and_the_change_token(self, tmp_path: Path) -> None:
        """Summaries timings and the change token."""
        backend = await self.opened(tmp_path)
        try:
            before = await backend.change_token()
            first = record(1, key="k")
            first.trigger_count = 3  # two triggers joined it
            await backend.write(WriteBatch([first, finish(record(2, key="j", job="process"))]))
            assert await backend.change_token() != before
            summary = await backend.summary()
            assert set(summary.keys) == {"k", "j"}
            assert summary.keys["k"].coalesced == 2
            assert summary.keys["k"].unfinished == 1
            assert summary.jobs == ["crawl", "process"]
            assert summary.coalesced == 2
            timings = await backend.run_timings("process", T0)
            assert [(t.id, t.status, t.finished_at) for t in timings] == [
                ("run-0002", RunStatus.COMPLETED, T0 + 3)
            ]
            assert await backend.run_timings("process", T0 + 10) == []
        finally:
            await backend.close()

    async def test_close_is_idempotent(self, tmp_path: Path) -> None:
        """Close is idempotent."""
        backend = await self.opened(tmp_path)
        await backend.close()
        await backend.close()
