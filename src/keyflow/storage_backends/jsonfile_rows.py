"""The JSON file backend's runs in memory, and the queries they answer.

:class:`~keyflow.storage_backends.jsonfile.JSONFileBackend` keeps every stored run as
a row (the dict its files hold) in creation order; this half keeps those rows,
loads them from the files, retires finished ones beyond the retention and answers
queries. The other half opens, journals and compacts the files.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import StorageCorruptError
from ..runs import Run, RunStatus
from .base import RunQuery, StorageBackend, count_of, page_of
from .rows import Row, check_row, dumps, row_run
from .summaries import RunFacts, RunTiming, StoreSummary, summarize

SNAPSHOT_FORMAT = "keyflow-snapshot"
JOURNAL_FORMAT = "keyflow-journal"
VERSION = 1
TERMINAL = frozenset({"completed", "failed", "cancelled"})


class JSONRows(StorageBackend):
    """Stored runs as rows in memory: loaded from the files, queried in Python."""

    path: Path
    journal_path: Path
    old_journal_path: Path
    _old_journal: str
    """What the last load found of the rotated-out journal: ``"none"``, ``"stale"``
    (folded in already) or ``"replayed"`` (its snapshot was not written yet)."""
    _generation: int
    _snapshot_size: int

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self._runs: dict[str, Row] = {}
        """Every stored run, in creation order."""
        self._finished: OrderedDict[str, None] = OrderedDict()
        """Finished runs, oldest first (an insertion-ordered set)."""
        self._idempotency: dict[tuple[str, str], str] = {}
        self._keys_of_run: dict[str, list[tuple[str, str]]] = {}
        self._paused: set[tuple[str, str]] = set()
        self._to_prune: list[str] = []
        """Runs retired in memory whose removal the next journal line makes durable."""

    async def _refresh(self) -> None:
        """Bring the rows up to date before a query (a read-only open reloads)."""

    # -- loading the files -------------------------------------------------------

    def _load(self) -> int | None:
        """Read both files into memory; return the journal bytes to keep (None: none)."""
        self._runs.clear()
        self._finished.clear()
        self._idempotency.clear()
        self._paused.clear()
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
            folded = int(snapshot.get("journal_offset", 0))  # (older files: none)
            for row in snapshot["runs"]:
                self._put(check_row(row, f"{self.path}: malformed snapshot"))
            for job, key, run_id in snapshot["idempotency"]:
                self._remember_key(job, key, run_id)
            for kind, name in snapshot.get("paused", ()):  # (format 1 files may lack it)
                self._paused.add((str(kind), str(name)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StorageCorruptError(f"{self.path}: malformed snapshot ({exc!r})") from None
        # A compaction in progress (or cut short by a crash) left the journal it rotated
        # out: its lines past ``folded`` come first, then the new journal's, whole.
        snapshot_generation = self._generation
        self._old_journal = "none"
        if self.old_journal_path.exists():
            data = self.old_journal_path.read_bytes()
            if self._replay(data, self.old_journal_path, snapshot_generation, folded) is None:
                self._old_journal = "stale"
            else:
                self._old_journal = "replayed"
                self._generation = snapshot_generation + 1
                folded = 0
        if not self.journal_path.exists():
            return None
        return self._replay(
            self.journal_path.read_bytes(), self.journal_path, self._generation, folded
        )

    def _replay(self, data: bytes, path: Path, generation: int, folded: int) -> int | None:
        """Apply the journal ``data`` (of ``path``) if it is of ``generation``.

        Its first ``folded`` bytes are in the snapshot already. Returns the bytes to
        keep (None: the journal is stale, folded in already).
        """
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
            raise StorageCorruptError(f"{path}:1: not a keyflow journal header")
        self._check_version(header, path)
        found = header.get("generation")
        if found != generation:
            if isinstance(found, int) and found < generation:
                return None  # already folded into the snapshot
            raise StorageCorruptError(
                f"{path}:1: generation {found!r} does not follow the snapshot's ({generation})"
            )
        kept = len(complete[0]) + 1
        if folded > len(data):
            raise StorageCorruptError(
                f"{path} is {len(data)} bytes, shorter than the {folded} its snapshot folded in"
            )
        for number, line in enumerate(complete[1:], start=2):
            if kept < folded:  # in the snapshot already
                kept += len(line) + 1
                continue
            try:
                entry = json.loads(line)
                self._apply_entry(entry)
            except (KeyError, TypeError, ValueError, AttributeError):  # JSON errors included
                if number == len(complete) and not torn:
                    break  # the last line, cut short by a crash before its newline landed
                raise StorageCorruptError(f"{path}:{number}: unreadable journal entry") from None
            kept += len(line) + 1
        return kept

    def _check_version(self, document: dict[str, Any], path: Path) -> None:
        version = document.get("version")
        if version != VERSION:
            raise StorageCorruptError(
                f"{path} has format version {version!r}; this keyflow reads version {VERSION}"
            )

    def _apply_pauses(self, pauses: Iterable[Any]) -> None:
        for kind, name, paused in pauses:
            if paused:
                self._paused.add((str(kind), str(name)))
            else:
                self._paused.discard((str(kind), str(name)))

    def _apply_entry(self, entry: dict[str, Any]) -> None:
        self._apply_pauses(entry.get("pauses", ()))
        for row in entry["runs"]:
            self._put(check_row(row, str(self.journal_path)))
        for job, key, run_id in entry["idempotency"]:
            self._remember_key(job, key, run_id)
        for run_id in entry["pruned"]:
            self._forget(run_id)

    # -- the runs in memory ------------------------------------------------------

    def _put(self, row: Row) -> None:
        run_id = row["id"]
        self._runs[run_id] = row
        if row["status"] in TERMINAL:
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

    def _matching(self, query: RunQuery) -> Iterator[Row]:
        text = query.text.lower() if query.text else None
        for row in reversed(self._runs.values()):
            if not query.matches(
                row["job"],
                row["status"],
                row["key"],
                row["created_at"],
                row["finished_at"],
                row["labels"],
            ):
                continue
            if text is not None and text not in dumps(row).lower():
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
        return [row_run(row) for row in page_of(self._matching(query), query)]

    async def count_runs(self, query: RunQuery, *, at_most: int | None = None) -> int:
        """How many runs match (stopping at ``at_most``)."""
        await self._refresh()
        return count_of(self._matching(query), at_most)

    async def summary(self) -> StoreSummary:
        """Keys, jobs and coalesced triggers of every stored run."""
        await self._refresh()
        return summarize(
            RunFacts(r["key"], r["job"], r["status"], r["trigger_count"], r["created_at"])
            for r in self._runs.values()
        )

    async def run_timings(self, job: str, since: float, *, limit: int = 100_000) -> list[RunTiming]:
        """The runs of ``job`` created at ``since`` or later, newest first."""
        await self._refresh()
        out: list[RunTiming] = []
        for r in reversed(self._runs.values()):
            if len(out) >= limit:
                break
            if r["job"] == job and r["created_at"] >= since:
                out.append(
                    RunTiming(
                        r["id"],
                        RunStatus(r["status"]),
                        r["created_at"],
                        r["due_at"],
                        r["started_at"],
                        r["finished_at"],
                        r["attempt"],
                        r["trigger_count"],
                    )
                )
        return out

    async def paused(self) -> frozenset[tuple[str, str]]:
        """What is paused now."""
        await self._refresh()
        return frozenset(self._paused)

    async def find_idempotent(self, job: str, idempotency_key: str) -> str | None:
        """The run an earlier trigger with that key made, while it is retained."""
        await self._refresh()
        return self._idempotency.get((job, idempotency_key))
