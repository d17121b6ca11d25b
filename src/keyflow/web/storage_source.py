"""``keyflow dashboard --storage URL``: the dashboard of storage another process writes.

Read-only; live by polling, incrementally: each poll first asks whether the files
changed at all (:func:`~.catalog.file_token`; a database's backend answers its
``change_token()``), and only then re-reads the unfinished runs and the runs created
since (:class:`~.catalog.StorageCatalog`), once for every widget and page. An idle file
costs a few ``stat`` calls a second, and no render.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

from ..errors import StorageError
from ..lane_view import stored_lane_snapshot
from ..runs import Run, RunStatus
from ..state import lane_state, slot_held
from ..stats import LaneSnapshot, Paused
from ..storage_backends import RunQuery, StorageBackend
from ..storage_backends.summaries import RunTiming
from ..watch import Changes
from .catalog import StorageCatalog, file_token, storage_files
from .natural import NaturalOrder
from .source import (
    ALL_STATUSES,
    LANE_STATES,
    UNFINISHED,
    Counts,
    DashboardSource,
    LaneFilters,
    LaneRow,
    RunFilters,
)


class StorageSource(DashboardSource):
    """A storage file another process writes: read-only, refreshed by polling.

    Its lanes are rebuilt from the stored unfinished runs by
    :func:`~keyflow.lane_view.stored_lane_snapshot`, the function the scheduler's own
    snapshots share. Storage does not keep the writer's ``lane_limit``: a lane's limit
    shows :func:`~keyflow.lane_view.stored_lane_limit`'s guess, the number of its runs
    holding a slot (at least 1).
    """

    read_only = True
    RECHECK_SECONDS = 60.0
    """Re-read even when the files look unchanged, at least this often (a safety net)."""

    def __init__(
        self, backend: StorageBackend, *, poll_seconds: float = 1.0, stored_clock: bool = False
    ) -> None:
        self.backend = backend
        self.poll_seconds = poll_seconds
        self.stored_clock = stored_clock
        """Measure ages against the newest time in storage, not the wall clock."""
        self.catalog = StorageCatalog(backend)
        self._files = storage_files(backend)
        self._asks_token = (
            not self._files and type(backend).change_token is not StorageBackend.change_token
        )
        """No files to watch, but the backend tells a change cheaply (a database)."""
        self._cache: tuple[Hashable, float, dict[str, list[Run]]] | None = None
        self._unfinished_counts: dict[str, int] = {}
        """Unfinished runs by status, keyless ones too, as of the latest scan."""
        self._order = NaturalOrder()
        self._derived: dict[str, object] = {}
        """Computed from one read of storage (sorted keys, counts); emptied at the next."""
        self.closed = False
        """Set when the storage was closed: nothing more to show."""

    def now(self) -> float:
        """The wall clock; or, with ``stored_clock``, the newest time seen in storage.

        A store written on a simulated clock (``keyflow demo``'s) then reads as of its
        last activity, instead of thousands of hours ago.
        """
        if self.stored_clock and self.catalog.latest is not None:
            return self.catalog.latest
        return time.time()

    @property
    def alive(self) -> bool:
        """True until the storage is closed."""
        return not self.closed

    async def _token(self) -> Hashable:
        """Changes whenever the storage does (a new object each time when unknown)."""
        if self._files:
            return file_token(self._files)
        if self._asks_token:
            try:
                return await self.backend.change_token()
            except StorageError:
                return object()  # the scan that follows tells what is wrong
        return object()

    def _fresh(self, token: Hashable) -> bool:
        if self._cache is None:
            return False
        cached_token, at, _ = self._cache
        age = time.monotonic() - at
        if not self._files and not self._asks_token:
            return age < self.poll_seconds / 2  # cannot tell: one scan per half poll
        return cached_token == token and age < self.RECHECK_SECONDS

    async def _unfinished_by_key(self) -> dict[str, list[Run]]:
        # One scan per change of the files, shared by every widget that asks meanwhile.
        token = await self._token()
        if self._cache is not None and self._fresh(token):
            return self._cache[2]
        unfinished: list[Run] = []
        counts: dict[str, int] = {}
        for status in UNFINISHED:
            found = await self.backend.list_runs(RunQuery(status=status, limit=10**9))
            counts[status.value] = len(found)
            unfinished.extend(found)
        await self.catalog.refresh(unfinished)
        by_key: dict[str, list[Run]] = {}
        for run in unfinished:
            if run.concurrency_key is not None:
                by_key.setdefault(run.concurrency_key, []).append(run)
        self._cache = (token, time.monotonic(), by_key)
        self._unfinished_counts = counts
        self._derived = {}
        return by_key

    async def _sorted_keys(self) -> list[str]:
        by_key = await self._unfinished_by_key()
        found = self._derived.get("keys")
        if not isinstance(found, list):
            found = self._derived["keys"] = self._order.sorted(self.catalog.keys | by_key.keys())
        return found

    async def refresh(self) -> None:
        """Catch up with the file (once per change, shared by every page and widget)."""
        await self._unfinished_by_key()

    def _lane(self, key: str, runs: list[Run], paused: Paused) -> LaneSnapshot:
        coalesced = self.catalog.key_coalesced.get(key, 0)
        return stored_lane_snapshot(key, runs, coalesced=coalesced, paused=key in paused.keys)

    async def counts(self) -> Counts:
        """Counts from storage (read again only when the files changed)."""
        by_key = await self._unfinished_by_key()
        found = self._derived.get("counts")
        if isinstance(found, Counts):
            return found
        by_status = {  # the unfinished ones as the scan found them; the finished counted
            s.value: self._unfinished_counts[s.value]
            if s in UNFINISHED
            else await self.backend.count_runs(RunQuery(status=s))
            for s in ALL_STATUSES
        }
        states = dict.fromkeys(LANE_STATES, 0)
        for runs in by_key.values():
            states[_state(runs)] += 1
        states["idle"] += len(self.catalog.keys - by_key.keys())  # keys with only finished runs
        finished = sum(by_status[s.value] for s in ALL_STATUSES if s not in UNFINISHED)
        counts = Counts(by_status, states, finished, self.catalog.coalesced_total)
        self._derived["counts"] = counts
        return counts

    async def lane_rows(
        self, filters: LaneFilters, offset: int, limit: int
    ) -> tuple[list[LaneRow], int]:
        """Lanes rebuilt from the unfinished runs in storage."""
        by_key = await self._unfinished_by_key()
        paused = await self.paused()
        keys = [k for k in await self._sorted_keys() if k.startswith(filters.prefix)]
        if filters.state is None and filters.sort == "key":
            page = keys[offset : offset + limit]
            return [self._row(key, by_key.get(key, []), paused) for key in page], len(keys)
        every = self._derived.get("rows")
        if not isinstance(every, dict):
            every = self._derived["rows"] = {}
        for key in keys:  # each row built once per change of the file
            if key not in every:
                every[key] = self._row(key, by_key.get(key, []), paused)
        rows: list[LaneRow] = [every[key] for key in keys]
        if filters.state is not None:
            rows = [row for row in rows if row.lane.state == filters.state]
        if filters.sort == "coalesced":
            rows.sort(key=lambda row: -row.lane.coalesced)
        elif filters.sort == "wait":
            rows.sort(key=lambda row: row.oldest_waiting_since or float("inf"))
        return rows[offset : offset + limit], len(rows)

    def _row(self, key: str, runs: list[Run], paused: Paused) -> LaneRow:
        lane = self._lane(key, runs, paused)
        by_id = {r.id: r for r in runs}
        running = tuple(by_id[i] for i in lane.running)
        if not lane.waiting:
            return LaneRow(lane, running, None)
        following = by_id[lane.waiting[0]]
        return LaneRow(lane, running, following.created_at, following.job)

    async def lane(self, key: str) -> LaneSnapshot:
        """One lane rebuilt from storage (paused as stored)."""
        runs = (await self._unfinished_by_key()).get(key, [])
        return self._lane(key, runs, await self.paused())

    async def has_key(self, key: str) -> bool:
        """Any run of ``key`` in storage, or a stored pause of it."""
        if key in (await self.paused()).keys:
            return True
        return bool(await self.backend.list_runs(RunQuery(key=key, limit=1)))

    @staticmethod
    def _query(filters: RunFilters, offset: int = 0, limit: int = 0) -> RunQuery:
        return RunQuery(
            job=filters.job or None,
            status=RunStatus(filters.status) if filters.status else None,
            key=filters.key or None,
            labels=filters.labels,
            text=filters.text or None,
            key_prefix=filters.key_prefix or None,
            created_after=filters.created_after,
            created_before=filters.created_before,
            finished_after=filters.finished_after,
            finished_before=filters.finished_before,
            limit=limit,
            offset=offset,
        )

    async def find_runs(self, filters: RunFilters, offset: int, limit: int) -> list[Run]:
        """Runs from storage."""
        return await self.backend.list_runs(self._query(filters, offset, limit))

    async def count_runs(self, filters: RunFilters) -> int:
        """How many runs match, in storage."""
        return await self.backend.count_runs(self._query(filters))

    async def run(self, run_id: str) -> Run | None:
        """One run from storage."""
        return await self.backend.get_run(run_id)

    async def run_timings(self, job: str, since: float, cap: int) -> list[RunTiming]:
        """From storage (SQLite: its job index, a few columns)."""
        return await self.backend.run_timings(job, since, limit=cap)

    def jobs(self) -> list[str]:
        """The jobs of the stored runs (as of the latest poll)."""
        return self._order.sorted(self.catalog.jobs)

    async def paused(self) -> Paused:
        """What the writer holds back, as stored (read again only when the files changed)."""
        await self._unfinished_by_key()
        found = self._derived.get("paused")
        if not isinstance(found, Paused):
            pairs = await self.backend.paused()
            found = self._derived["paused"] = Paused(
                frozenset(name for kind, name in pairs if kind == "job"),
                frozenset(name for kind, name in pairs if kind == "key"),
            )
        return found

    async def changes(self) -> AsyncIterator[Changes]:
        """A poll: every ``poll_seconds``, "everything" when the files changed."""
        seen = await self._token()
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.poll_seconds)  # polling a file another process writes
            token = await self._token()
            if token != seen or time.monotonic() - last >= self.RECHECK_SECONDS:
                seen, last = token, time.monotonic()
                yield Changes(everything=True)


def _state(runs: list[Run]) -> str:
    """The lane state of a key's unfinished runs, without building its snapshot."""
    holding = sum(1 for r in runs if slot_held(r.status, r.attempt))
    return lane_state(holding, sum(1 for r in runs if r.status is RunStatus.QUEUED))


@asynccontextmanager
async def opened(
    backend: StorageBackend, *, stored_clock: bool = False
) -> AsyncIterator[StorageSource]:
    """A :class:`StorageSource` over ``backend``, opened and closed around the block."""
    await backend.open()
    source = StorageSource(backend, stored_clock=stored_clock)
    try:
        yield source
    finally:
        source.closed = True
        await backend.close()
