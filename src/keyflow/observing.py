"""The scheduler's gauges: lanes, statistics, pauses, events and change watches.

A layer of :class:`keyflow.Keyflow` (see :mod:`keyflow.scheduler`).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from .errors import ConfigurationError
from .events import Subscription
from .jobs import check_name
from .jsonvalue import safe_repr
from .options import count
from .runs import RunStatus
from .stats import LaneSnapshot, Paused, Statistics, TriggerCounts
from .triggering import Triggering
from .watch import ChangeWatch


class Observing(Triggering):
    """Shows lanes and counters, pauses and resumes, publishes events."""

    def keys(self, prefix: str | None = None) -> list[LaneSnapshot]:
        """Lane snapshots, sorted by key: every key with unfinished runs, and recent idle ones."""
        core = self._core
        return [core.lane_snapshot(k) for k in self.key_names(prefix)]

    def key_names(self, prefix: str | None = None) -> list[str]:
        """The keys :meth:`keys` would return, sorted, without building their snapshots."""
        if prefix is not None and not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a string or None, got {safe_repr(prefix)}")
        core = self._core
        names = set(core.lanes) | set(core.key_coalesced)
        if prefix:
            names = {k for k in names if k.startswith(prefix)}
        return sorted(names)

    def lane_states(self) -> dict[str, int]:
        """How many of the :meth:`keys` are ``idle``, ``running`` and ``running+queued``."""
        core = self._core
        states = [lane.state for lane in core.lanes.values()]  # state.lane_state's rule
        running = states.count("running")
        queued = states.count("running+queued")
        idle = len(set(core.lanes) | set(core.key_coalesced)) - running - queued
        return {"idle": idle, "running": running, "running+queued": queued}

    def lane(self, key: str) -> LaneSnapshot:
        """The snapshot of one key's lane (idle when it has no unfinished run).

        Raises:
            ConfigurationError: ``key`` is not a string.
        """
        if not isinstance(key, str):
            raise ConfigurationError(f"key must be a string, got {safe_repr(key)}")
        return self._core.lane_snapshot(key)

    def statistics(self) -> Statistics:
        """Counters and gauges, as a frozen snapshot."""
        core = self._core
        c = core.counters
        unfinished = {
            s.value: core.status_counts[s.ordinal]
            for s in (RunStatus.SCHEDULED, RunStatus.QUEUED, RunStatus.PENDING, RunStatus.RUNNING)
        }
        error = core.pipeline.last_error
        return Statistics(
            triggers=TriggerCounts(c.created, c.queued, c.coalesced, c.idempotent),
            unfinished=MappingProxyType(unfinished),
            started=c.started,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            retried=c.retried,
            interrupted=c.interrupted,
            lanes=len(core.lanes),
            lanes_busy=sum(1 for lane in core.lanes.values() if lane.holders),
            workers=self._pool.size,
            workers_busy=self._pool.busy,
            events_published=self._hub.published,
            events_dropped=self._hub.dropped,
            storage_batches=core.pipeline.batches_written,
            storage_error=None if error is None else repr(error),
            paused=self.paused(),
        )

    async def pause(self, *, job: str | None = None, key: str | None = None) -> None:
        """Pause a job or a lane: none of its runs starts until :meth:`resume`.

        Triggers are accepted and coalesce as usual (a paused lane gathers its follow-up
        run); runs already executing go on. A run of a paused job that reaches the head
        of its lane holds the lane (order and exclusion hold). Written to storage: a
        restart keeps the pause. Give exactly one of ``job`` and ``key``.

        Raises:
            ConfigurationError: neither or both of ``job`` and ``key``, or not a name.
            ReadOnlyError: the storage is open read-only.
            SchedulerNotRunningError: not started, or stopped.
        """
        await self._set_paused(job, key, paused=True)

    async def resume(self, *, job: str | None = None, key: str | None = None) -> None:
        """Undo :meth:`pause` (the same arguments); held-back runs start again.

        Raises:
            ConfigurationError: neither or both of ``job`` and ``key``, or not a name.
            ReadOnlyError: the storage is open read-only.
            SchedulerNotRunningError: not started, or stopped.
        """
        await self._set_paused(job, key, paused=False)

    async def _set_paused(self, job: str | None, key: str | None, *, paused: bool) -> None:
        if (job is None) == (key is None):
            raise ConfigurationError("give exactly one of job= and key=")
        kind, name = ("job", job) if job is not None else ("key", key)
        check_name(name, kind)
        self._check_accepting()
        assert name is not None
        self._core.set_paused(kind, name, paused)
        await self._core.pipeline.barrier()

    def paused(self) -> Paused:
        """The jobs and lanes paused now."""
        core = self._core
        return Paused(frozenset(core.paused_jobs), frozenset(core.paused_keys))

    def events(self, buffer: int | None = None) -> Subscription:
        """Subscribe to events from now on (an async iterator; ``async with`` closes it).

        Args:
            buffer: events kept for a slow reader before the oldest are dropped.

        After ``stop()`` the subscription is closed at once (iteration ends).

        Raises:
            ConfigurationError: ``buffer`` is not an integer >= 1.
        """
        if buffer is not None:
            count(buffer, "buffer", minimum=1, maximum=10_000_000)
        return self._hub.subscribe(buffer)

    def changes(self) -> ChangeWatch:
        """Watch for changes without events: ``async for changes in kf.changes()``.

        Each :class:`~keyflow.watch.Changes` says which keys had runs change, and
        whether a trigger was coalesced, since the previous one; cheap for the scheduler
        whatever the rate (no event is built). ``async with`` (or ``close()``) ends it.
        """
        return self._hub.watch()

    # -- async reads -------------------------------------------------------------
    # The lane and counter reads a coordinator over a shared database answers from the
    # database (see docs/architecture.md). Today's single-process coordinator answers
    # them from memory, exactly as the synchronous reads above do.

    async def list_lanes(
        self, prefix: str | None = None, *, limit: int | None = None
    ) -> list[LaneSnapshot]:
        """Lane snapshots sorted by key: :meth:`keys`, awaitable, at most ``limit`` of them.

        Args:
            prefix: only keys starting with it (None or ``""``: every key).
            limit: at most this many lanes, the first in key order (None: all).

        Raises:
            ConfigurationError: ``prefix`` is not a string, or ``limit`` is not an
                integer >= 0.
        """
        if limit is not None:
            count(limit, "limit", minimum=0)
        shared = self._shared
        if shared is not None:
            from .shared import reads

            if prefix is not None and not isinstance(prefix, str):
                raise ConfigurationError(
                    f"prefix must be a string or None, got {safe_repr(prefix)}"
                )
            keys = await reads.active_keys(shared.coordinator, prefix)
            keys = keys if limit is None else keys[:limit]
            return await reads.lanes(shared.coordinator, keys, shared.limit_of)
        names = self.key_names(prefix)
        if limit is not None:
            names = names[:limit]
        core = self._core
        return [core.lane_snapshot(k) for k in names]

    async def get_lane(self, key: str) -> LaneSnapshot:
        """One key's lane (idle when it has no unfinished run): :meth:`lane`, awaitable.

        On shared storage: the lane as the database holds it, every process's runs.
        """
        shared = self._shared
        if shared is None:
            return self.lane(key)
        from .shared import reads

        if not isinstance(key, str):
            raise ConfigurationError(f"key must be a string, got {safe_repr(key)}")
        (snapshot,) = await reads.lanes(shared.coordinator, [key], shared.limit_of)
        return snapshot

    async def get_lane_states(self) -> dict[str, int]:
        """How many lanes are in each state: :meth:`lane_states`, awaitable.

        On shared storage: every lane of the database (idle ones: every key ever used).
        """
        shared = self._shared
        if shared is None:
            return self.lane_states()
        from .shared import reads

        return await reads.lane_states(shared.coordinator)

    async def get_statistics(self) -> Statistics:
        """Counters and gauges as a frozen snapshot: :meth:`statistics`, awaitable.

        On shared storage the gauges (unfinished runs, lanes, pauses) are the
        database's, every process's; the counters are this process's.
        """
        local = self.statistics()
        shared = self._shared
        if shared is None:
            return local
        from .shared import reads

        db = shared.coordinator
        states = await reads.lane_states(db)
        jobs, keys = await reads.paused(db)
        return replace(
            local,
            unfinished=MappingProxyType(await reads.status_counts(db)),
            lanes=states["running"] + states["running+queued"],
            lanes_busy=states["running"] + states["running+queued"],
            paused=Paused(jobs, keys),
        )
