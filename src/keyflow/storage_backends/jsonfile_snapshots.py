"""The JSON store's snapshot and journal files: making them, and compacting.

A compaction is in two halves (see :mod:`keyflow.storage_backends.jsonfile`): between
two writes, the journal is rotated (it becomes the old journal, and a new journal of
the next generation takes the appends); then, in the background, the snapshot of that
moment is written, and the old journal deleted once it is durable. Commits never wait
for the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StorageError
from .journal import JournalFile, identity, replace_atomically, replace_file, sync_directory
from .jsonfile_rows import JOURNAL_FORMAT, SNAPSHOT_FORMAT, VERSION, JSONRows
from .rows import dumps
from .writer_thread import WriterThread

logger = logging.getLogger("keyflow.storage")

MIN_COMPACT_BYTES = 1 << 20
"""The journal is folded into the snapshot once it is larger than this and the snapshot."""


class Snapshots(JSONRows):
    """The files of a JSON store, and their compaction (the writer's half)."""

    journal_file: Callable[[Path], JournalFile]
    _journal: JournalFile | None
    _journal_size: int
    _needs_journal: bool
    _needs_cut: bool
    _snapshot_id: tuple[int, int, int] | None
    _compact_at: int
    _folding: asyncio.Task[None] | None
    _snapshot_lock: threading.Lock
    _ops: set[asyncio.Future[Any]]
    _appender: WriterThread | None

    def _writable(self) -> None:
        raise NotImplementedError

    def _reset_compact_at(self) -> None:
        """Compact again once the journal outgrows the snapshot (and the minimum)."""
        self._compact_at = max(MIN_COMPACT_BYTES, self._snapshot_size)

    async def _in_thread(
        self, function: Callable[..., Any], *args: Any, append: bool = False
    ) -> Any:
        # Every blocking file operation goes through here: close() knows what is in
        # flight. Shielded: a cancelled caller leaves the operation running (as a thread
        # does), still tracked. The journal's appends (and cuts) run in order on the
        # appender's own thread, a snapshot's writing in the default pool beside them.
        appender = self._appender
        if append and appender is not None and appender.running:
            op: asyncio.Future[Any] = appender.call(functools.partial(function, *args))
        else:
            op = asyncio.get_running_loop().run_in_executor(None, function, *args)
        self._ops.add(op)
        op.add_done_callback(self._ops.discard)
        return await asyncio.shield(op)

    def _old_pending(self) -> bool:
        """A rotated-out journal waits for its snapshot (rotating again would lose it)."""
        return self._old_journal == "rotated"

    def _compaction_failed(self, exc: StorageError) -> None:
        self._compact_at = self._journal_size + max(MIN_COMPACT_BYTES, self._journal_size // 4)
        logger.warning("%s; compaction will be tried again later", exc)

    async def _fold_later(self) -> None:
        """The background half of a compaction: the snapshot (see the module)."""
        try:
            await self._fold_now()
        except StorageError as exc:
            self._compaction_failed(exc)
        finally:
            self._folding = None

    async def compact(self) -> None:
        """Fold the journal into a new snapshot and start an empty journal.

        Raises:
            StorageError: the snapshot or the new journal could not be written; nothing
                is lost (the old files, or the new snapshot, hold everything) and later
                writes go on.
        """
        self._writable()
        folding = self._folding
        if folding is not None:
            await asyncio.shield(folding)  # one compaction at a time
        if not self._old_pending():
            await self._rotate_journal()
        await self._fold_now()

    async def _rotate_journal(self) -> None:
        """Rotate the journal: the first half of a compaction (between two writes).

        The journal becomes the old journal, and a new journal of the next generation
        takes the appends.

        Raises:
            StorageError: the journal could not be rotated; nothing changed, or (the
                new journal not made) it is made before the next append.
        """
        try:
            await self._in_thread(os.replace, self.journal_path, self.old_journal_path)
        except OSError as exc:
            raise StorageError(f"rotating {self.journal_path} failed: {exc}") from exc
        self._old_journal = "rotated"
        self._generation += 1
        self._needs_journal = True  # appends go to the new journal only
        try:
            await self._start_journal()
        except OSError as exc:
            raise StorageError(f"starting a new {self.journal_path} failed: {exc}") from exc

    async def _fold_now(self) -> None:
        """The second half: the snapshot of now, then the old journal goes.

        Raises:
            StorageError: the snapshot could not be written (the old journal stays, and
                is replayed by an open until a snapshot is).
        """
        if self._needs_journal:  # the rotation's new journal is not made yet
            try:
                await self._start_journal()
            except OSError as exc:
                raise StorageError(f"starting a new {self.journal_path} failed: {exc}") from exc
        # Taken on the loop, between two appends: the rows are never changed in place,
        # only replaced, so the lists taken here stay the state of this moment.
        document = self._snapshot(self._generation, self._journal_size)
        try:
            await self._in_thread(self._fold, document)
        except OSError as exc:
            raise StorageError(f"compacting {self.path} failed: {exc}") from exc
        self._old_journal = "none"
        self._reset_compact_at()

    def _fold(self, document: dict[str, Any]) -> None:
        """Write ``document`` as the snapshot, then delete the old journal (a thread).

        The old journal goes only once the snapshot's rename is durable (the folder
        synced): otherwise a power cut could keep the deletion and lose the rename.
        """
        self._write_snapshot(document, strict=True)
        self._drop_old_journal()

    def _drop_old_journal(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.old_journal_path.unlink()
        self._sync_directory(self.old_journal_path)

    async def _start_journal(self) -> None:
        # The new journal's rename is synced with its directory, which makes the new
        # snapshot's durable too (a directory sync that failed after it is redone here).
        await self._in_thread(self._new_journal)
        fresh = self.journal_file(self.journal_path)  # may fail: tried again next write
        old, self._journal = self._journal, fresh
        if old is not None:
            old.close()
        self._journal_size = fresh.size()
        self._needs_journal = self._needs_cut = False
        self._reset_compact_at()

    def _snapshot(self, generation: int, journal_offset: int = 0) -> dict[str, Any]:
        idempotency = [[job, key, run_id] for (job, key), run_id in self._idempotency.items()]
        return {
            "format": SNAPSHOT_FORMAT,
            "version": VERSION,
            "generation": generation,
            "journal_offset": journal_offset,
            "runs": list(self._runs.values()),
            "idempotency": idempotency,
            "paused": sorted([kind, name] for kind, name in self._paused),
        }

    def _note_snapshot(self) -> None:
        """The snapshot file just replaced is ours (even if the folder sync fails)."""
        self._snapshot_id = identity(self.path)

    def _write_snapshot(self, document: dict[str, Any], *, strict: bool = False) -> None:
        data = (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()
        replace_file(self.path, data, self._snapshot_lock, self._note_snapshot)
        self._snapshot_size = len(data)
        try:
            self._sync_directory(self.path)
        except OSError as exc:  # the new journal's sync makes the rename durable
            if strict:
                raise
            logger.warning("syncing the folder of %s failed (%r); retried", self.path, exc)

    def _sync_directory(self, path: Path) -> None:
        sync_directory(path)

    def _new_journal(self) -> None:
        header = {"format": JOURNAL_FORMAT, "version": VERSION, "generation": self._generation}
        replace_atomically(self.journal_path, (dumps(header) + "\n").encode())
