"""The storage interface: what the scheduler asks of a backend, in domain terms.

The scheduler decides in memory (pure state machine) and persists through a backend.
A backend sees batches of run records to save, never SQL from the scheduler, and
answers queries with :class:`~keyflow.runs.Run` snapshots.

Contract for :meth:`StorageBackend.write`:

* a batch is atomic: all of it is durable when ``write`` returns, none of it when it
  raises (wrap the backend's own errors in :class:`~keyflow.errors.StorageError`);
* except for runs it *refuses*: ``write`` may return :data:`Refusals`, the ids of runs
  it did not store (each with the reason), having stored everything else of the batch
  but those runs' rows and idempotency entries. Runs named together in
  ``batch.groups`` are refused together. The scheduler then fails only the
  triggers that made or joined a refused run (one refused run does not fail its batch
  neighbours) and writes a refused execution change again with the next batch. A
  backend over a shared database refuses e.g. a run whose idempotency key another
  process took first; returning None (the usual case) means all was stored;
* batches arrive one at a time, in order; ``write`` must read the records' fields before
  its first ``await``, because the scheduler keeps changing them afterwards (what it read
  is exactly the state the batch stands for);
* records in ``batch.runs`` are live objects: a backend must not keep references to them
  unless, like the in-memory backend, it *is* the memory.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import StorageError
from ..runs import Run, RunStatus
from .startmarks import StartMarks
from .summaries import RunFacts, RunTiming, StoreSummary, summarize

if TYPE_CHECKING:
    from ..records import RunRecord

Refusals = Mapping[str, Exception]
"""Runs a backend did not store, by id, with why (see :meth:`StorageBackend.write`)."""


class WriteBatch:
    """Changes to persist in one transaction.

    Attributes:
        runs: runs created or changed; each is saved with its current fields.
        idempotency: new ``(job, idempotency_key, run_id)`` entries.
        pauses: ``(kind, name, paused)`` changes: ``("job", "process", True)`` pauses
            the job ``process``; ``("key", "k", False)`` resumes the lane ``k``.
        groups: runs refused together, if at all (see :meth:`StorageBackend.write`).
    """

    __slots__ = ("groups", "idempotency", "pauses", "runs")

    def __init__(
        self,
        runs: list[RunRecord] | None = None,
        idempotency: list[tuple[str, str, str]] | None = None,
        pauses: list[tuple[str, str, bool]] | None = None,
    ) -> None:
        self.runs: list[RunRecord] = [] if runs is None else runs
        self.idempotency: list[tuple[str, str, str]] = [] if idempotency is None else idempotency
        self.pauses: list[tuple[str, str, bool]] = [] if pauses is None else pauses
        self.groups: list[tuple[str, ...]] = []
        """Ids of runs that stand or fall together (those one ``batch_trigger`` made or
        joined): a backend that refuses one of them refuses them all."""


@dataclass(frozen=True, slots=True)
class RunQuery:
    """Filters for :meth:`StorageBackend.list_runs`; results are newest first.

    Every filter given must match. Times are epoch seconds: ``*_after`` is inclusive,
    ``*_before`` exclusive.
    """

    job: str | None = None
    status: RunStatus | None = None
    key: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    """Every ``(name, value)`` pair must match."""
    text: str | None = None
    """Free text, any case: found anywhere in the stored run (id, job, key, input, labels,
    output, error, logs)."""
    key_prefix: str | None = None
    """The run's concurrency key starts with this (runs without a key never match)."""
    created_after: float | None = None
    created_before: float | None = None
    finished_after: float | None = None
    """Only finished runs match a ``finished_*`` filter."""
    finished_before: float | None = None
    limit: int = 50
    offset: int = 0

    def matches(
        self,
        job: str,
        status: str,
        key: str | None,
        created_at: float,
        finished_at: float | None,
        labels: Mapping[str, str] | None,
    ) -> bool:
        """Does a run with these fields match every filter but ``text``?

        The one definition the backends that filter in Python share (memory, JSON).
        """
        if self.job is not None and job != self.job:
            return False
        if self.status is not None and status != self.status.value:
            return False
        if self.key is not None and key != self.key:
            return False
        if self.key_prefix is not None and (key is None or not key.startswith(self.key_prefix)):
            return False
        if self.created_after is not None and created_at < self.created_after:
            return False
        if self.created_before is not None and created_at >= self.created_before:
            return False
        if self.finished_after is not None or self.finished_before is not None:
            if finished_at is None:
                return False
            if self.finished_after is not None and finished_at < self.finished_after:
                return False
            if self.finished_before is not None and finished_at >= self.finished_before:
                return False
        return not self.labels or all(
            labels is not None and labels.get(n) == v for n, v in self.labels
        )


T = TypeVar("T")


def page_of(matching: Iterable[T], query: RunQuery) -> list[T]:
    """The ``offset``/``limit`` page of ``matching`` (an iterator, newest first)."""
    return list(itertools.islice(matching, query.offset, query.offset + query.limit))


def count_of(matching: Iterable[object], at_most: int | None) -> int:
    """How many ``matching`` yields, stopping at ``at_most``."""
    if at_most is not None:
        matching = itertools.islice(matching, at_most)
    return sum(1 for _ in matching)


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a backend hands the scheduler at start: enough to rebuild the lanes."""

    unfinished: list[RunRecord]
    """Every run not yet terminal, in creation order."""
    paused: frozenset[tuple[str, str]] = frozenset()
    """What is paused: ``(kind, name)`` pairs (see :attr:`WriteBatch.pauses`)."""
    started: Mapping[str, int] = field(default_factory=dict)
    """Start marks a process left (see :meth:`StorageBackend.mark_start`): run id →
    how many times its handler had been started. A mark ahead of its run's row means
    the run was executing when that process died."""


class StorageBackend(ABC):
    """Where runs live. Pick one by URL with :func:`keyflow.storage_backends.open_backend`."""

    durable: bool = True
    """False when a crash loses everything (the in-memory backend)."""

    shares_records: bool = False
    """True when the backend keeps the scheduler's live records themselves (the in-memory
    backend): then it is told only of new and finished runs, not of every change."""

    read_only: bool = False
    """True when the backend was opened only to read (``?mode=ro``): the scheduler then
    executes, recovers and writes nothing."""

    synchronous: bool = False
    """True when :meth:`write_sync` works: the write needs no I/O wait, so the scheduler
    can commit a trigger without suspending (the in-memory backend)."""

    def write_sync(self, batch: WriteBatch) -> Refusals | None:
        """Persist ``batch`` without awaiting; only for ``synchronous`` backends.

        Returns what :meth:`write` returns.

        Raises:
            StorageError: nothing of the batch was stored.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot write synchronously")

    start_marks: StartMarks | None = None
    """A file backend's start marks (see :mod:`~keyflow.storage_backends.startmarks`),
    opened by its writer; None: the scheduler waits for a start's commit instead."""

    def mark_start(self, slot: int, record: RunRecord) -> bool:
        """Record, before its handler runs, that worker ``slot`` starts ``record``.

        Written so that it survives the process dying at once (not necessarily a power
        loss). True when marked; False when the backend keeps no marks (or could not
        write one): the worker then waits until the run's start is committed instead.
        """
        marks = self.start_marks
        return marks is not None and marks.mark(slot, record.id, record.starts)

    def marks_recovered(self) -> None:
        """The start marks read at open were recovered and written: forget them."""
        if self.start_marks is not None:
            self.start_marks.clear()

    def open_start_marks(self, storage_path: Path) -> dict[str, int]:
        """Open ``<storage_path>.starts`` (a writer, at open); return the marks left.

        Raises:
            StorageError: the file cannot be opened.
        """
        real = storage_path.resolve()
        marks = StartMarks(real.with_name(real.name + ".starts"))
        try:
            found = marks.open()
        except OSError as exc:
            raise StorageError(f"cannot open {marks.path}: {exc}") from exc
        self.start_marks = marks
        return found

    def close_start_marks(self) -> None:
        """Close the start marks file, if open (they stay on disk for the next start)."""
        marks, self.start_marks = self.start_marks, None
        if marks is not None:
            marks.close()

    def write_new_sync(self, record: RunRecord) -> None:
        """Persist one new, unfinished run without awaiting (:meth:`write_sync` of it alone).

        Raises:
            StorageError: nothing was stored (also when :meth:`write_sync` refused it).
        """
        refused = self.write_sync(WriteBatch([record]))
        if refused:
            reason = refused.get(record.id, next(iter(refused.values())))
            raise StorageError(f"storage refused run {record.id}: {reason}")

    @abstractmethod
    async def open(self) -> StoredState:
        """Connect or load; return the unfinished runs to rebuild lanes from."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and release resources. Idempotent."""

    async def probe(self) -> None:
        """Check, before :meth:`open`, that the storage can be reached now.

        For a process that waits for its storage (``keyflow worker`` retries while this
        raises :class:`~keyflow.StorageError`). Opens nothing that outlives the call.
        The default checks nothing: a file is not "unreachable".

        Raises:
            StorageError: it cannot be reached now; a later try may succeed.
            ConfigurationError: it refused us for good (a wrong password, say).
        """
        return

    @abstractmethod
    async def write(self, batch: WriteBatch) -> Refusals | None:
        """Persist ``batch`` atomically (see the module docstring for the contract).

        Returns None when all of it was stored, or the runs it refused (the rest of the
        batch stored).

        Raises:
            StorageError: nothing of the batch was stored.
        """

    @abstractmethod
    async def get_run(self, run_id: str) -> Run | None:
        """The stored run with that id, or None."""

    @abstractmethod
    async def list_runs(self, query: RunQuery) -> list[Run]:
        """Runs matching ``query``, newest first."""

    @abstractmethod
    async def count_runs(self, query: RunQuery, *, at_most: int | None = None) -> int:
        """How many runs match ``query`` (``limit``/``offset`` ignored).

        With ``at_most``, counting may stop there: the answer is ``min(count, at_most)``
        (a dashboard shows "1,000+" without counting a million).
        """

    @abstractmethod
    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        """The run id an earlier trigger of ``job`` with that key made, if still stored."""

    # -- summaries: defaults that read every run; backends answer faster ------------

    async def summary(self) -> StoreSummary:
        """Every key with stored runs, the jobs, and the triggers coalesced into them."""
        return summarize(
            RunFacts(r.concurrency_key, r.job, r.status.value, r.trigger_count, r.created_at)
            for r in await self.list_runs(RunQuery(limit=10**9))
        )

    async def run_timings(self, job: str, since: float, *, limit: int = 100_000) -> list[RunTiming]:
        """The runs of ``job`` created at ``since`` or later, with their times.

        Newest first, at most ``limit``: what job statistics need.
        """
        runs = await self.list_runs(RunQuery(job=job, created_after=since, limit=limit))
        return [RunTiming.of(r) for r in runs]

    async def due_runs(self, until: float, *, limit: int = 100) -> list[Run]:
        """Runs waiting for a time (a delay, a retry's backoff) that comes by ``until``.

        Earliest due first (then oldest), at most ``limit``. Due times are kept in the
        store, not only in one process's timers: a coordinator over a shared database
        claims what is due with this question. The default reads every waiting run.
        """
        waiting = await self.list_runs(RunQuery(status=RunStatus.SCHEDULED, limit=10**9))
        due = [run for run in waiting if run.due_at <= until]
        due.sort(key=lambda run: (run.due_at, run.created_at))
        return due[:limit]

    async def change_token(self) -> Hashable:
        """Something that changes whenever what is stored changes (and rarely else).

        A reader compares it between two looks to skip reading when nothing changed.
        The default reads everything: a backend gives a cheap one.
        """
        newest = await self.list_runs(RunQuery(limit=1))
        counts = [await self.count_runs(RunQuery(status=status)) for status in RunStatus]
        return (tuple(counts), newest[0].id if newest else None)

    async def paused(self) -> frozenset[tuple[str, str]]:
        """What is paused now: ``(kind, name)`` pairs (see :attr:`WriteBatch.pauses`)."""
        return frozenset()
