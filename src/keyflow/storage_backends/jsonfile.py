"""``json:///path.json``: runs in a human-readable JSON file plus a journal.

Two files: ``path.json``, a snapshot of every stored run, and ``path.json.journal``,
JSON lines appended since that snapshot, one per committed batch. A commit appends
one line and fsyncs it: it costs O(change), not O(all runs).

Compaction never holds commits up for the snapshot. Once the journal outgrows the
snapshot, the write that saw it rotates the journal (``path.json.journal`` becomes
``path.json.journal.old`` and a new journal of the next generation starts: a rename
and a small file), then returns; the snapshot of that moment is written in the
background (temporary file, fsync, ``os.replace``, fsync of the directory) while
commits go on appending to the new journal, and the old journal is deleted once the
snapshot is durable. The snapshot says how many bytes of its generation's journal it
holds (``journal_offset``).

Both files carry a generation number. Opening replays the old journal (if it is of
the snapshot's generation: the snapshot was not written yet) past the bytes the
snapshot holds, then the journal; a journal older than the snapshot is folded in
already and is ignored; an open that replayed an old journal finishes the compaction
first. A torn last journal line (a crash mid-append) was never acknowledged and is
dropped; anything else unreadable stops the open with an error naming the file and
line, touching nothing.

A full disk never breaks the store for good: a failed append is cut back to the last
good line (or, if even that fails, before the next append), and a failed compaction
only postpones compaction: the appended batch is durable and acknowledged. Every batch
first checks that the files are still the ones opened (deleted or replaced files would
swallow later commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from ..errors import StorageCorruptError, StorageError
from .base import Refusals, StoredState, WriteBatch
from .journal import JournalFile, identity
from .jsonfile_rows import TERMINAL
from .jsonfile_snapshots import Snapshots
from .lockfile import WriterLock
from .rows import dumps, encode_rows, record_row, row_record
from .writer_thread import WriterThread

logger = logging.getLogger("keyflow.storage")

FOLD_PATIENCE = 10.0
"""Seconds a close waits for a compaction's snapshot to be written (then goes on: the
old journal, kept, is replayed by the next open)."""
REFRESH_SECONDS = 0.5
"""A read-only open reloads the files at most this often."""


class JSONFileBackend(Snapshots):
    """Runs in a JSON snapshot file and its append-only journal."""

    journal_file: Callable[[Path], JournalFile] = JournalFile
    """Opens the journal for appending (a test swaps in a file that fails like a full
    disk)."""

    def __init__(self, path: str | Path, *, retention: int = 10_000, read_only: bool = False):
        if retention < 0:
            raise ValueError("retention must be >= 0")
        super().__init__(retention)
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.old_journal_path = self.path.with_name(self.path.name + ".journal.old")
        self._old_journal = "none"
        self._folding: asyncio.Task[None] | None = None
        """The background half of a compaction (the snapshot), while it runs."""
        self._snapshot_lock = threading.Lock()
        """Held while the snapshot file is renamed into place and its identity noted,
        and while a write checks that identity (they run in different threads)."""
        self.read_only = read_only
        self._lock = WriterLock(self.path)
        self._generation = 0
        self._journal: JournalFile | None = None
        self._journal_size = 0
        """Bytes of the journal that hold acknowledged lines (the rest is to cut)."""
        self._needs_cut = False
        """A failed append could not be cut back yet: do it before the next append."""
        self._needs_journal = False
        """A compaction wrote its snapshot but not the new journal: make it first."""
        self._snapshot_size = 0
        self._snapshot_id: tuple[int, int, int] | None = None
        self._closed = False
        self._ops: set[asyncio.Future[Any]] = set()
        """Blocking file operations running in a thread now (see close())."""
        self._appender: WriterThread | None = None
        """The thread of the journal's appends (while open for writing)."""
        self._compact_at = 0  # (set at open)
        self._seen: tuple[object, ...] | None = None  # read-only: the files' stats
        self._loaded_at = 0.0
        self.refresh_seconds = REFRESH_SECONDS
        """Read-only: the longest a change of the files goes unnoticed."""

    def __repr__(self) -> str:
        return f"<JSONFileBackend {str(self.path)!r}{' read-only' if self.read_only else ''}>"

    # -- opening -----------------------------------------------------------------

    async def open(self) -> StoredState:
        """Lock (unless read-only), load snapshot and journal, return unfinished runs.

        Raises:
            StorageLockedError: another process writes these files.
            StorageCorruptError: a file is not readable as keyflow's (names file and
                line); nothing was changed.
        """
        for path in (self.path, self.journal_path):
            if path.is_dir():
                raise StorageError(f"{path} is a directory, not a keyflow JSON file")
        try:
            started: dict[str, int] = {}
            if self.read_only:
                await self._refresh()
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(f"cannot create the folder of {self.path}: {exc}") from exc
                self._lock.acquire()
                await self._open_for_writing()
                started = self.open_start_marks(self.path)
            unfinished = [
                row_record(row, str(self.path))
                for row in self._runs.values()
                if row["status"] not in TERMINAL
            ]
        except BaseException:
            await self.close()
            raise
        return StoredState(unfinished=unfinished, paused=frozenset(self._paused), started=started)

    async def _open_for_writing(self) -> None:
        try:
            good_journal_bytes = await asyncio.to_thread(self._load)
            if not self.path.exists():
                await asyncio.to_thread(self._write_snapshot, self._snapshot(1))
                self._generation = 1
                good_journal_bytes = None
            if good_journal_bytes is None:  # missing or stale: start a fresh one
                await asyncio.to_thread(self._new_journal)
            elif good_journal_bytes < self.journal_path.stat().st_size:
                os.truncate(self.journal_path, good_journal_bytes)  # drop the torn last line
            self._journal_size = self.journal_path.stat().st_size
            self._journal = self.journal_file(self.journal_path)
            if self._old_journal == "replayed":  # a compaction cut short: finish it first
                document = self._snapshot(self._generation, self._journal_size)
                await asyncio.to_thread(self._fold, document)
            elif self._old_journal == "stale":
                await asyncio.to_thread(self._drop_old_journal)
        except OSError as exc:
            raise StorageError(f"{self.path} cannot be opened for writing: {exc}") from exc
        self._snapshot_id = identity(self.path)
        self._reset_compact_at()
        self._apply_retention()
        self._appender = WriterThread("keyflow-json-appender")
        self._appender.start()

    async def close(self) -> None:
        """Close the journal and release the lock. Idempotent.

        A failed append not cut off yet gets a last try first. While a write is still in
        a thread (a disk stalled past the stop's patience), the descriptor and the lock
        are kept until it returns: the descriptor number cannot be reused under it, and
        no other process can open the store meanwhile.
        """
        if self._closed:
            return
        self._closed = True
        folding = self._folding
        if folding is not None:  # a compaction's snapshot: let it finish, a while
            await asyncio.wait({folding}, timeout=FOLD_PATIENCE)
            folding.cancel()  # (done; or its thread, still writing, is waited for below)
        self.close_start_marks()
        if self._ops:
            logger.warning(
                "%s: a write is still in progress; the store is closed when it returns",
                self.path,
            )
            for op in list(self._ops):
                op.add_done_callback(self._close_when_idle)
            return
        journal, self._journal = self._journal, None
        try:
            if journal is not None:
                if self._needs_cut:
                    await self._cut(journal)
                journal.close()
        finally:
            appender = self._stop_appender()
            self._lock.release()
        if appender is not None:
            await appender.stopped()

    def _close_when_idle(self, _op: asyncio.Future[Any]) -> None:
        if self._ops or self._journal is None:
            return
        journal, self._journal = self._journal, None
        try:
            if self._needs_cut:
                with contextlib.suppress(OSError):
                    journal.truncate(self._journal_size)  # rare: a blocking call is fine
            journal.close()
        finally:
            self._stop_appender()
            self._lock.release()

    def _stop_appender(self) -> WriterThread | None:
        appender, self._appender = self._appender, None
        if appender is not None:
            appender.stop()
        return appender

    # -- writing -----------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> Refusals | None:
        """Append the batch as one journal line and fsync it; compact when due.

        Raises:
            StorageError: nothing of the batch was stored.
        """
        # Before the first await (see the base module).
        rows, text = encode_rows([record_row(record) for record in batch.runs])
        self._writable()
        pruned, self._to_prune = self._to_prune, []
        line = (
            '{"runs":'
            + text
            + ',"idempotency":'
            + (dumps(batch.idempotency) if batch.idempotency else "[]")
            + ',"pruned":'
            + (dumps(pruned) if pruned else "[]")
            + (',"pauses":' + dumps(batch.pauses) if batch.pauses else "")
            + "}\n"
        ).encode()
        try:
            if self._needs_journal:
                self._check_identity()
                await self._start_journal()
            journal = self._journal
            assert journal is not None
            if self._needs_cut and not await self._cut(journal):
                raise OSError("the journal still holds the tail of a failed append")
            await self._in_thread(self._append, journal, line, append=True)
        except OSError as exc:
            self._to_prune = pruned + self._to_prune
            if self._journal is not None and not self._needs_journal:
                self._needs_cut = True
                await self._cut(self._journal)
            raise StorageError(f"writing {self.journal_path} failed: {exc}") from exc
        self._journal_size += len(line)
        for row in rows:
            self._put(row)
        for job, key, run_id in batch.idempotency:
            self._remember_key(job, key, run_id)
        self._apply_pauses(batch.pauses)
        self._apply_retention()
        if self._journal_size > self._compact_at and self._folding is None:
            # The batch is durable: a compaction that fails only comes later.
            try:
                if not self._old_pending():
                    await self._rotate_journal()
            except StorageError as exc:
                self._compaction_failed(exc)
            else:
                self._folding = asyncio.get_running_loop().create_task(self._fold_later())
        return None

    def _append(self, journal: JournalFile, line: bytes) -> None:
        """Append ``line`` (in the writing thread), once the files are checked to be ours.

        The checks (``stat``s of the files) run here too: the event loop does no disk
        work of its own on a commit.
        """
        self._check_identity()
        self._check_size(journal)
        journal.append(line)

    async def _cut(self, journal: JournalFile) -> bool:
        # Cut the journal back to its last good line, so a failed append leaves nothing
        # behind; True when done (else it is tried again before the next append).
        try:
            await self._in_thread(journal.truncate, self._journal_size, append=True)
        except OSError as exc:
            logger.error("cannot cut %s back after a failed append: %r", self.journal_path, exc)
            return False
        self._needs_cut = False
        return True

    def _check_identity(self) -> None:
        # Files deleted or replaced under us would swallow every later commit.
        self._lock.check()
        journal = self._journal
        with self._snapshot_lock:
            snapshot_moved = identity(self.path) != self._snapshot_id
        replaced = snapshot_moved or (
            not self._needs_journal
            and journal is not None
            and (identity(self.journal_path) or (0, 0, 0))[:2] != journal.identity()
        )
        if replaced:
            raise StorageError(
                f"{self.path} or its journal was deleted or replaced (or changed) while "
                "keyflow was writing it; refusing to write: restart keyflow to open the "
                "files anew"
            )

    def _check_size(self, journal: JournalFile) -> None:
        # Truncated (or written) by someone else: later lines would follow garbage.
        size = journal.size()
        if size != self._journal_size:
            raise StorageError(
                f"{self.journal_path} is {size} bytes, not the {self._journal_size} keyflow "
                "wrote: it was changed under keyflow; refusing to write: restart keyflow"
            )

    def _writable(self) -> None:
        if self.read_only:
            raise StorageError(f"{self.path} is open read-only")
        if self._closed or (self._journal is None and not self._needs_journal):
            raise StorageError(f"{self.path} is not open")

    async def _refresh(self) -> None:
        """Read-only: reload the files if the writer changed them."""
        # Read-only: reload when the writer changed a file since the last look (at most
        # every REFRESH_SECONDS: a reload reads everything).
        if not self.read_only:
            return
        loop = asyncio.get_running_loop()
        if self._seen is not None and loop.time() - self._loaded_at < self.refresh_seconds:
            return
        for attempt in range(3):  # a compaction may replace the files between our reads
            try:
                snap = self.path.stat()
                journal, old = _stat(self.journal_path), _stat(self.old_journal_path)
                if journal is None and old is None:
                    raise FileNotFoundError(2, "No such file", str(self.journal_path))
                seen = (snap.st_mtime, snap.st_size, journal, old)
                if seen != self._seen:
                    self._load()
                    self._seen = seen
                self._loaded_at = loop.time()
                return
            except FileNotFoundError as exc:
                if attempt == 2:
                    raise StorageError(
                        f"{exc.filename} does not exist (opened read-only)"
                    ) from None
            except StorageCorruptError:
                if attempt == 2:
                    raise

    async def change_token(self) -> Hashable:
        """The files' generation and journal length (a reader: their sizes and times)."""
        if self.read_only:
            await self._refresh()
            return self._seen
        return (self._generation, self._journal_size)


def _stat(path: Path) -> tuple[float, int] | None:
    """``path``'s modification time and size, or None if it does not exist."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return (found.st_mtime, found.st_size)
