"""``json:///path.json``: runs in a human-readable JSON file plus a journal.

Two files: ``path.json``, a snapshot of every stored run, and ``path.json.journal``,
JSON lines appended since that snapshot, one per committed batch. A commit appends
one line and fsyncs it: it costs O(change), not O(all runs). Once the journal outgrows
the snapshot, compaction writes a new snapshot atomically (temporary file in the same
directory, fsync, ``os.replace``, fsync of the directory) and starts a new journal.

Both files carry a generation number: a journal older than the snapshot (a crash
between the two replacements) is already folded in and is ignored. A torn last
journal line (a crash mid-append) was never acknowledged and is dropped; anything
else unreadable stops the open with an error naming the file and line, touching
nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiofiles
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from ..errors import StorageCorruptError, StorageError
from ..runs import Run
from .base import RunQuery, StorageBackend, StoredState, WriteBatch
from .lockfile import WriterLock
from .rows import Row, dumps, record_row, row_record, row_run

SNAPSHOT_FORMAT = "keyflow-snapshot"
JOURNAL_FORMAT = "keyflow-journal"
VERSION = 1
MIN_COMPACT_BYTES = 1 << 20
"""The journal is folded into the snapshot once it is larger than this and the snapshot."""
REFRESH_SECONDS = 0.5
"""A read-only open reloads the files at most this often."""
_TERMINAL = frozenset({"completed", "failed", "cancelled"})


class JSONFileBackend(StorageBackend):
    """Runs in a JSON snapshot file and its append-only journal."""

    def __init__(self, path: str | Path, *, retention: int = 10_000, read_only: bool = False):
        if retention < 0:
            raise ValueError("retention must be >= 0")
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.retention = retention
        self.read_only = read_only
        self._lock = WriterLock(self.path)
        self._runs: dict[str, Row] = {}
        """Every stored run, in creation order."""
        self._finished: OrderedDict[str, None] = OrderedDict()
        """Finished runs, oldest first (an insertion-ordered set)."""
        self._idempotency: dict[tuple[str, str], str] = {}
        self._keys_of_run: dict[str, list[tuple[str, str]]] = {}
        self._generation = 0
        self._journal: AsyncBufferedIOBase | None = None
        self._journal_size = 0
        self._snapshot_size = 0
        self._to_prune: list[str] = []
        self._broken: str | None = None
        self._seen: tuple[float, int, float, int] | None = None  # read-only: file stats
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
        if self.read_only:
            await self._refresh()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            try:
                await self._open_for_writing()
            except BaseException:
                await self.close()
                raise
        unfinished = [
            row_record(row) for row in self._runs.values() if row["status"] not in _TERMINAL
        ]
        return StoredState(unfinished=unfinished)

    async def _open_for_writing(self) -> None:
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
        self._journal = await aiofiles.open(self.journal_path, "ab")
        self._apply_retention()

    def _load(self) -> int | None:
        """Read both files into memory; return the journal bytes to keep (None: none)."""
        self._runs.clear()
        self._finished.clear()
        self._idempotency.clear()
        self._keys_of_run.clear()
        if not self.path.exists():
            if self.journal_path.exists():
                raise StorageCorruptError(
                    f"{self.journal_path} exists but its snapshot {self.path} does not"
                )
            self._generation = 0
            return None
        raw = self.path.read_bytes()
        self._snapshot_size = len(raw)
        try:
            snapshot = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StorageCorruptError(f"{self.path}: not JSON ({exc})") from None
        if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
            raise StorageCorruptError(f"{self.path} is not a keyflow snapshot; refusing to use it")
        self._check_version(snapshot, self.path)
        try:
            self._generation = int(snapshot["generation"])
            for row in snapshot["runs"]:
                self._put(row)
            for job, key, run_id in snapshot["idempotency"]:
                self._remember_key(job, key, run_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageCorruptError(f"{self.path}: malformed snapshot ({exc!r})") from None
        if not self.journal_path.exists():
            return None
        return self._replay(self.journal_path.read_bytes())

    def _replay(self, data: bytes) -> int | None:
        lines = data.split(b"\n")
        # Every complete line ends with "\n"; what follows the last one is a torn append.
        complete, torn = lines[:-1], lines[-1]
        if not complete:  # not even the header was written whole
            return None
        try:
            header = json.loads(complete[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
            raise StorageCorruptError(f"{self.journal_path}:1: not a keyflow journal header")
        self._check_version(header, self.journal_path)
        generation = header.get("generation")
        if generation != self._generation:
            if isinstance(generation, int) and generation < self._generation:
                return None  # already folded into the snapshot
            raise StorageCorruptError(
                f"{self.journal_path}:1: generation {generation!r} does not follow the "
                f"snapshot's ({self._generation})"
            )
        kept = len(complete[0]) + 1
        for number, line in enumerate(complete[1:], start=2):
            try:
                entry = json.loads(line)
                self._apply_entry(entry)
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                if number == len(complete) and not torn:
                    break  # the last line, cut short by a crash before its newline landed
                raise StorageCorruptError(
                    f"{self.journal_path}:{number}: unreadable journal entry"
                ) from None
            kept += len(line) + 1
        return kept

    def _check_version(self, document: dict[str, Any], path: Path) -> None:
        version = document.get("version")
        if version != VERSION:
            raise StorageCorruptError(
                f"{path} has format version {version!r}; this keyflow reads version {VERSION}"
            )

    def _apply_entry(self, entry: dict[str, Any]) -> None:
        for row in entry["runs"]:
            self._put(row)
        for job, key, run_id in entry["idempotency"]:
            self._remember_key(job, key, run_id)
        for run_id in entry["pruned"]:
            self._forget(run_id)

    async def close(self) -> None:
        """Close the journal and release the lock. Idempotent."""
        journal, self._journal = self._journal, None
        try:
            if journal is not None:
                await journal.close()
        finally:
            self._lock.release()

    # -- writing -----------------------------------------------------------------

    async def write(self, batch: WriteBatch) -> None:
        """Append the batch as one journal line and fsync it; compact when due.

        Raises:
            StorageError: nothing of the batch was stored.
        """
        rows = [record_row(record) for record in batch.runs]  # before the first await
        journal = self._writable()
        pruned, self._to_prune = self._to_prune, []
        line = (
            dumps({"runs": rows, "idempotency": batch.idempotency, "pruned": pruned}) + "\n"
        ).encode()
        try:
            await journal.write(line)
            await journal.flush()
            await asyncio.to_thread(os.fsync, journal.fileno())
        except OSError as exc:
            self._to_prune = pruned + self._to_prune
            await self._undo_append(exc)
            raise StorageError(f"writing {self.journal_path} failed: {exc}") from exc
        self._journal_size += len(line)
        for row in rows:
            self._put(row)
        for job, key, run_id in batch.idempotency:
            self._remember_key(job, key, run_id)
        self._apply_retention()
        if self._journal_size > max(MIN_COMPACT_BYTES, self._snapshot_size):
            await self.compact()

    async def _undo_append(self, exc: OSError) -> None:
        # Cut the journal back to its last good line, so later appends follow it.
        try:
            assert self._journal is not None
            await self._journal.truncate(self._journal_size)
            await self._journal.seek(self._journal_size)
        except (OSError, ValueError) as again:
            self._broken = f"the journal could not be repaired after {exc!r}: {again!r}"

    async def compact(self) -> None:
        """Fold the journal into a new snapshot and start an empty journal.

        Raises:
            StorageError: the snapshot could not be written (the old files still hold
                everything).
        """
        journal = self._writable()
        document = self._snapshot(self._generation + 1)
        try:
            # Serialised in the thread too: the rows are never changed in place, only
            # replaced, so the lists taken here stay the state of this moment.
            await asyncio.to_thread(self._write_snapshot, document)
            self._generation += 1
            await journal.close()
            self._journal = None
            await asyncio.to_thread(self._new_journal)
            self._journal_size = self.journal_path.stat().st_size
            self._journal = await aiofiles.open(self.journal_path, "ab")
        except OSError as exc:
            self._broken = f"compaction failed: {exc!r}"
            raise StorageError(f"compacting {self.path} failed: {exc}") from exc

    def _snapshot(self, generation: int) -> dict[str, Any]:
        idempotency = [[job, key, run_id] for (job, key), run_id in self._idempotency.items()]
        return {
            "format": SNAPSHOT_FORMAT,
            "version": VERSION,
            "generation": generation,
            "runs": list(self._runs.values()),
            "idempotency": idempotency,
        }

    def _write_snapshot(self, document: dict[str, Any]) -> None:
        data = (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode()
        _replace_atomically(self.path, data)
        self._snapshot_size = len(data)

    def _new_journal(self) -> None:
        header = {"format": JOURNAL_FORMAT, "version": VERSION, "generation": self._generation}
        _replace_atomically(self.journal_path, (dumps(header) + "\n").encode())

    def _writable(self) -> AsyncBufferedIOBase:
        if self.read_only:
            raise StorageError(f"{self.path} is open read-only")
        if self._broken is not None:
            raise StorageError(f"{self.path} cannot be written: {self._broken}")
        if self._journal is None:
            raise StorageError(f"{self.path} is not open")
        return self._journal

    # -- the runs in memory ------------------------------------------------------

    def _put(self, row: Row) -> None:
        run_id = row["id"]
        self._runs[run_id] = row
        if row["status"] in _TERMINAL:
            self._finished[run_id] = None

    def _remember_key(self, job: str, key: str, run_id: str) -> None:
        self._idempotency[job, key] = run_id
        self._keys_of_run.setdefault(run_id, []).append((job, key))

    def _forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)
        self._finished.pop(run_id, None)
        for job_and_key in self._keys_of_run.pop(run_id, ()):
            self._idempotency.pop(job_and_key, None)

    def _apply_retention(self) -> None:
        # Pruned at once in memory; the next journal line makes it durable.
        excess = len(self._finished) - self.retention
        if excess > 0:
            victims = [self._finished.popitem(last=False)[0] for _ in range(excess)]
            for run_id in victims:
                self._forget(run_id)
            self._to_prune.extend(victims)

    # -- reading -----------------------------------------------------------------

    async def _refresh(self) -> None:
        # Read-only: reload when the writer changed a file since the last look (at most
        # every REFRESH_SECONDS: a reload reads everything).
        if not self.read_only:
            return
        loop = asyncio.get_running_loop()
        if self._seen is not None and loop.time() - self._loaded_at < self.refresh_seconds:
            return
        for attempt in range(3):  # a compaction may replace the files between our reads
            try:
                snap, journal = self.path.stat(), self.journal_path.stat()
                seen = (snap.st_mtime, snap.st_size, journal.st_mtime, journal.st_size)
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

    def _matching(self, query: RunQuery) -> Iterator[Row]:
        status = None if query.status is None else query.status.value
        for row in reversed(self._runs.values()):
            if query.job is not None and row["job"] != query.job:
                continue
            if status is not None and row["status"] != status:
                continue
            if query.key is not None and row["key"] != query.key:
                continue
            if query.labels and any(row["labels"].get(n) != v for n, v in query.labels):
                continue
            if query.text and query.text.lower() not in dumps(row).lower():
                continue
            yield row

    async def get_run(self, run_id: str) -> Run | None:
        """The stored run, or None."""
        await self._refresh()
        row = self._runs.get(run_id)
        return None if row is None else row_run(row)

    async def list_runs(self, query: RunQuery) -> list[Run]:
        """Matching runs, newest first."""
        await self._refresh()
        out: list[Run] = []
        for index, row in enumerate(self._matching(query)):
            if index < query.offset:
                continue
            if len(out) >= query.limit:
                break
            out.append(row_run(row))
        return out

    async def count_runs(self, query: RunQuery) -> int:
        """How many runs match."""
        await self._refresh()
        return sum(1 for _ in self._matching(query))

    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        """The run an earlier trigger with that key made, while it is retained."""
        await self._refresh()
        return self._idempotency.get((job, idempotency_key))


def _replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
