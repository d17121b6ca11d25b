"""Where the dashboard reads from: a running :class:`~keyflow.Keyflow`, or a storage file.

The views ask a :class:`DashboardSource` for plain data (runs, lane rows, counts) and
never touch the scheduler's internals, so the same pages serve an embedded dashboard
(:class:`KeyflowSource`, live through the event stream, with actions) and ``keyflow
dashboard --storage URL`` watching another process's file
(:class:`~keyflow.web.storage_source.StorageSource`, read-only, live by re-reading it).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Literal

from ..clock import Clock
from ..coalesce import CoalesceOption, parse_coalesce
from ..errors import KeyflowError
from ..jobs import DEFAULT, Default
from ..queries import RunFilters as QueryFilters
from ..runs import JSONObject, Run, RunStatus, TriggerResult
from ..scheduler import Keyflow
from ..stats import LaneSnapshot, Paused
from ..storage_backends.summaries import RunTiming
from ..watch import Changes
from .instants import format_instant
from .natural import NaturalOrder

UNFINISHED = (RunStatus.SCHEDULED, RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING)
ALL_STATUSES = tuple(RunStatus)
LANE_STATES = ("idle", "running", "running+queued")
LaneSort = Literal["key", "wait", "coalesced"]
LANE_SORTS: tuple[LaneSort, ...] = ("key", "wait", "coalesced")
"""Natural key order; longest waiting first; most coalesced triggers first."""
PauseKind = Literal["job", "key"]
"""What a pause holds back: a job's runs, or a lane's (a concurrency key's)."""
NOTHING_PAUSED = Paused(frozenset(), frozenset())


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
    next_job: str | None = None
    """The job of the run that starts next (the longest-waiting one), if any."""

    @property
    def jobs(self) -> frozenset[str]:
        """The jobs of the runs holding its slots and of the one starting next."""
        found = {run.job for run in self.running}
        if self.next_job is not None:
            found.add(self.next_job)
        return frozenset(found)


@dataclass(frozen=True, slots=True)
class LaneFilters:
    """The lanes page's filters and order."""

    prefix: str = ""
    state: str | None = None
    """One of :data:`LANE_STATES`, or None for all."""
    sort: LaneSort = "key"


TIME_FILTERS = ("created_after", "created_before", "finished_after", "finished_before")
"""The time range filters (epoch seconds; ``*_after`` inclusive, ``*_before`` exclusive)."""


@dataclass(frozen=True, slots=True)
class RunFilters:
    """The runs page's filters (all optional, combined)."""

    job: str | None = None
    status: str | None = None
    key: str | None = None
    text: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    """Every ``(name, value)`` must match."""
    key_prefix: str | None = None
    """The run's key starts with this (keyless runs never match)."""
    created_after: float | None = None
    created_before: float | None = None
    finished_after: float | None = None
    """Only finished runs match a ``finished_*`` filter."""
    finished_before: float | None = None

    def as_query(self) -> dict[str, str]:
        """The filters that are set, for URLs (times as ISO text, UTC)."""
        out = {k: v for k, v in self._pairs() if v}
        if self.labels:
            out["labels"] = ", ".join(f"{k}={v}" for k, v in self.labels)
        for name in TIME_FILTERS:
            at = getattr(self, name)
            if at is not None:
                out[name] = format_instant(at)
        return out

    def _pairs(self) -> tuple[tuple[str, str | None], ...]:
        return (
            *(("job", self.job), ("status", self.status), ("key", self.key)),
            *(("key_prefix", self.key_prefix), ("q", self.text)),
        )


class DashboardSource(ABC):
    """The dashboard's view of the runs, lanes and counters."""

    read_only: bool = True
    """True when actions (trigger, cancel, retrigger) are impossible."""

    def now(self) -> float:
        """The time the pages show ages and timelines against (epoch seconds)."""
        return time.time()

    @abstractmethod
    async def counts(self) -> Counts:
        """The overview's numbers."""

    @abstractmethod
    async def lane_rows(
        self, filters: LaneFilters, offset: int, limit: int
    ) -> tuple[list[LaneRow], int]:
        """A page of lanes in the filters' order, and how many keys match."""

    @abstractmethod
    async def lane(self, key: str) -> LaneSnapshot:
        """One key's lane."""

    @abstractmethod
    async def has_key(self, key: str) -> bool:
        """Does ``key`` have a lane or any stored run?"""

    @abstractmethod
    async def find_runs(self, filters: RunFilters, offset: int, limit: int) -> list[Run]:
        """A page of matching runs, newest first."""

    @abstractmethod
    async def count_runs(self, filters: RunFilters) -> int:
        """How many runs match."""

    async def runs(self, filters: RunFilters, offset: int, limit: int) -> tuple[list[Run], int]:
        """A page of matching runs, newest first, and how many match."""
        return await self.find_runs(filters, offset, limit), await self.count_runs(filters)

    async def count_runs_capped(self, filters: RunFilters, cap: int) -> tuple[int, bool]:
        """How many runs match, counting no further than ``cap``: ``(cap, True)`` when more.

        Free text and labels make storage scan every run: counting them all costs as
        much as a full scan, while finding the ``cap + 1``-th match of a common word
        stops early. Filters storage answers from an index are counted exactly.
        """
        if not filters.text and not filters.labels:
            return await self.count_runs(filters), False
        if await self.find_runs(filters, cap, 1):
            return cap, True
        return await self.count_runs(filters), False

    @abstractmethod
    async def run_timings(self, job: str, since: float, cap: int) -> list[RunTiming]:
        """The times of ``job``'s runs created at ``since`` or later, newest first.

        At most ``cap``: what job statistics read (a few columns, not whole runs).
        """

    @abstractmethod
    async def run(self, run_id: str) -> Run | None:
        """One run."""

    @abstractmethod
    def jobs(self) -> list[str]:
        """Registered job names (for the trigger form and the runs filter)."""

    async def paused(self) -> Paused:
        """The jobs and lanes paused now (none, for a source that cannot tell)."""
        return NOTHING_PAUSED

    @abstractmethod
    def changes(self) -> AsyncIterator[Changes]:
        """Batches of changes, as they come (a live stream, or a poll)."""

    @property
    def alive(self) -> bool:
        """False once the source can show nothing new (a stopped scheduler)."""
        return True

    async def refresh(self) -> None:  # noqa: B027  # optional: most sources are live
        """Catch up before a page is rendered (a polled source re-reads what changed)."""

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

    async def set_paused(self, kind: PauseKind, name: str, paused: bool) -> None:
        """Pause (or resume) job or lane ``name`` (only when not :attr:`read_only`)."""
        raise KeyflowError("this dashboard is read-only")


def _query(filters: RunFilters) -> QueryFilters:
    """``filters`` as ``Keyflow.list_runs`` takes them."""
    f = filters
    return QueryFilters(
        job=f.job,
        status=f.status,
        concurrency_key=f.key,
        key_prefix=f.key_prefix,
        labels=dict(f.labels) or None,
        text=f.text,
        created_after=f.created_after,
        created_before=f.created_before,
        finished_after=f.finished_after,
        finished_before=f.finished_before,
    )


def lanes_by_state(lanes: list[LaneSnapshot]) -> dict[str, int]:
    """How many of ``lanes`` are in each state."""
    out = dict.fromkeys(LANE_STATES, 0)
    for lane in lanes:
        out[lane.state] += 1
    return out


def scheduler_clock(kf: Keyflow) -> Clock:
    """The clock ``kf`` reads time from (``Keyflow.clock``)."""
    return kf.clock


class KeyflowSource(DashboardSource):
    """A scheduler running in this process: live events, and actions unless read-only.

    Args:
        kf: the scheduler.
        read_only: refuse the actions.
        clock: the time ages, timelines and rates are shown against: the scheduler's
            clock (a virtual or simulated one included), never the wall clock behind
            its back. Default: the scheduler's own, else the system clock.
    """

    def __init__(self, kf: Keyflow, *, read_only: bool = False, clock: Clock | None = None):
        self.kf = kf
        self.read_only = read_only
        self._clock = clock or scheduler_clock(kf)
        self._order = NaturalOrder()

    def now(self) -> float:
        """The scheduler's time."""
        return self._clock.now() if self._clock is not None else time.time()

    @property
    def alive(self) -> bool:
        """True while the scheduler runs."""
        return self.kf.running

    async def counts(self) -> Counts:
        """Counters straight from the scheduler (finished runs: since it started)."""
        kf = self.kf
        stats = await kf.get_statistics()
        by_status = dict(stats.unfinished)
        by_status.update(completed=stats.completed, failed=stats.failed, cancelled=stats.cancelled)
        return Counts(
            by_status=by_status,
            lanes_by_state=await kf.get_lane_states(),
            finished_total=stats.completed + stats.failed + stats.cancelled,
            coalesced_total=stats.triggers.coalesced,
            workers=(stats.workers_busy, stats.workers),
        )

    async def lane_rows(
        self, filters: LaneFilters, offset: int, limit: int
    ) -> tuple[list[LaneRow], int]:
        """Lanes from memory; the running and oldest waiting runs looked up per row."""
        kf = self.kf
        prefix = filters.prefix or None
        if filters.state is None and filters.sort == "key" and not kf.shared:  # a page only
            names = self._order.sorted(kf.key_names(prefix))
            page = [await kf.get_lane(key) for key in names[offset : offset + limit]]
            return [await self._row(lane) for lane in page], len(names)
        lanes = await kf.list_lanes(prefix)
        natural = self._order.key
        lanes.sort(key=lambda lane: natural(lane.key))
        if filters.state is not None:
            lanes = [lane for lane in lanes if lane.state == filters.state]
        if filters.sort == "coalesced":
            lanes.sort(key=lambda lane: -lane.coalesced)  # stable: natural order within
        elif filters.sort == "wait":
            since: dict[str, float] = {}
            for lane in lanes:
                oldest = await self._oldest(lane)
                if oldest is not None:
                    since[lane.key] = oldest
            lanes.sort(key=lambda lane: since.get(lane.key, float("inf")))
        return [await self._row(lane) for lane in lanes[offset : offset + limit]], len(lanes)

    async def _oldest(self, lane: LaneSnapshot) -> float | None:
        run = await self._next(lane)
        return run.created_at if run else None

    async def _next(self, lane: LaneSnapshot) -> Run | None:
        return await self.kf.get_run(lane.waiting[0]) if lane.waiting else None

    async def _row(self, lane: LaneSnapshot) -> LaneRow:
        running = tuple(r for r in [await self.kf.get_run(i) for i in lane.running] if r)
        following = await self._next(lane)
        if following is None:
            return LaneRow(lane, running, None)
        return LaneRow(lane, running, following.created_at, following.job)

    async def lane(self, key: str) -> LaneSnapshot:
        """The lane (from memory, for the scheduler in this process)."""
        return await self.kf.get_lane(key)

    async def has_key(self, key: str) -> bool:
        """A lane in memory, a pause of it, or runs in storage."""
        lane = await self.kf.get_lane(key)
        if lane.running or lane.waiting or lane.scheduled or lane.coalesced or lane.paused:
            return True
        return bool(await self.kf.list_runs(concurrency_key=key, limit=1))

    async def find_runs(self, filters: RunFilters, offset: int, limit: int) -> list[Run]:
        """Runs from storage, with live state for unfinished ones."""
        return await self.kf.list_runs(limit=limit, offset=offset, **_query(filters))

    async def count_runs(self, filters: RunFilters) -> int:
        """How many runs match, in storage."""
        return await self.kf.count_runs(**_query(filters))

    async def run(self, run_id: str) -> Run | None:
        """One run."""
        return await self.kf.get_run(run_id)

    async def run_timings(self, job: str, since: float, cap: int) -> list[RunTiming]:
        """From the scheduler's storage."""
        return await self.kf.run_timings(job, since=since, limit=cap)

    def jobs(self) -> list[str]:
        """Registered jobs."""
        return self._order.sorted(self.kf.jobs)

    async def paused(self) -> Paused:
        """What the scheduler holds back now.

        On shared storage: every process's pauses (the scheduler follows the database's
        notices of them).
        """
        return self.kf.paused()

    async def changes(self) -> AsyncIterator[Changes]:
        """What changed, batched: whatever happened while the last batch was used.

        One :meth:`Keyflow.changes` watch per stream: the scheduler's hub is the one
        fan-out (it gathers the changed keys once, whatever the number of watches, and
        hands them to each watch once per turn of the loop). Ends when the scheduler
        stops, or when the stream is closed (which closes its watch).
        """
        async with self.kf.changes() as watch:
            async for changes in watch:
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

    async def set_paused(self, kind: PauseKind, name: str, paused: bool) -> None:
        """Pause or resume through the scheduler (written to storage before it returns)."""
        self._writable()
        if kind == "job":
            await (self.kf.pause(job=name) if paused else self.kf.resume(job=name))
        else:
            await (self.kf.pause(key=name) if paused else self.kf.resume(key=name))

    def _writable(self) -> None:
        if self.read_only:
            raise KeyflowError("this dashboard is read-only")
