"""Hypothesis: handlers that misbehave at random, mixed with triggers, on every backend.

Each example is a batch of triggers of two jobs on two keys (every strategy), each
carrying a behaviour for its handler: return an odd value (a huge integer, text with
a lone surrogate, NaN, a set, an object), raise an odd exception (a BaseException, one
that cannot be printed, its own CancelledError, a Retry with a bad delay), swallow its
timeout and return anyway, ignore its timeout for good, or log odd text. Afterwards:

* ``run_until_idle()`` returned, and every run is terminal, in memory and in storage;
* storage still takes triggers (a last trigger completes) and reports no error;
* exclusion held (never two handlers of a key at once) and every ``queue`` trigger was
  covered by a run that started after it was accepted (the trailing edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keyflow
from keyflow import Coalesce, RunStatus
from keyflow.cli import read_only_url

from .conftest import BACKENDS, storage_url_for

JOBS = ("a", "b")
KEYS = ("k1", "k2")
STRATEGIES: tuple[str | None, ...] = (None, "skip", "queue", "cancel")
TIMEOUT = 0.05
"""Seconds each attempt may take (real time: the loop's timers enforce it)."""


class Exotic(BaseException):
    """Not an Exception: some libraries raise these."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def odd_value(kind: str) -> Any:
    return {
        "huge": {"n": 10**5000},
        "surrogate": ["caf\udce9.txt"],
        "nan": {"x": math.nan},
        "set": {1, 2},
        "object": object(),
        "nested": {"ok": [1, {"deep": "é"}]},
        "none": None,
    }[kind]


BEHAVIOURS = st.one_of(
    st.tuples(
        st.just("return"),
        st.sampled_from(["huge", "surrogate", "nan", "set", "object", "nested", "none"]),
    ),
    st.tuples(
        st.just("raise"),
        st.sampled_from(["exotic", "unprintable", "own-cancel", "retry-nan", "retry", "plain"]),
    ),
    st.tuples(st.just("swallow-timeout"), st.just("")),
    st.tuples(st.just("deaf"), st.just("")),
    st.tuples(st.just("log"), st.sampled_from(["caf\udce9", "\x00nul", "ok", "é" * 300])),
)
TRIGGERS = st.lists(
    st.tuples(
        st.sampled_from(JOBS),
        st.sampled_from(KEYS),
        st.sampled_from(STRATEGIES),
        BEHAVIOURS,
    ),
    min_size=1,
    max_size=12,
)


class Scenario:
    """One scheduler, handlers that behave as each trigger's input says."""

    def __init__(self, url: str, behaviours: list[tuple[str, str]]) -> None:
        self.behaviours = behaviours
        self.kf = keyflow.Keyflow(storage=url, workers=3, cancel_grace=0.02, seed=3)
        self.executing: dict[str, int] = defaultdict(int)
        self.violations: list[str] = []
        self.started: dict[str, list[int]] = defaultdict(list)
        self.clock = 0
        for job in JOBS:
            self.kf.job(job, retries=1, backoff=0, timeout=TIMEOUT)(self.handler)

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    async def handler(self, ctx: keyflow.RunContext, input: dict[str, Any]) -> Any:
        key = ctx.concurrency_key or ""
        self.started[ctx.run_id].append(self.tick())
        self.executing[key] += 1
        if self.executing[key] > 1:
            self.violations.append(f"{key}: {self.executing[key]} at once")
        try:
            return await self.behave(ctx, *self.behaviours[input["b"]])
        finally:
            self.executing[key] -= 1

    async def behave(self, ctx: keyflow.RunContext, action: str, kind: str) -> Any:
        if action == "return":
            return odd_value(kind)
        if action == "raise":
            if kind == "exotic":
                raise Exotic("odd")
            if kind == "unprintable":
                raise Unprintable()
            if kind == "own-cancel":
                raise asyncio.CancelledError("a library's own")
            if kind == "retry-nan":
                raise keyflow.Retry(delay=math.nan)
            if kind == "retry":
                raise keyflow.Retry(delay=0)
            raise ValueError(f"plain failure {kind}")
        if action == "swallow-timeout":
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)
            return "returned after its timeout"
        if action == "deaf":  # ignores its timeout for a while (cancel_grace passes)
            for _ in range(3):
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.03)
            return "deaf"
        ctx.log.info(kind, text=kind)
        ctx.progress(1, 2, kind)
        return kind


async def play(url: str, triggers: list[tuple[str, str, str | None, tuple[str, str]]]) -> None:
    scenario = Scenario(url, [behaviour for *_, behaviour in triggers])
    kf = scenario.kf
    await kf.start()
    try:
        queue_triggers: list[tuple[int, str]] = []
        for index, (job, key, strategy, _behaviour) in enumerate(triggers):
            coalesce = None if strategy is None else Coalesce(strategy)  # type: ignore[arg-type]
            accepted = scenario.tick()
            result = await kf.trigger(job, {"b": index}, concurrency_key=key, coalesce=coalesce)
            if strategy == "queue":
                queue_triggers.append((accepted, result.run_id))
            await asyncio.sleep(0)  # let workers interleave with the triggers
        await kf.run_until_idle(timeout=30)
        runs = await kf.list_runs(limit=1000)
        assert runs
        assert all(run.is_terminal for run in runs), [(r.id, r.status) for r in runs]
        assert kf.statistics().storage_error is None
        assert not any(kf.statistics().unfinished.values())
        assert scenario.violations == []
        by_id = {run.id: run for run in runs}
        for accepted, run_id in queue_triggers:  # guarantee 2, the trailing edge
            if by_id[run_id].status is RunStatus.CANCELLED:
                continue  # a later "cancel" trigger replaced it: that is its strategy
            assert any(start > accepted for start in scenario.started[run_id]), run_id
        # Storage is not wedged: it takes a new trigger, and its run completes.
        scenario.behaviours.append(("return", "none"))
        last = await kf.trigger_and_wait("a", {"b": len(triggers)}, timeout=10)
        assert last.status is RunStatus.COMPLETED
    finally:
        await kf.stop(grace=1)
    if url != "memory://":  # what storage holds agrees: every run terminal
        reader = keyflow.storage_backends.open_backend(read_only_url(url), retention=1000)
        await reader.open()
        try:
            stored = await reader.list_runs(keyflow.storage_backends.RunQuery(limit=1000))
        finally:
            await reader.close()
        assert all(run.is_terminal for run in stored)
        assert len(stored) == len(runs) + 1


@pytest.mark.parametrize("backend", BACKENDS)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(triggers=TRIGGERS)
def test_misbehaving_handlers_never_wedge_storage_or_break_guarantees(
    backend: str, triggers: list[tuple[str, str, str | None, tuple[str, str]]]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = storage_url_for(backend, Path(directory))
        asyncio.run(play(url, triggers))
