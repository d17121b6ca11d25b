"""The hypothesis model, wider: lane limits above one, idempotency keys, input policies,
batch triggers (issue: architecture, item 5).

The machine of ``test_guarantees.py`` (its rules, its reference table of DESIGN.md §3
and its checks of exclusion, trailing edge, bound and order) on a scheduler whose lane
``k2`` runs two at once, with triggers that also carry idempotency keys and input
policies (``latest``, ``first``, a merge), and batches of triggers. On top:

* a trigger repeating an idempotency key of its job returns the earlier run;
* the input a run's first attempt sees is the one its triggers' policies made, joins
  after its start left out;
* a batch decides each of its triggers as the same triggers one by one would.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import rule

import keyflow
from keyflow import Coalesce, Disposition

from .test_guarantees import (
    FILE_SETTINGS,
    JOBS,
    KEYS,
    MAX_QUEUED,
    SETTINGS,
    STRATEGIES,
    SchedulerMachine,
    SQLiteMachine,
)

LIMITS = {"k1": 1, "k2": 2}
POLICIES = ("latest", "first", "merge")
IDEMPOTENCY_KEYS = (None, None, "once", "twice")


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return {"ns": [*old["ns"], *new["ns"]]}


def _coalesce(strategy: str | None, job: str, policy: str) -> Coalesce | None:
    if strategy is None:
        return None
    chosen: Any = _merge if policy == "merge" else policy
    return Coalesce(strategy, max_queued=MAX_QUEUED[job], input=chosen)  # type: ignore[arg-type]


class WiderMachine(SchedulerMachine):
    """The scheduler machine with lane limits, idempotency keys and input policies."""

    def __init__(self) -> None:
        self.idempotent: dict[tuple[str, str], str] = {}
        """(job, idempotency key) -> the run the first trigger with it made."""
        self.expected_input: dict[str, dict[str, Any]] = {}
        """Run id -> the input its triggers' policies made (until it started)."""
        self.first_inputs: dict[str, dict[str, Any]] = {}
        """Run id -> the input its first attempt saw."""
        super().__init__()

    def limit(self, key: str) -> int:
        return LIMITS[key]

    def started(self, ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        if ctx.attempt == 1 and ctx.run_id not in self.first_inputs:
            self.first_inputs[ctx.run_id] = input

    async def _has_started(self, run_id: str) -> bool:
        run = await self.kf.get_run(run_id)
        return run is not None and run.attempt > 0

    def _note_input(
        self, result: keyflow.TriggerResult, mine: dict[str, Any], policy: str, started: bool
    ) -> None:
        run_id = result.run_id
        if result.disposition is not Disposition.COALESCED:
            self.expected_input[run_id] = mine
            return
        if started or run_id not in self.expected_input:
            return  # a run that started keeps its input
        old = self.expected_input[run_id]
        if policy == "latest":
            self.expected_input[run_id] = mine
        elif policy == "merge":
            self.expected_input[run_id] = _merge(old, mine)

    def trigger(self, job: str, key: str, strategy: str | None, delayed: bool) -> None:
        """Not a rule here: every trigger goes through :meth:`trigger_wider` or a batch."""
        raise AssertionError("replaced by trigger_wider")

    @rule(
        job=st.sampled_from(JOBS),
        key=st.sampled_from(KEYS),
        strategy=st.sampled_from(STRATEGIES),
        policy=st.sampled_from(POLICIES),
        idempotency_key=st.sampled_from(IDEMPOTENCY_KEYS),
    )
    def trigger_wider(
        self, job: str, key: str, strategy: str | None, policy: str, idempotency_key: str | None
    ) -> None:
        earlier = self.idempotent.get((job, idempotency_key)) if idempotency_key else None
        expected = None if earlier else self.run(self._expected(job, key, strategy, False))
        joins = expected is not None and expected[0] == "join" and expected[1] is not None
        # Decided before the trigger: the join itself happens before anything can start.
        started = joins and self.run(self._has_started(expected[1]))  # type: ignore[index]
        issued = self.seen.tick()
        mine = {"ns": [issued]}
        result = self.run(
            self.kf.trigger(
                job,
                mine,
                concurrency_key=key,
                coalesce=_coalesce(strategy, job, policy),
                idempotency_key=idempotency_key,
            )
        )
        if earlier is not None:  # the key was used: the same run, whatever it became
            assert result.disposition is Disposition.IDEMPOTENT, result
            assert result.run_id == earlier
            self.run(self._settle())
            return
        assert expected is not None
        kind, target = expected
        if kind == "join":
            assert result.disposition is Disposition.COALESCED, (expected, result)
            assert result.run_id == target
        else:
            assert result.disposition is kind, (expected, result)
        if idempotency_key is not None:
            self.idempotent[job, idempotency_key] = result.run_id
        self.run_key[result.run_id] = key
        self._note_input(result, mine, policy, started)
        if strategy == "queue":
            self.seen.queue_triggers.append((issued, result.run_id))
            if result.disposition is not Disposition.COALESCED:
                self.seen.created_by_queue.add(result.run_id)
        self.run(self._settle())

    @rule(
        requests=st.lists(
            st.tuples(st.sampled_from(JOBS), st.sampled_from(KEYS), st.sampled_from(STRATEGIES)),
            min_size=1,
            max_size=4,
        )
    )
    def batch(self, requests: list[tuple[str, str, str | None]]) -> None:
        issued = self.seen.tick()
        batch = [
            keyflow.TriggerRequest(
                job,
                {"ns": [issued]},
                concurrency_key=key,
                coalesce=_coalesce(strategy, job, "latest"),
            )
            for job, key, strategy in requests
        ]
        results = self.run(self.kf.batch_trigger(batch))
        assert len(results) == len(requests)
        made: dict[str, str] = {}
        for (_job, key, strategy), result in zip(requests, results, strict=True):
            assert result.disposition is not Disposition.IDEMPOTENT
            if result.disposition is Disposition.COALESCED:
                # It joined a run of its own job and key: an earlier one, or one this
                # very batch made just before it (decided in order, as one by one).
                assert self.run_key.get(result.run_id, made.get(result.run_id)) == key
            else:
                assert result.run_id not in self.run_key
                assert result.run_id not in made
                made[result.run_id] = key
            # Whether a joined run had started when its batch was decided is not known
            # here: the input of every run a batch touched is not checked.
            self.expected_input.pop(result.run_id, None)
            if strategy == "queue":
                self.seen.queue_triggers.append((issued, result.run_id))
                if result.disposition is not Disposition.COALESCED:
                    self.seen.created_by_queue.add(result.run_id)
        for run_id, key in made.items():
            self.run_key[run_id] = key
        self.run(self._settle())

    def _check_final(self) -> None:
        super()._check_final()
        for run_id, seen in self.first_inputs.items():
            if run_id in self.expected_input:
                assert seen == self.expected_input[run_id], (run_id, seen)


class WiderSQLiteMachine(WiderMachine, SQLiteMachine):
    """The same on a SQLite file: the general, durable path."""


TestWiderGuaranteesInMemory = WiderMachine.TestCase
TestWiderGuaranteesInMemory.settings = SETTINGS
TestWiderGuaranteesSQLite = WiderSQLiteMachine.TestCase
TestWiderGuaranteesSQLite.settings = FILE_SETTINGS
