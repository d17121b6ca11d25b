"""Small fakes shared by tests: storage that behaves like a disk."""

from __future__ import annotations

import asyncio

from keyflow import RunStatus
from keyflow.storage_backends import MemoryBackend, WriteBatch


class DiskLikeBackend(MemoryBackend):
    """The memory backend behaving like a durable one: every write suspends.

    It takes the scheduler's general path (group commit, durability before
    acknowledgement, rollback) instead of the in-memory fast path. Writes can be held
    (``hold``) and made to fail (``fail``), like a full disk.
    """

    durable = True
    synchronous = False
    shares_records = False

    def __init__(self) -> None:
        super().__init__()
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
        self.write_sync(batch)
        self.statuses.update(captured)
