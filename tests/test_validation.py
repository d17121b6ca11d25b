"""Bad input is refused at trigger() with a clear error, and nothing is stored."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import Coalesce

from .conftest import MakeKeyflow


async def noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None


@pytest.fixture
async def kf(make_keyflow: MakeKeyflow) -> keyflow.Keyflow:
    kf = make_keyflow()
    kf.job("job")(noop)
    await kf.start()
    return kf


BAD_TRIGGERS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"job": "nope"}, keyflow.UnknownJobError, "unknown job 'nope'.*'job'"),
    ({"input": [1, 2]}, keyflow.InvalidInputError, "not a JSON object.*list"),
    ({"input": "text"}, keyflow.InvalidInputError, "str"),
    ({"input": {"when": object()}}, keyflow.InvalidInputError, r"\$\.when is a object"),
    ({"input": {"tags": {1, 2}}}, keyflow.InvalidInputError, r"\$\.tags is a set"),
    ({"input": {"x": math.nan}}, keyflow.InvalidInputError, "nan"),
    ({"input": {"deep": [{"ok": 1}, {"bad": b"x"}]}}, keyflow.InvalidInputError, r"deep\[1\]"),
    ({"input": {1: "int key"}}, keyflow.InvalidInputError, "non-string key 1"),
    ({"coalesce": "queue"}, keyflow.InvalidCoalesceError, "needs a concurrency_key"),
    ({"coalesce": "debounce", "concurrency_key": "k"}, keyflow.InvalidCoalesceError, "debounce"),
    ({"coalesce": 3, "concurrency_key": "k"}, keyflow.InvalidCoalesceError, "strategy name"),
    ({"concurrency_key": ""}, keyflow.InvalidTriggerError, "concurrency_key"),
    ({"concurrency_key": 5}, keyflow.InvalidTriggerError, "concurrency_key"),
    ({"idempotency_key": ""}, keyflow.InvalidTriggerError, "idempotency_key"),
    ({"labels": {"org": 1}}, keyflow.InvalidTriggerError, "labels"),
    ({"delay": -1}, keyflow.InvalidTriggerError, "delay must be >= 0"),
    ({"delay": math.inf}, keyflow.InvalidTriggerError, "finite"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_TRIGGERS)
async def test_bad_trigger_is_refused_and_leaves_nothing(
    kf: keyflow.Keyflow, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments = {"job": "job", "input": {}, **options}
    job = arguments.pop("job")
    data = arguments.pop("input")
    with pytest.raises(error, match=message) as caught:
        await kf.trigger(job, data, **arguments)
    assert isinstance(caught.value, keyflow.TriggerError)
    assert isinstance(caught.value, keyflow.KeyflowError)
    assert await kf.list_runs() == []
    assert kf.keys() == []
    stats = kf.statistics()
    assert stats.triggers.total == 0
    assert not any(stats.unfinished.values())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_queued": 0}, "max_queued must be an integer >= 1"),
        ({"max_queued": 1.5}, "max_queued"),
        ({"max_queued": True}, "max_queued"),
        ({"input": "newest"}, "coalesce input must be"),
        ({"input": 42}, "coalesce input must be"),
    ],
)
def test_bad_coalesce_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(keyflow.InvalidCoalesceError, match=message):
        Coalesce("queue", **options)


async def test_a_merge_that_returns_non_json_is_refused(kf: keyflow.Keyflow) -> None:
    strategy = Coalesce("queue", input=lambda old, new: {"bad": {1, 2}})
    # delayed (the virtual clock stands still): it cannot start before the second trigger
    first = await kf.trigger("job", {"n": 1}, concurrency_key="k", coalesce=strategy, delay=60)
    with pytest.raises(keyflow.InvalidInputError, match="merge function of job 'job'"):
        await kf.trigger("job", {"n": 2}, concurrency_key="k", coalesce=strategy)
    run = await kf.get_run(first.run_id)
    assert run is not None
    assert run.input == {"n": 1}
    assert run.trigger_count == 1


async def test_trigger_before_start_and_after_stop(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    kf.job("job")(noop)
    with pytest.raises(keyflow.SchedulerNotRunningError, match="not started"):
        await kf.trigger("job")
    await kf.start()
    await kf.stop()
    with pytest.raises(keyflow.SchedulerNotRunningError, match="stopped"):
        await kf.trigger("job")
    with pytest.raises(keyflow.SchedulerNotRunningError):
        await kf.batch_trigger([keyflow.TriggerRequest("job")])


def test_bad_job_definitions(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    kf.job("job")(noop)
    with pytest.raises(keyflow.ConfigurationError, match="already registered"):
        kf.job("job")(noop)
    with pytest.raises(keyflow.ConfigurationError, match="async function"):
        kf.job("sync")(lambda ctx, input: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(keyflow.ConfigurationError, match="retries"):
        kf.job(retries=-1)
    with pytest.raises(keyflow.ConfigurationError, match="timeout"):
        kf.job(timeout=0)
    with pytest.raises(keyflow.ConfigurationError, match="job-level concurrency_key"):
        kf.job(coalesce="queue")
    with pytest.raises(keyflow.InvalidCoalesceError):
        kf.job(concurrency_key="k", coalesce="sometimes")  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": -1}, "workers"),
        ({"workers": 1.5}, "workers"),
        ({"retention": -1}, "retention"),
        ({"lane_limit": 0}, "lane_limit"),
        ({"storage": "redis://localhost"}, "unknown storage scheme 'redis'"),
        ({"storage": "keyflow.db"}, "no scheme"),
        ({"grace": -1}, "grace"),
    ],
)
def test_bad_scheduler_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(keyflow.ConfigurationError, match=message):
        keyflow.Keyflow(**options)


async def test_job_level_key_function_and_defaults(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    @kf.job(concurrency_key=lambda data: f"process:{data['org']}", coalesce="queue")
    async def process(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    first = await process.trigger({"org": "acme"})
    second = await process.trigger({"org": "acme"})
    assert first.concurrency_key == "process:acme"
    assert second.run_id != first.run_id or second.disposition is keyflow.Disposition.COALESCED
    with pytest.raises(keyflow.InvalidTriggerError, match="concurrency_key function"):
        await process.trigger({"no-org": True})
    explicit = await process.trigger({"org": "acme"}, concurrency_key=None, coalesce=None)
    assert explicit.concurrency_key is None


async def test_a_scheduler_without_workers_triggers_and_runs_nothing(tmp_path: Path) -> None:
    async with keyflow.Keyflow(f"sqlite:///{tmp_path / 'runs.db'}", workers=0) as kf:

        @kf.job
        async def later(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            raise AssertionError("a scheduler without workers runs nothing")

        result = await kf.trigger("later")
        assert kf.statistics().workers == 0
        stored = await kf.get_run(result.run_id)
        assert stored is not None
        assert stored.status is keyflow.RunStatus.PENDING


async def test_a_job_handle_is_taken_for_its_name_but_not_another_schedulers() -> None:
    async with keyflow.Keyflow(workers=1) as kf, keyflow.Keyflow(workers=1) as other:

        @kf.job
        async def process(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
            return "done"

        @other.job("process")
        async def elsewhere(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
            return None

        result = await kf.trigger(process)  # type: ignore[arg-type]  # a Job, not a str
        assert result.job == "process"
        assert (await kf.wait(result.run_id, timeout=10)).output == "done"
        with pytest.raises(keyflow.UnknownJobError, match="unknown job"):
            await kf.trigger(elsewhere)  # type: ignore[arg-type]  # not this one's job
