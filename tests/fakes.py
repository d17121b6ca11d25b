"""Small fakes shared by tests: storage that behaves like a disk."""

from __future__ import annotations

import asyncio
import errno
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyflow import Run, RunStatus, StorageBackend
from keyflow.storage_backends import MemoryBackend, RunQuery, StoredState, WriteBatch
from keyflow.storage_backends.journal import JournalFile
from keyflow.storage_backends.jsonfile import JSONFileBackend


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@dataclass
class DiskFaults:
    """What a :class:`FaultyJSON` store's disk does wrong right now."""

    append: bool = False
    """Appends write half their bytes, then fail (ENOSPC)."""
    cut: bool = False
    """Cutting the journal back fails too."""
    snapshot: bool = False
    """Writing a snapshot (compaction) fails."""
    new_journal: bool = False
    """Starting a new journal (after a compaction rotated the old one out) fails."""
    directory_sync: bool = False
    """Syncing the folder after a snapshot's rename fails."""
    open_journal: bool = False
    """Opening a journal for appending fails (too many open files)."""
    stall: threading.Event | None = None
    """Appends wait in their thread until this is set (a disk that stalls)."""
    snapshot_stall: threading.Event | None = None
    """Snapshots wait in their thread until this is set (a big store, a slow disk)."""
    stalled: threading.Event = field(default_factory=threading.Event)
    """Set once an append is waiting on ``stall``."""


class FaultyJournal(JournalFile):
    """A journal file on a disk that fails as :class:`DiskFaults` says."""

    def __init__(self, path: Path, faults: DiskFaults) -> None:
        if faults.open_journal:
            raise OSError(errno.EMFILE, "Too many open files")
        super().__init__(path)
        self.faults = faults

    def append(self, data: bytes) -> None:
        if self.faults.stall is not None:
            self.faults.stalled.set()
            self.faults.stall.wait()
        if self.faults.append:
            super().append(data[: len(data) // 2])  # half of it lands, like a full disk
            raise disk_full()
        super().append(data)

    def truncate(self, size: int) -> None:
        if self.faults.cut:
            raise OSError(errno.EIO, "Input/output error")
        super().truncate(size)


class FaultyJSON(JSONFileBackend):
    """The JSON backend on a disk that fails on demand (``faults``)."""

    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.faults = DiskFaults()
        self.journal_file = lambda p: FaultyJournal(p, self.faults)

    def _write_snapshot(self, document: dict[str, Any], *, strict: bool = False) -> None:
        if self.faults.snapshot:
            raise disk_full()
        if self.faults.snapshot_stall is not None:
            self.faults.snapshot_stall.wait(timeout=60)
        super()._write_snapshot(document, strict=strict)

    def _sync_directory(self, path: Path) -> None:
        if self.faults.directory_sync:
            raise OSError(errno.EIO, "Input/output error")
        super()._sync_directory(path)

    def _new_journal(self) -> None:
        if self.faults.new_journal and self._journal is not None:  # not at the first open
            raise disk_full()
        super()._new_journal()


class DiskLikeBackend(StorageBackend):
    """The memory backend behaving like a durable one: every write suspends.

    It wraps a :class:`MemoryBackend` (a compiled build's classes cannot be subclassed
    from interpreted code).

    It takes the scheduler's general path (group commit, durability before
    acknowledgement, rollback) instead of the in-memory fast path. Writes can be held
    (``hold``) and made to fail (``fail``), like a full disk.
    """

    durable = True
    synchronous = False
    shares_records = False

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.fail = False
        self.hold: asyncio.Event | None = None
        self.writes: list[int] = []
        self.statuses: dict[str, RunStatus] = {}
        self.writing = asyncio.Event()

    async def write(self, batch: WriteBatch) -> None:
        """Capture the batch, suspend (or wait for ``hold``), then fail or store it."""
        captured = [(r.id, r.status) for r in batch.runs]  # read before the first await
        self.writes.append(len(batch.runs))
        self.writing.set()
        if self.hold is not None:
            await self.hold.wait()
        else:
            await asyncio.sleep(0)
        if self.fail:
            raise OSError(28, "No space left on device")
        self.inner.write_sync(batch)
        self.statuses.update(captured)

    async def open(self) -> StoredState:
        """What the wrapped memory backend holds."""
        return await self.inner.open()

    async def close(self) -> None:
        """Nothing to release."""

    async def get_run(self, run_id: str) -> Run | None:
        """The run, if known."""
        return await self.inner.get_run(run_id)

    async def list_runs(self, query: RunQuery) -> list[Run]:
        """Matching runs, newest first."""
        return await self.inner.list_runs(query)

    async def count_runs(self, query: RunQuery, *, at_most: int | None = None) -> int:
        """How many runs match."""
        return await self.inner.count_runs(query, at_most=at_most)

    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        """The run an earlier trigger with that key made."""
        return await self.inner.find_idempotent(job, idempotency_key)
