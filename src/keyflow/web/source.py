"""Where the dashboard reads from: a running :class:`~keyflow.Keyflow`, or a storage file.

The views ask a :class:`DashboardSource` for plain data (runs, lane rows, counts) and
never touch the scheduler's internals, so the same pages serve an embedded dashboard
(:class:`KeyflowSource`, live through the event stream, with actions) and ``keyflow
dashboard --storage URL`` watching another process's file (:class:`StorageSource`,
read-only, live by re-reading the storage).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..coalesce import CoalesceOption, parse_coalesce
from ..errors import KeyflowError
from ..jobs import DEFAULT, Default
from ..runs import JSONObject, Run, RunStatus, TriggerResult
from ..scheduler import Keyflow
from ..stats import LaneSnapshot
from ..storage_backends import RunQuery, StorageBackend
from ..watch import Changes, ChangeWatch

UNFINISHED = (RunStatus.SCHEDULED, RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING)
ALL_STATUSES = tuple(RunStatus)


@dataclass(frozen=True, slots=True)
class Counts:
    """What the overview shows at a moment."""

    by_status: Mapping[str, int]
    """Runs by status (finished ones: as far as storage retains them)."""
    lanes_by_state: Mapping[str, int]
    """Keys by lane state."""
    finished_total: int
    """Runs finished so far (a counter: rates are its differences)."""
    coalesced_total: int
    """Triggers coalesced so far."""
    workers: tuple[int, int] | None = None
    """(busy, total) workers, when the scheduler runs in this process."""


@dataclass(frozen=True, slots=True)
class LaneRow:
    """One row of the lanes table."""

    lane: LaneSnapshot
    running: tuple[Run, ...]
    """The runs holding its slots (with their progress)."""
    oldest_waiting_since: float | None
    """When the longest-waiting queued run was created."""


@dataclass(frozen=True, slots=True)
class RunFilters:
    """The runs page's filters (all optional, combined)."""

    job: str | None = None
    status: str | None = None
    key: str | None = None
    text: str | None = None

    def as_query(self) -> dict[str, str]:
        """The filters that are set, for URLs."""
        return {k: v for k, v in self._pairs() if v}

    def _pairs(self) -> tuple[tuple[str, str | None], ...]:
        return (("job", self.job), ("status", self.status), ("key", self.key), ("q", self.text))


class _Broadcast:
    """One change watch on the scheduler, fanned out to every live stream of the app.

    The scheduler pays for one watch however many pages are open; the watch exists
    only while at least one stream listens.
    """

    def __init__(self, kf: Keyflow) -> None:
        self.kf = kf
        self.inboxes: list[ChangeWatch] = []
        self.task: asyncio.Task[None] | None = None

    async def listen(self) -> AsyncIterator[Changes]:
        inbox = ChangeWatch()
        self.inboxes.append(inbox)
        if self.task is None:
            self.task = asyncio.ensure_future(self._pump())
        try:
            async for changes in inbox:
                yield changes
        finally:
            self.inboxes.remove(inbox)
            if not self.inboxes and self.task is not None:
                self.task.cancel()
                self.task = None

    async def _pump(self) -> None:
        async with self.kf.changes() as watch:
            async for changes in watch:
                for inbox in self.inboxes:
                    inbox.absorb(changes)


class DashboardSource(ABC):
    """The dashboard's view of the runs, lanes and counters."""

    read_only: bool = True
    """True when actions (trigger, cancel, retrigger) are impossible."""

    @abstractmethod
    async def counts(self) -> Counts:
        """The overview's numbers."""

    @abstractmethod
    async def lane_rows(self, prefix: str, offset: int, limit: int) -> tuple[list[LaneRow], int]:
        """A page of lanes sorted by key, and how many keys match ``prefix``."""

    @abstractmethod
    async def lane(self, key: str) -> LaneSnapshot:
        """One key's lane."""

    @abstractmethod
    async def runs(self, filters: RunFilters, offset: int, limit: int) -> tuple[list[Run], int]:
        """A page of matching runs, newest first, and how many match."""

    @abstractmethod
    async def run(self, run_id: str) -> Run | None:
        """One run."""

    @abstractmethod
    def jobs(self) -> list[str]:
        """Registered job names (for the trigger form and the runs filter)."""

    @abstractmethod
    def changes(self) -> AsyncIterator[Changes]:
        """Batches of changes, as they come (a live stream, or a poll)."""

    async def trigger(
        self, job: str, input: JSONObject, key: str | None, coalesce: str | None
    ) -> TriggerResult:
        """Trigger a run (only when not :attr:`read_only`)."""
        raise KeyflowError("this dashboard is read-only")

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run (only when not :attr:`read_only`)."""
        raise KeyflowError("this dashboard is read-only")

    async def retrigger(self, run_id: str) -> TriggerResult:
        """Trigger a run's job again (only when not :attr:`read_only`)."""
        raise KeyflowError("this dashboard is read-only")


def _lanes_by_state(lanes: list[LaneSnapshot]) -> dict[str, int]:
    out = {"idle": 0, "running": 0, "running+queued": 0}
    for lane in lanes:
        out[lane.state] += 1
    return out


class KeyflowSource(DashboardSource):
    """A scheduler running in this process: live events, and actions unless read-only."""

    def __init__(self, kf: Keyflow, *, read_only: bool = False) -> None:
        self.kf = kf
        self.read_only = read_only
        self._broadcast = _Broadcast(kf)

    async def counts(self) -> Counts:
        """Counters straight from the scheduler (finished runs: since it started)."""
        kf = self.kf
        stats = kf.statistics()
        by_status = dict(stats.unfinished)
        by_status.update(completed=stats.completed, failed=stats.failed, cancelled=stats.cancelled)
        return Counts(
            by_status=by_status,
            lanes_by_state=kf.lane_states(),
            finished_total=stats.completed + stats.failed + stats.cancelled,
            coalesced_total=stats.triggers.coalesced,
            workers=(stats.workers_busy, stats.workers),
        )

    async def lane_rows(self, prefix: str, offset: int, limit: int) -> tuple[list[LaneRow], int]:
        """Lanes from memory; the running and oldest waiting runs looked up per row."""
        names = self.kf.key_names(prefix or None)
        rows = []
        for key in names[offset : offset + limit]:  # snapshots for this page only
            lane = self.kf.lane(key)
            running = tuple(r for r in [await self.kf.get_run(i) for i in lane.running] if r)
            oldest = await self.kf.get_run(lane.waiting[0]) if lane.waiting else None
            rows.append(LaneRow(lane, running, oldest.created_at if oldest else None))
        return rows, len(names)

    async def lane(self, key: str) -> LaneSnapshot:
        """The lane, from memory."""
        return self.kf.lane(key)

    async def runs(self, filters: RunFilters, offset: int, limit: int) -> tuple[list[Run], int]:
        """Runs from storage, with live state for unfinished ones."""
        kf, f = self.kf, filters
        found = await kf.list_runs(
            job=f.job,
            status=f.status,
            concurrency_key=f.key,
            text=f.text,
            limit=limit,
            offset=offset,
        )
        total = await kf.count_runs(job=f.job, status=f.status, concurrency_key=f.key, text=f.text)
        return found, total

    async def run(self, run_id: str) -> Run | None:
        """One run."""
        return await self.kf.get_run(run_id)

    def jobs(self) -> list[str]:
        """Registered jobs."""
        return sorted(self.kf.jobs)

    async def changes(self) -> AsyncIterator[Changes]:
        """What changed, batched: whatever happened while the last batch was used."""
        async for changes in self._broadcast.listen():
            yield changes

    async def trigger(
        self, job: str, input: JSONObject, key: str | None, coalesce: str | None
    ) -> TriggerResult:
        """Trigger through the scheduler.

        ``key`` None: the job's; ``coalesce`` None: the job's, ``"none"``: no coalescing,
        else a strategy name.
        """
        self._writable()
        option: CoalesceOption | Default = DEFAULT
        if coalesce == "none":
            option = None
        elif coalesce:
            option = parse_coalesce(coalesce)
        return await self.kf.trigger(
            job, input, concurrency_key=key if key else DEFAULT, coalesce=option
        )

    async def cancel(self, run_id: str) -> Run:
        """Cancel through the scheduler."""
        self._writable()
        return await self.kf.cancel(run_id)

    async def retrigger(self, run_id: str) -> TriggerResult:
        """Retrigger through the scheduler."""
        self._writable()
        return await self.kf.retrigger(run_id)

    def _writable(self) -> None:
        if self.read_only:
            raise KeyflowError("this dashboard is read-only")


class StorageSource(DashboardSource):
    """A storage file another process writes: read-only, refreshed by polling."""

    read_only = True

    def __init__(self, backend: StorageBackend, *, poll_seconds: float = 1.0) -> None:
        self.backend = backend
        self.poll_seconds = poll_seconds
        self._cache: tuple[float, dict[str, list[Run]]] | None = None

    async def _unfinished_by_key(self) -> dict[str, list[Run]]:
        # One scan per poll interval, shared by every widget that asks meanwhile.
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < self.poll_seconds / 2:
            return self._cache[1]
        by_key: dict[str, list[Run]] = {}
        for status in UNFINISHED:
            query = RunQuery(status=status, limit=1_000_000)
            for run in await self.backend.list_runs(query):
                if run.concurrency_key is not None:
                    by_key.setdefault(run.concurrency_key, []).append(run)
        for runs in by_key.values():
            runs.sort(key=lambda r: (r.created_at, r.id))
        self._cache = (now, by_key)
        return by_key

    def _lane(self, key: str, runs: list[Run]) -> LaneSnapshot:
        holding = [
            r
            for r in runs
            if r.status in (RunStatus.PENDING, RunStatus.RUNNING)
            or (r.status is RunStatus.SCHEDULED and r.attempt > 0)
        ]
        queued = [r for r in runs if r.status is RunStatus.QUEUED]
        waiting = sorted(queued, key=lambda r: (r.due_at, r.created_at))
        scheduled = [r for r in runs if r.status is RunStatus.SCHEDULED and r.attempt == 0]
        state = "idle" if not holding else ("running+queued" if waiting else "running")
        return LaneSnapshot(
            key=key,
            state=state,  # type: ignore[arg-type]
            limit=max(1, len(holding)),
            running=tuple(r.id for r in holding),
            waiting=tuple(r.id for r in waiting),
            scheduled=tuple(r.id for r in scheduled),
            coalesced=sum(r.trigger_count - 1 for r in runs),
        )

    async def counts(self) -> Counts:
        """Counts from storage."""
        by_status = {
            s.value: await self.backend.count_runs(RunQuery(status=s)) for s in ALL_STATUSES
        }
        lanes = [self._lane(k, v) for k, v in (await self._unfinished_by_key()).items()]
        finished = sum(by_status[s.value] for s in ALL_STATUSES if s not in UNFINISHED)
        return Counts(by_status, _lanes_by_state(lanes), finished, 0)

    async def lane_rows(self, prefix: str, offset: int, limit: int) -> tuple[list[LaneRow], int]:
        """Lanes rebuilt from the unfinished runs in storage."""
        by_key = await self._unfinished_by_key()
        keys = sorted(k for k in by_key if k.startswith(prefix))
        rows = []
        for key in keys[offset : offset + limit]:
            runs = by_key[key]
            lane = self._lane(key, runs)
            by_id = {r.id: r for r in runs}
            oldest = by_id[lane.waiting[0]].created_at if lane.waiting else None
            rows.append(LaneRow(lane, tuple(by_id[i] for i in lane.running), oldest))
        return rows, len(keys)

    async def lane(self, key: str) -> LaneSnapshot:
        """One lane rebuilt from storage."""
        return self._lane(key, (await self._unfinished_by_key()).get(key, []))

    async def runs(self, filters: RunFilters, offset: int, limit: int) -> tuple[list[Run], int]:
        """Runs from storage."""
        query = RunQuery(
            job=filters.job or None,
            status=RunStatus(filters.status) if filters.status else None,
            key=filters.key or None,
            text=filters.text or None,
            limit=limit,
            offset=offset,
        )
        found = await self.backend.list_runs(query)
        return found, await self.backend.count_runs(query)

    async def run(self, run_id: str) -> Run | None:
        """One run from storage."""
        return await self.backend.get_run(run_id)

    def jobs(self) -> list[str]:
        """Jobs are not known to a storage file; the runs filter takes free text."""
        return []

    async def changes(self) -> AsyncIterator[Changes]:
        """A poll: every ``poll_seconds``, everything may have changed."""
        while True:
            await asyncio.sleep(self.poll_seconds)  # polling a file another process writes
            self._cache = None
            yield Changes(everything=True)


@asynccontextmanager
async def opened(backend: StorageBackend) -> AsyncIterator[StorageSource]:
    """A :class:`StorageSource` over ``backend``, opened and closed around the block."""
    await backend.open()
    try:
        yield StorageSource(backend)
    finally:
        await backend.close()
