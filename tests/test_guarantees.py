"""Hypothesis: random interleavings against the real scheduler and a reference model.

Triggers of two jobs sharing two keys with every strategy (some delayed), completions,
failures with retries, explicit retries, cancels and clock jumps. After every step the
decisions are compared with DESIGN.md §3's table, evaluated independently on public
snapshots, and every unfinished run must sit in its lane; at the end guarantees
1 (exclusion), 2 (trailing edge), 3 (bound) and 5 (order) are checked on what the
handlers and the event stream saw.

On the SQLite and JSON files the machine also restarts in the middle of a sequence: a
stop (one that interrupts every running handler, or one whose grace lets them all end)
and a new scheduler on the same file. Guarantee 4 there: every unfinished run survives
with its triggers (count, joined triggers, input), an interrupted run runs again as the
same attempt, and the checks above span both schedulers' handlers and events.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import keyflow
from keyflow import Coalesce, Disposition, RunStatus
from keyflow.testing import VirtualClock

from .conftest import storage_url_for
from .fakes import DiskLikeBackend
from .pg import drop_schemas, need_postgres, schema_for

JOBS = ("a", "b")
KEYS = ("k1", "k2")
MAX_QUEUED = {"a": 1, "b": 2}
STRATEGIES: tuple[str | None, ...] = (None, "skip", "queue", "cancel")
NOT_STARTED = (RunStatus.SCHEDULED, RunStatus.QUEUED, RunStatus.PENDING)


@dataclass
class Observed:
    """What handlers and events saw, with one global sequence for ordering."""

    seq: int = 0
    starts: list[tuple[int, str, str, int]] = field(default_factory=list)
    executing: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    exclusion_violations: list[str] = field(default_factory=list)
    entered_lane: dict[str, int] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    queue_triggers: list[tuple[int, str]] = field(default_factory=list)
    created_by_queue: set[str] = field(default_factory=set)

    def tick(self) -> int:
        self.seq += 1
        return self.seq


class SchedulerMachine(RuleBasedStateMachine):
    """Drives one scheduler; subclasses choose the storage."""

    def storage(self) -> str | keyflow.StorageBackend:
        return "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = VirtualClock()
        self.seen = Observed()
        self.gates: dict[str, asyncio.Future[str]] = {}
        self.run_key: dict[str, str] = {}
        self.handled = sys.exc_info()[1]
        """The exception being handled around the example, if any (not a failure of it)."""
        asyncio.set_event_loop(self.loop)  # the disk-like fake makes an Event
        self.storage_option = self.storage()
        asyncio.set_event_loop(None)
        self.kf = self.make_keyflow()

    def make_keyflow(self) -> keyflow.Keyflow:
        """A scheduler on this machine's storage, its jobs registered (not started)."""
        kf = keyflow.Keyflow(
            self.storage_option,
            workers=3,
            clock=self.clock,
            seed=7,
            event_buffer=100_000,
            lane_limit=self.limit,
        )
        for name in JOBS:
            kf.job(name, retries=1, backoff=2.0)(self._handler)
        return kf

    def limit(self, key: str) -> int:
        """How many runs of ``key`` may execute at once (one, unless a subclass says)."""
        return 1

    def started(self, ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        """A handler started (subclasses note more)."""

    async def _handler(self, ctx: keyflow.RunContext, input: dict[str, Any]) -> Any:
        key = ctx.concurrency_key
        assert key is not None
        self.seen.starts.append((self.seen.tick(), ctx.run_id, key, ctx.attempt))
        self.started(ctx, input)
        self.seen.executing[key] += 1
        if self.seen.executing[key] > self.limit(key):
            self.seen.exclusion_violations.append(f"{key}: {self.seen.executing[key]} at once")
        gate = self.loop.create_future()
        self.gates[ctx.run_id] = gate
        try:
            outcome = await gate
        finally:
            self.seen.executing[key] -= 1
            self.gates.pop(ctx.run_id, None)
        if outcome == "fail":
            raise RuntimeError("handler failed")
        if outcome == "retry":
            raise keyflow.Retry(delay=1.0)
        return {"ok": True}

    async def _watch(self, events: keyflow.Subscription) -> None:
        async for event in events:
            if not isinstance(event, keyflow.RunChanged):
                continue
            run = event.run
            entered = run.status in (RunStatus.QUEUED, RunStatus.PENDING) and run.attempt == 0
            if entered and run.id not in self.seen.entered_lane:
                self.seen.entered_lane[run.id] = self.seen.tick()
            if run.status is RunStatus.CANCELLED:
                self.seen.cancelled.add(run.id)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def lanes(self) -> list[keyflow.LaneSnapshot]:
        """Every lane of the scheduler (the synchronous read: it holds every run)."""
        return self.kf.keys()

    def unfinished(self) -> dict[str, int]:
        """How many unfinished runs of each status there are."""
        return dict(self.kf.statistics().unfinished)

    def in_model_order(self, run_ids: Iterable[str]) -> list[str]:
        """``run_ids`` in the order the machine first met them (what a draw picks from).

        Not sorted by id: the ids of two schedulers on one storage do not sort by
        creation (each has a random prefix), and a draw must pick the same run again
        when hypothesis replays the example.
        """
        order = {run_id: index for index, run_id in enumerate(self.run_key)}
        return sorted(run_ids, key=order.__getitem__)

    async def _settle(self) -> None:
        # Yield to the loop (no timers involved) until every run that can start has
        # started and every cancelled task has unwound.
        # A worker that took a run waits for its start to be written before the handler
        # runs: wait for storage too, not only for the loop.
        quiet = 0
        for _ in range(1000):
            await asyncio.sleep(0)
            stats = self.kf.statistics()
            busy = stats.unfinished["pending"] == 0 or stats.workers_busy == 3
            settled = busy and stats.workers_busy == len(self.gates)
            quiet = quiet + 1 if settled else 0
            if quiet >= 3:
                return
            if not settled:
                await self.kf._core.pipeline.barrier()
        raise AssertionError("the scheduler did not settle")

    @initialize()
    def start(self) -> None:
        self.run(self.kf.start())
        self.events = self.kf.events()
        self.watcher = self.loop.create_task(self._watch(self.events))

    @rule(
        job=st.sampled_from(JOBS),
        key=st.sampled_from(KEYS),
        strategy=st.sampled_from(STRATEGIES),
        delayed=st.integers(0, 4).map(lambda n: n == 0),
    )
    def trigger(self, job: str, key: str, strategy: str | None, delayed: bool) -> None:
        expected = self.run(self._expected(job, key, strategy, delayed))
        coalesce = None if strategy is None else Coalesce(strategy, max_queued=MAX_QUEUED[job])  # type: ignore[arg-type]
        issued = self.seen.tick()  # nothing observable happens between issue and acceptance
        result = self.run(
            self.kf.trigger(
                job,
                {"n": self.seen.seq},
                concurrency_key=key,
                coalesce=coalesce,
                delay=3.0 if delayed else 0.0,
            )
        )
        self.run_key[result.run_id] = key
        kind, target = expected
        if kind == "join":
            assert result.disposition is Disposition.COALESCED, (expected, result)
            assert result.run_id == target
        else:
            assert result.disposition is kind, (expected, result)
            assert result.run_id not in self.run_key or self.run_key[result.run_id] == key
        if strategy == "queue":
            self.seen.queue_triggers.append((issued, result.run_id))
            if result.disposition is not Disposition.COALESCED:
                self.seen.created_by_queue.add(result.run_id)
        self.run(self._settle())

    async def _expected(
        self, job: str, key: str, strategy: str | None, delayed: bool
    ) -> tuple[Any, str | None]:
        lane = [
            r
            for r in await self.kf.list_runs(concurrency_key=key, limit=10_000)
            if not r.is_terminal
        ]  # newest first
        mine = [r for r in lane if r.job == job]
        if strategy == "skip" and mine:
            return "join", mine[0].id
        if strategy == "queue":
            not_started = [r for r in mine if r.attempt == 0]
            if len(not_started) >= MAX_QUEUED[job]:
                return "join", not_started[0].id
        if delayed:
            return Disposition.CREATED, None
        victims = {r.id for r in mine} if strategy == "cancel" else set()
        busy = [
            r
            for r in lane
            if r.id not in victims or r.status is RunStatus.RUNNING
            if r.status in (RunStatus.PENDING, RunStatus.RUNNING)
            or (r.status is RunStatus.SCHEDULED and r.attempt > 0)
        ]
        waiting = [r for r in lane if r.status is RunStatus.QUEUED and r.id not in victims]
        full = len(busy) >= self.limit(key)
        return (Disposition.QUEUED if full or waiting else Disposition.CREATED), None

    @rule(data=st.data(), outcome=st.sampled_from(["ok", "ok", "fail", "retry"]))
    def finish_one(self, data: st.DataObject, outcome: str) -> None:
        if not self.gates:
            return
        run_id = data.draw(st.sampled_from(self.in_model_order(self.gates)))
        self.gates[run_id].set_result(outcome)
        self.run(self._settle())

    @rule(data=st.data())
    def cancel_one(self, data: st.DataObject) -> None:
        if not self.run_key:
            return
        run_id = data.draw(st.sampled_from(list(self.run_key)))
        run = self.run(self.kf.cancel(run_id))
        assert run.is_terminal
        self.run(self._settle())

    async def _jump(self) -> None:
        self.clock.jump()  # timers fire inside the loop, as they would for real

    @rule()
    def jump(self) -> None:
        self.run(self._jump())
        self.run(self._settle())

    @invariant()
    def exclusion_and_bound(self) -> None:
        assert not self.seen.exclusion_violations
        if not hasattr(self, "events"):
            return
        runs = self.run(self.kf.list_runs(limit=100_000))
        for key in KEYS:
            for job in JOBS:
                waiting = [
                    r
                    for r in runs
                    if r.concurrency_key == key
                    and r.job == job
                    and r.status in NOT_STARTED
                    and r.attempt == 0
                    and r.id in self.seen.created_by_queue
                ]
                assert len(waiting) <= MAX_QUEUED[job], (key, job, waiting)
        self._check_lanes(runs)

    def _check_lanes(self, runs: list[keyflow.Run]) -> None:
        # Every unfinished run is in its lane, where its status says (after a restart,
        # the lanes are what recovery rebuilt from storage).
        lanes = {lane.key: lane for lane in self.lanes()}
        placed: dict[tuple[str, str], set[str]] = defaultdict(set)
        for lane in lanes.values():
            placed["running", lane.key] = set(lane.running)
            placed["waiting", lane.key] = set(lane.waiting)
            placed["scheduled", lane.key] = set(lane.scheduled)
        expected: dict[tuple[str, str], set[str]] = defaultdict(set)
        for run in runs:
            if run.is_terminal or run.concurrency_key is None:
                continue
            if run.status is RunStatus.QUEUED:
                where = "waiting"
            elif run.status is RunStatus.SCHEDULED and run.attempt == 0:
                where = "scheduled"  # delayed, not due yet
            else:
                where = "running"  # holds a slot: pending, running, or a retry backoff
            expected[where, run.concurrency_key].add(run.id)
        for place in expected.keys() | placed.keys():
            assert expected[place] == placed[place], (place, expected[place], placed[place])

    def teardown(self) -> None:
        if not hasattr(self, "events"):
            self.loop.close()
            return
        try:
            if sys.exc_info()[1] not in (None, self.handled):
                # A step failed (hypothesis tears down in a ``finally``): report that
                # failure, not the drain's of a broken scheduler, and fast.
                return
            for _ in range(1000):
                for gate in list(self.gates.values()):
                    if not gate.done():
                        gate.set_result("ok")
                self.run(self._settle())
                unfinished = self.unfinished()
                if not any(unfinished.values()):
                    break
                if not self.gates and unfinished["running"] == 0:
                    self.run(self._jump())
            self.run(self.kf.run_until_idle(timeout=5))
            self._check_final()
        finally:
            self.run(self.kf.stop(grace=0))
            self.run(self.watcher)
            self.loop.close()

    def _check_final(self) -> None:
        seen = self.seen
        assert not seen.exclusion_violations
        first_start: dict[str, int] = {}
        for seq, run_id, _key, attempt in seen.starts:
            if attempt == 1:
                first_start.setdefault(run_id, seq)  # a restart may start it again
        # 2. trailing edge: a queue trigger's run starts after it was accepted
        for accepted, run_id in seen.queue_triggers:
            if run_id in seen.cancelled:
                continue
            assert run_id in first_start, f"run {run_id} covering a queue trigger never ran"
            assert first_start[run_id] > accepted, (run_id, first_start[run_id], accepted)
        # 5. order: per key, first starts follow the order runs entered the lane
        for key in KEYS:
            firsts = (rid for _, rid, k, attempt in seen.starts if k == key and attempt == 1)
            started = list(dict.fromkeys(firsts))
            entered = sorted(started, key=lambda rid: seen.entered_lane[rid])
            assert started == entered, (key, started, entered)
        # every run ended; only cancelled ones did not run
        for run_id in self.run_key:
            run = self.run(self.kf.get_run(run_id))
            assert run is not None
            assert run.is_terminal
            if run.status is not RunStatus.CANCELLED:
                assert run_id in first_start


class DiskLikeMachine(SchedulerMachine):
    """The same, through the general path: writes suspend, commits are grouped."""

    def storage(self) -> str | keyflow.StorageBackend:
        return DiskLikeBackend()


class FileMachine(SchedulerMachine):
    """The same on a real storage file (a fresh directory per example), with restarts.

    ``restart`` stops the scheduler in the middle of the sequence and starts a new one
    on the same file (guarantee 4 and DESIGN.md §4's graceful stop). Nothing it does
    depends on timing: the runs a stop meets are the ones whose handlers wait at their
    gates (the machine settles after every step), so the model knows them before the
    stop, and the stop either interrupts all of them (``grace=0``: no gate opens) or
    lets all of them end in its grace (every gate opens, with a drawn outcome).
    """

    backend = "sqlite"

    def storage(self) -> str | keyflow.StorageBackend:
        self.directory = tempfile.TemporaryDirectory(prefix="keyflow-guarantees-")
        return storage_url_for(self.backend, Path(self.directory.name))

    async def _unfinished(self) -> dict[str, keyflow.Run]:
        runs = await self.kf.list_runs(limit=100_000)
        return {r.id: r for r in runs if not r.is_terminal}

    def _lanes(self) -> dict[str, tuple[frozenset[str], tuple[str, ...], frozenset[str]]]:
        return {
            lane.key: (frozenset(lane.running), lane.waiting, frozenset(lane.scheduled))
            for lane in self.lanes()
            if lane.running or lane.waiting or lane.scheduled
        }

    async def _stop_draining(self, outcomes: dict[str, str]) -> None:
        # The stop begins (no new start from now on), then every running handler ends
        # within its grace. The grace is long: it never runs out (no gate stays shut).
        stopping = asyncio.ensure_future(self.kf.stop(grace=600))
        await asyncio.sleep(0)
        assert not self.kf.running
        for run_id, outcome in outcomes.items():
            self.gates[run_id].set_result(outcome)
        await stopping

    @rule(data=st.data(), drain=st.booleans())
    def restart(self, data: st.DataObject, drain: bool) -> None:
        before = self.run(self._unfinished())
        lanes = self._lanes()
        running = self.in_model_order(self.gates)
        assert {r for r, run in before.items() if run.status is RunStatus.RUNNING} == set(running)
        if drain:
            choices = st.sampled_from(["ok", "ok", "fail", "retry"])
            drawn = data.draw(st.lists(choices, min_size=len(running), max_size=len(running)))
            self.run(self._stop_draining(dict(zip(running, drawn, strict=True))))
        else:
            self.run(self.kf.stop(grace=0))  # every running handler is interrupted
        assert not self.gates, "a handler still runs after the stop"
        self.run(self.watcher)  # the stop closed the subscription
        mark = len(self.seen.starts)

        self.kf = self.make_keyflow()
        self.events = self.kf.events()  # before the start: recovery's events too
        self.run(self.kf.start())
        self.watcher = self.loop.create_task(self._watch(self.events))
        self.run(self._settle())

        after = self.run(self._unfinished())
        again = self.seen.starts[mark:]
        if drain:
            self._check_drained(before, after, dict(zip(running, drawn, strict=True)))
        else:
            self._check_interrupted(before, after, lanes, running, again)
        for run_id, run in after.items():
            # No run appears from nothing, and none loses what its triggers gave it.
            assert run_id in before, run_id
            was = before[run_id]
            assert (run.job, run.concurrency_key) == (was.job, was.concurrency_key)
            assert run.trigger_count == was.trigger_count, (run_id, was, run)
            assert run.coalesced == was.coalesced, run_id
            if was.attempt == 0 and run.attempt == 0:
                assert run.input == was.input, run_id

    def _check_interrupted(
        self,
        before: dict[str, keyflow.Run],
        after: dict[str, keyflow.Run],
        lanes: dict[str, tuple[frozenset[str], tuple[str, ...], frozenset[str]]],
        running: list[str],
        again: list[tuple[int, str, str, int]],
    ) -> None:
        # Nothing ended: every unfinished run survived, in the same place of its lane;
        # the interrupted ones run again (they head the ready queue and there is a
        # worker for each), each as the same attempt, and nothing else started.
        assert set(after) == set(before), set(before) ^ set(after)
        assert self.in_model_order(self.gates) == running
        assert sorted((rid, attempt) for _, rid, _, attempt in again) == sorted(
            (rid, before[rid].attempt) for rid in running
        ), again
        for run_id, run in after.items():
            was = before[run_id]
            assert (run.status, run.attempt) == (was.status, was.attempt), (was, run)
            assert run.errors == was.errors, run_id
            assert run.input == was.input, run_id
        assert self._lanes() == lanes

    def _check_drained(
        self,
        before: dict[str, keyflow.Run],
        after: dict[str, keyflow.Run],
        outcomes: dict[str, str],
    ) -> None:
        # The runs that ended in the grace stay ended (a completion is durable before
        # the stop returns); every other run survived.
        for run_id in set(before) - set(after):
            assert run_id in outcomes, f"run {run_id} was lost by the restart"
        for run_id, outcome in outcomes.items():
            run = self.run(self.kf.get_run(run_id))
            assert run is not None
            if outcome == "ok":
                assert run.status is RunStatus.COMPLETED, run
            else:  # a failure retries once (retries=1), then fails
                assert run.attempt == before[run_id].attempt, run
                retried = before[run_id].attempt < 2
                assert run.status is (RunStatus.SCHEDULED if retried else RunStatus.FAILED), run

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            self.directory.cleanup()


class SQLiteMachine(FileMachine):
    backend = "sqlite"


class JSONFileMachine(FileMachine):
    backend = "json"


class PostgreSQLMachine(FileMachine):
    """The same on PostgreSQL (a fresh schema per example, dropped after it)."""

    backend = "postgresql"

    def storage(self) -> str | keyflow.StorageBackend:
        need_postgres()  # before a directory is made: a skip leaves nothing behind
        return super().storage()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            drop_schemas(schema_for(Path(self.directory.name)))


WAITING = (
    "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = "
    "'scheduled' AND lease_owner IS NULL AND due_at <= $1) FROM keyflow_runs"
)
"""Runs waiting for a worker, and delayed runs due but not yet in their lanes."""


class SharedPostgreSQLMachine(PostgreSQLMachine):
    """The same on PostgreSQL in shared mode: decided in the database, claimed by leases.

    One process: its lanes and counts are read from the database (the synchronous reads
    show only the runs this process executes, docs/deployment.md), and settling waits
    for the database too (a run pending there is claimed by a task of its own).
    """

    backend = "postgresql-shared"

    def lanes(self) -> list[keyflow.LaneSnapshot]:
        return list(self.run(self.kf.list_lanes()))

    def unfinished(self) -> dict[str, int]:
        return dict(self.run(self.kf.get_statistics()).unfinished)

    async def _settle(self) -> None:
        shared = self.kf._shared
        assert shared is not None
        quiet = 0
        for _ in range(1000):
            await self.kf._core.pipeline.barrier()
            row = (await shared.coordinator.fetch(WAITING, self.clock.now()))[0]
            busy = self.kf.statistics().workers_busy
            settled = row[1] == 0 and (row[0] == 0 or busy == 3) and busy == len(self.gates)
            quiet = quiet + 1 if settled else 0
            if quiet >= 3:
                return
            if not settled:
                await shared.wait_change(0.05)
        raise AssertionError("the scheduler did not settle")


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestGuaranteesInMemory = SchedulerMachine.TestCase
TestGuaranteesInMemory.settings = SETTINGS
TestGuaranteesDiskLike = DiskLikeMachine.TestCase
TestGuaranteesDiskLike.settings = SETTINGS
FILE_SETTINGS = settings(SETTINGS, max_examples=40)  # real I/O: fewer, same depth
TestGuaranteesSQLite = SQLiteMachine.TestCase
TestGuaranteesSQLite.settings = FILE_SETTINGS
TestGuaranteesJSONFile = JSONFileMachine.TestCase
TestGuaranteesJSONFile.settings = FILE_SETTINGS
TestGuaranteesPostgreSQL = PostgreSQLMachine.TestCase
TestGuaranteesPostgreSQL.settings = settings(FILE_SETTINGS, max_examples=20)  # a server hop a write
TestGuaranteesPostgreSQLShared = SharedPostgreSQLMachine.TestCase
TestGuaranteesPostgreSQLShared.settings = TestGuaranteesPostgreSQL.settings
