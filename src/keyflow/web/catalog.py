"""What a storage file holds beyond its unfinished runs, kept up to date incrementally.

``keyflow dashboard --storage`` reads a file another process writes. Its lanes must list
every key with runs in storage (idle ones too), its totals of coalesced triggers must
count every stored run, and its job list the jobs that ran. Reading every run at every
poll would cost a core at 100k runs; instead:

* :class:`StorageCatalog` reads every run once, then at each refresh only the runs
  created since (storage lists newest first: it stops at the first run it knows), and
  re-reads a run once when it leaves the unfinished set (its final trigger count);
* :func:`file_token` tells whether the files changed at all (size and modification
  time of the storage file and its companions: SQLite's ``-wal``, the JSON journal), so
  an idle file costs a few ``stat`` calls per poll and no query.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from pathlib import Path

from ..runs import Run
from ..storage_backends import RunQuery, StorageBackend

PAGE = 5_000
"""Runs read per query while catching up."""


class StorageCatalog:
    """Every key and job with runs in storage, and the triggers coalesced into them."""

    def __init__(self, backend: StorageBackend, page: int = PAGE) -> None:
        self.backend = backend
        self.page = page
        self.keys: set[str] = set()
        self.jobs: set[str] = set()
        self.key_coalesced: dict[str, int] = {}
        """Triggers coalesced into the stored runs of each key."""
        self.coalesced_total = 0
        """Triggers coalesced into every stored run (one counted once, however pruned)."""
        self.latest: float | None = None
        """The newest time in any run seen (created, started or finished), if any."""
        self._seen: set[str] = set()
        self._open: dict[str, tuple[str | None, int]] = {}
        """Unfinished runs: their key and the coalesced triggers counted so far."""
        self._since: float | None = None
        """Runs created before this were summed up at the first look (not read)."""

    async def refresh(self, unfinished: Iterable[Run]) -> None:
        """Catch up with storage, given its unfinished runs now."""
        current = {run.id: run for run in unfinished}
        if self._since is None:
            await self._first_look(current.values())
        await self._read_new_runs()
        for run_id in [r for r in self._open if r not in current]:
            # Finished since the last look: its final count (joins may have come late).
            key, counted = self._open.pop(run_id)
            final = await self.backend.get_run(run_id)
            if final is not None:
                self._count(key, final.trigger_count - 1 - counted)
                self._saw_times(final)
        for run in current.values():
            self._note(run)

    async def _first_look(self, unfinished: Iterable[Run]) -> None:
        """Start from the store's summary (its indexes on SQLite), not every stored run.

        Reading and decoding 100,000 runs took ~2 s; the summary's counts per key take
        a fraction of that. Runs created from the newest one on are read as they come.
        """
        newest = await self.backend.list_runs(RunQuery(limit=1))
        summary = await self.backend.summary()
        self.keys |= set(summary.keys)
        self.jobs |= set(summary.jobs)
        for key, facts in summary.keys.items():
            if facts.coalesced:
                self.key_coalesced[key] = self.key_coalesced.get(key, 0) + facts.coalesced
            if self.latest is None or facts.newest > self.latest:
                self.latest = facts.newest
        self.coalesced_total += summary.coalesced
        self._since = newest[0].created_at if newest else float("-inf")
        if newest:  # the runs of that moment are in the summary: never count them again
            same = await self.backend.list_runs(
                RunQuery(created_after=self._since, limit=self.page)
            )
            self._seen.update(run.id for run in same)
        for run in unfinished:  # summed up already: count only their joins from now on
            self._open[run.id] = (run.concurrency_key, run.trigger_count - 1)
            self._seen.add(run.id)
            self._saw_times(run)

    async def _read_new_runs(self) -> None:
        offset = 0
        while True:
            # Newest first, from the creation time of the newest run of the first look
            # (the runs of that very moment were summed up: their ids are skipped).
            query = RunQuery(limit=self.page, offset=offset, created_after=self._since)
            batch = await self.backend.list_runs(query)
            new = [run for run in batch if run.id not in self._seen]
            for run in new:
                self._add(run)
            if len(new) < len(batch) or len(batch) < self.page:
                return
            offset += self.page

    def _saw_times(self, run: Run) -> None:
        newest = max(run.created_at, run.started_at or 0.0, run.finished_at or 0.0)
        if self.latest is None or newest > self.latest:
            self.latest = newest

    def _add(self, run: Run) -> None:
        self._saw_times(run)
        self._seen.add(run.id)
        self.jobs.add(run.job)
        if run.concurrency_key is not None:
            self.keys.add(run.concurrency_key)
        if run.is_terminal:
            self._count(run.concurrency_key, run.trigger_count - 1)
        else:
            self._note(run)

    def _note(self, run: Run) -> None:
        """Count an unfinished run's coalesced triggers (the new ones since last time)."""
        self._saw_times(run)
        key, counted = self._open.get(run.id, (run.concurrency_key, 0))
        self._count(key, run.trigger_count - 1 - counted)
        self._open[run.id] = (key, run.trigger_count - 1)
        self._seen.add(run.id)
        self.jobs.add(run.job)
        if key is not None:
            self.keys.add(key)

    def _count(self, key: str | None, coalesced: int) -> None:
        if not coalesced:
            return
        self.coalesced_total += coalesced
        if key is not None:
            self.key_coalesced[key] = self.key_coalesced.get(key, 0) + coalesced


def storage_files(backend: StorageBackend) -> list[Path]:
    """The files whose changes mean the storage changed (none known: empty)."""
    path = getattr(backend, "path", None)  # the file-based backends name their file
    if not isinstance(path, Path):
        return []
    return [path.with_name(path.name + suffix) for suffix in ("", "-wal", ".journal")]


def file_token(files: list[Path]) -> Hashable:
    """Size and modification time of ``files``: a new value whenever one is written."""
    token: list[tuple[int, int, int] | None] = []
    for path in files:
        try:
            stat = os.stat(path)
        except OSError:
            token.append(None)
        else:
            token.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(token)
