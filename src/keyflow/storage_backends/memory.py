"""``memory://``: the default backend, and the fake the tests use.

It keeps the scheduler's own records (no copies) and forgets everything when the
process ends. Finished runs are retained up to ``retention``, oldest dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from ..errors import StorageError
from ..runs import Run
from .base import Refusals, RunQuery, StorageBackend, StoredState, WriteBatch, count_of, page_of
from .rows import dumps, record_row
from .summaries import RunFacts, RunTiming, StoreSummary, summarize

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterator

    from ..records import RunRecord


@mypyc_attr(allow_interpreted_subclasses=True)  # sold as the fake to subclass in tests
class MemoryBackend(StorageBackend):
    """Runs held in process memory."""

    durable = False
    synchronous = True
    shares_records = True

    def __init__(self, *, retention: int = 10_000) -> None:
        if retention < 0:
            raise ValueError("retention must be >= 0")
        self.retention = retention
        self._runs: dict[str, RunRecord] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        """Finished runs, oldest first (O(1) to drop the oldest, unlike a plain dict)."""
        self._idempotency: dict[tuple[str, str], str] = {}
        self._keys_of_run: dict[str, list[tuple[str, str]]] = {}
        self._paused: set[tuple[str, str]] = set()
        self._writes = 0
        self._own_writes = type(self).write_sync is MemoryBackend.write_sync
        """False in a subclass with its own ``write_sync``: new runs go through it too."""

    async def open(self) -> StoredState:
        """Start empty, or with what an earlier ``open`` in this process left."""
        return StoredState(
            unfinished=[r for r in self._runs.values() if not r.status.is_terminal],
            paused=frozenset(self._paused),
        )

    async def close(self) -> None:
        """Nothing to release; runs stay until :meth:`reset`."""

    def reset(self) -> None:
        """Forget every run."""
        self._runs.clear()
        self._finished.clear()
        self._idempotency.clear()
        self._keys_of_run.clear()
        self._paused.clear()

    async def write(self, batch: WriteBatch) -> Refusals | None:
        """Register new records and retire finished ones beyond the retention."""
        return self.write_sync(batch)

    def write_sync(self, batch: WriteBatch) -> Refusals | None:
        """Register new records and retire finished ones beyond the retention."""
        runs = self._runs
        finished = self._finished
        for record in batch.runs:
            if record.status.is_terminal:
                finished[record.id] = None  # already there: keeps its place
                if record.id in runs:
                    continue  # our own record (shared): nothing to store
            runs[record.id] = record
        for job, key, run_id in batch.idempotency:
            self._idempotency[job, key] = run_id
            self._keys_of_run.setdefault(run_id, []).append((job, key))
        for kind, name, paused in batch.pauses:
            if paused:
                self._paused.add((kind, name))
            else:
                self._paused.discard((kind, name))
        self._writes += 1
        excess = len(finished) - self.retention
        if excess > 0:
            self._prune(excess)
        return None

    def write_new_sync(self, record: RunRecord) -> None:
        """Register a new run (it cannot be finished yet: nothing to retire).

        A subclass that overrides :meth:`write_sync` sees new runs there too (and may
        refuse them, see :meth:`StorageBackend.write`).

        Raises:
            StorageError: the subclass's ``write_sync`` refused the run.
        """
        if not self._own_writes:
            refused = self.write_sync(WriteBatch([record]))
            if refused:
                raise StorageError(f"storage refused run {record.id}: {refused.get(record.id)}")
            return
        self._runs[record.id] = record
        self._writes += 1

    async def summary(self) -> StoreSummary:
        """Keys, jobs and coalesced triggers of every run held."""
        return summarize(
            RunFacts(r.key, r.job, r.status.value, r.trigger_count, r.created_at)
            for r in self._runs.values()
        )

    async def run_timings(self, job: str, since: float, *, limit: int = 100_000) -> list[RunTiming]:
        """The runs of ``job`` created at ``since`` or later, newest first."""
        out: list[RunTiming] = []
        for r in reversed(self._runs.values()):
            if len(out) >= limit:
                break
            if r.job == job and r.created_at >= since:
                out.append(RunTiming.of(r))
        return out

    async def change_token(self) -> Hashable:
        """How many writes the backend was told of."""
        return self._writes

    async def paused(self) -> frozenset[tuple[str, str]]:
        """What is paused now."""
        return frozenset(self._paused)

    def _prune(self, count: int) -> None:
        finished = self._finished
        runs = self._runs
        keys_of_run = self._keys_of_run
        for _ in range(min(count, len(finished))):
            run_id = finished.popitem(last=False)[0]
            del runs[run_id]
            if keys_of_run:  # only runs triggered with an idempotency key are listed
                for job_and_key in keys_of_run.pop(run_id, ()):
                    self._idempotency.pop(job_and_key, None)

    async def get_run(self, run_id: str) -> Run | None:
        """The run, if known."""
        record = self._runs.get(run_id)
        return None if record is None else record.snapshot()

    def _matching(self, query: RunQuery) -> Iterator[RunRecord]:
        text = query.text.lower() if query.text else None
        for record in reversed(self._runs.values()):
            if not query.matches(
                record.job,
                record.status.value,
                record.key,
                record.created_at,
                record.finished_at,
                record.labels,
            ):
                continue
            if text is not None and text not in dumps(record_row(record)).lower():
                continue
            yield record

    async def list_runs(self, query: RunQuery) -> list[Run]:
        """Matching runs, newest first."""
        return [record.snapshot() for record in page_of(self._matching(query), query)]

    async def count_runs(self, query: RunQuery, *, at_most: int | None = None) -> int:
        """How many runs match (stopping at ``at_most``)."""
        return count_of(self._matching(query), at_most)

    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        """The run an earlier trigger with that key made, while it is retained."""
        return self._idempotency.get((job, idempotency_key))
