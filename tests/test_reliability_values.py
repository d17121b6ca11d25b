"""Values that cannot be stored, and options that are not valid (issue: reliability).

Every backend must agree: a value storage cannot write (an integer too long to print, a
string with a lone surrogate) is refused at ``trigger()`` when it comes from the caller,
fails only its own run when a handler returns it, and is stored escaped when it is
text keyflow records on a handler's behalf (an exception message, a log line). Storage
keeps accepting triggers whatever happened.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

import keyflow
from keyflow import Backoff, Coalesce, RunStatus

from .conftest import MakeKeyflow

SURROGATE = "caf\udce9.txt"  # what os.listdir returns for a file name that is not UTF-8
HUGE = 10**5000  # longer than Python will write as text


async def test_unstorable_handler_values_fail_their_run_and_never_block_storage(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(workers=1)

    @kf.job()
    async def odd(ctx: keyflow.RunContext, input: dict[str, Any]) -> Any:
        kind = input["kind"]
        if kind == "huge-output":
            return {"n": HUGE}
        if kind == "surrogate-output":
            return [SURROGATE]
        if kind == "surrogate-error":
            raise OSError(f"cannot open {SURROGATE}")
        if kind == "huge-error":
            raise ValueError(HUGE)
        if kind == "surrogate-log":
            ctx.log.info(f"listing {SURROGATE}", name=SURROGATE, size=HUGE)
            ctx.progress(1, 2, SURROGATE)
            return "logged"
        return "fine"

    await kf.start()
    kinds = ["huge-output", "surrogate-output", "surrogate-error", "huge-error", "surrogate-log"]
    results = {kind: await odd.trigger({"kind": kind}) for kind in kinds}
    await kf.run_until_idle(timeout=10)
    runs = {kind: await kf.wait(result.run_id) for kind, result in results.items()}

    for kind in ("huge-output", "surrogate-output"):
        assert runs[kind].status is RunStatus.FAILED
        assert runs[kind].output is None
        assert "not JSON" in (runs[kind].error or "")
    assert runs["huge-output"].errors[0].message.endswith("longer than 4000 digits")
    assert "lone surrogate" in runs["surrogate-output"].errors[0].message
    assert runs["surrogate-error"].status is RunStatus.FAILED
    assert runs["surrogate-error"].errors[0].message == "cannot open caf\\udce9.txt"
    assert runs["huge-error"].status is RunStatus.FAILED
    assert "cannot be printed" in runs["huge-error"].errors[0].message
    logged = runs["surrogate-log"]
    assert logged.status is RunStatus.COMPLETED
    assert logged.logs[0].message == "listing caf\\udce9.txt"
    assert logged.logs[0].data == {
        "name": "'caf\\udce9.txt'",
        "size": "<int that cannot be shown: ValueError>",
    }
    assert logged.progress is not None
    assert logged.progress.message == "caf\\udce9.txt"

    # Storage still takes work, and what it holds reads back the same.
    after = await odd.trigger_and_wait({"kind": "fine"}, timeout=10)
    assert after.status is RunStatus.COMPLETED
    assert kf.statistics().storage_error is None
    stored = {r.id: r for r in await kf.list_runs(limit=100)}
    for kind, run in runs.items():
        assert stored[run.id].status is run.status, kind
        assert stored[run.id].error == run.error, kind


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"input": {"file": SURROGATE}}, r"\$\.file is not valid Unicode"),
    ({"input": {"nested": [{"n": HUGE}]}}, r"\$\.nested\[0\]\.n is an integer longer"),
    ({"input": {SURROGATE: 1}}, "key is not valid Unicode"),
    ({"concurrency_key": SURROGATE}, "concurrency_key is not valid Unicode"),
    ({"labels": {"file": SURROGATE}}, "label 'file' is not valid Unicode"),
    ({"labels": {SURROGATE: "x"}}, "label name is not valid Unicode"),
    ({"idempotency_key": SURROGATE}, "idempotency_key is not valid Unicode"),
]


@pytest.mark.parametrize(("options", "message"), BAD_VALUES)
async def test_unstorable_trigger_values_are_bad_input_on_every_backend(
    make_keyflow: MakeKeyflow, options: dict[str, Any], message: str
) -> None:
    kf = make_keyflow()
    ran = asyncio.Event()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ran.set()

    await kf.start()
    options = dict(options)  # shared between the backends' runs of this case
    data = options.pop("input", {})
    with pytest.raises(keyflow.InvalidInputError, match=message):
        await job.trigger(data, **options)
    assert await kf.list_runs() == []
    assert kf.statistics().triggers.total == 0
    fine = await job.trigger_and_wait({"ok": True}, timeout=5)  # storage is not wedged
    assert fine.status is RunStatus.COMPLETED


async def test_a_key_function_returning_unstorable_text_is_bad_input(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job(concurrency_key=lambda data: f"files:{SURROGATE}")
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    with pytest.raises(keyflow.InvalidInputError, match="concurrency_key"):
        await job.trigger({"path": "fine"})
    assert await kf.list_runs() == []


async def test_a_merge_that_changes_its_arguments_cannot_change_a_rolled_back_input(
    make_keyflow: MakeKeyflow,
) -> None:
    # The merge appends to the old input's list in place; the trigger then fails (its
    # merged input is refused): the stored input must be what it was.
    def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        old["ids"].extend(new["ids"])
        if new.get("poison"):
            old["bad"] = math.nan  # refused: the trigger fails after the merge ran
        return old

    kf = make_keyflow()
    seen: list[dict[str, Any]] = []

    @kf.job(concurrency_key="k", coalesce=Coalesce("queue", input=merge))
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        seen.append(input)

    await kf.start()
    first = await job.trigger({"ids": [1]}, delay=60)  # cannot start meanwhile
    with pytest.raises(keyflow.InvalidInputError, match="merge function"):
        await job.trigger({"ids": [2], "poison": True})
    run = await kf.get_run(first.run_id)
    assert run is not None
    assert run.input == {"ids": [1]}
    joined = await job.trigger({"ids": [3]})
    assert joined.run_id == first.run_id
    await kf.run_until_idle(timeout=5)
    assert seen == [{"ids": [1, 3]}]


async def test_callers_cannot_reach_a_run_through_what_they_were_given(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()
    release = asyncio.Event()
    started = asyncio.Event()

    @kf.job(concurrency_key="k", coalesce="queue")
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ctx.log.info("line", data={"a": [1]})
        started.set()
        await release.wait()

    await kf.start()
    async with kf.events() as events:
        first = await job.trigger({"n": [1]})
        await started.wait()
        second = await job.trigger({"n": [2]})
        joined = await job.trigger({"n": [3]})
        assert joined.run_id == second.run_id
        while True:
            event = await events.__anext__()
            if isinstance(event, keyflow.TriggerCoalesced):
                event.input["n"].append("event")  # the subscriber's copy
                break
        snapshot = await kf.get_run(second.run_id)
        assert snapshot is not None
        snapshot.coalesced[0].input["n"].append("snapshot")
        snapshot.input["n"].append("input")
        running = await kf.get_run(first.run_id)
        assert running is not None
        running.logs[0].data["data"]["a"].append("log")
    release.set()
    await kf.run_until_idle(timeout=5)
    fresh = await kf.get_run(second.run_id)
    assert fresh is not None
    assert fresh.input == {"n": [3]}
    assert fresh.coalesced[0].input == {"n": [3]}
    assert joined.run_id != first.run_id
    done = await kf.get_run(first.run_id)
    assert done is not None
    assert done.logs[0].data == {"data": {"a": [1]}}


# -- numbers users give: finite and non-negative, or refused --------------------------


async def test_nan_timeouts_are_refused_before_they_reach_a_timer(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    result = await job.trigger()
    for bad in (math.nan, math.inf, -1.0, "5", True):
        with pytest.raises(keyflow.ConfigurationError, match="timeout"):
            await kf.wait(result.run_id, timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(keyflow.ConfigurationError, match="timeout"):
            await kf.run_until_idle(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(keyflow.ConfigurationError, match="timeout"):
            await kf.trigger_and_wait("job", timeout=bad)  # type: ignore[arg-type]
    assert kf.statistics().triggers.total == 1  # the refused trigger_and_wait made nothing
    # asyncio's timers still work: a real, short wait times out as it should.
    blocker = asyncio.Event()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(blocker.wait(), 0.01)
    await kf.run_until_idle(timeout=5)


@pytest.mark.parametrize("delay", [math.nan, math.inf, -1, "1", True])
def test_retry_delays_must_be_finite_seconds(delay: Any) -> None:
    with pytest.raises(ValueError, match="Retry delay must be a finite number"):
        keyflow.Retry(delay=delay)


async def test_a_handler_raising_retry_with_nan_fails_its_attempt_cleanly(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job(retries=1, backoff=0, concurrency_key="k")
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        raise keyflow.Retry(delay=math.nan)

    await kf.start()
    run = await job.trigger_and_wait({}, labels={"team": "a"}, timeout=5)
    assert run.status is RunStatus.FAILED
    assert run.errors[0].type == "ConfigurationError"  # a keyflow error, and a ValueError
    assert [r.id for r in await kf.list_runs(labels={"team": "a"})] == [run.id]


CONFIGURATION: list[tuple[str, dict[str, Any], str]] = [
    ("keyflow", {"event_buffer": "x"}, "event_buffer"),
    ("keyflow", {"event_buffer": 0}, "event_buffer"),
    ("keyflow", {"grace": "x"}, "grace"),
    ("keyflow", {"grace": math.nan}, "grace"),
    ("keyflow", {"grace": math.inf}, "grace"),
    ("keyflow", {"cancel_grace": -1}, "cancel_grace"),
    ("keyflow", {"clock": 5}, "clock"),
    ("keyflow", {"workers": "4"}, "workers"),
    ("keyflow", {"seed": 1.5}, "seed"),
    ("job", {"timeout": "5"}, "timeout"),
    ("job", {"timeout": math.nan}, "timeout"),
    ("job", {"timeout": math.inf}, "timeout"),
    ("job", {"name": 5}, "job name"),
    ("job", {"name": ""}, "job name"),
    ("job", {"name": SURROGATE}, "job name is not valid Unicode"),
    ("job", {"backoff": math.nan}, "backoff"),
    ("job", {"backoff": math.inf}, "backoff"),
    ("job", {"backoff": -1}, "backoff"),
    ("job", {"backoff": "1"}, "backoff"),
    ("job", {"retries": "2"}, "retries"),
    ("job", {"concurrency_key": SURROGATE}, "concurrency_key"),
    ("backoff", {"initial": "1"}, "initial"),
    ("backoff", {"initial": math.nan}, "initial"),
    ("backoff", {"maximum": math.inf}, "maximum"),
    ("backoff", {"factor": math.nan}, "factor"),
    ("backoff", {"factor": 0.5}, "factor"),
    ("backoff", {"jitter": "0.1"}, "jitter"),
    ("backoff", {"jitter": 2}, "jitter"),
]


@pytest.mark.parametrize(("target", "options", "name"), CONFIGURATION)
def test_bad_configuration_is_refused_where_it_is_given(
    target: str, options: dict[str, Any], name: str
) -> None:
    async def handler(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    def configure() -> None:
        if target == "keyflow":
            keyflow.Keyflow(**options)
        elif target == "job":
            keyflow.Keyflow().job(**options)(handler)
        else:
            Backoff(**options)

    with pytest.raises(keyflow.ConfigurationError, match=name) as caught:
        configure()
    assert isinstance(caught.value, ValueError)  # a ConfigurationError is a ValueError too


async def test_bad_call_arguments_are_refused_with_the_option_named(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    with pytest.raises(keyflow.ConfigurationError, match="buffer"):
        kf.events(buffer=-1)
    with pytest.raises(keyflow.ConfigurationError, match="buffer"):
        kf.events(buffer="x")  # type: ignore[arg-type]
    with pytest.raises(keyflow.ConfigurationError, match="grace"):
        await kf.stop(grace=math.nan)
    with pytest.raises(keyflow.ConfigurationError, match="limit"):
        await kf.list_runs(limit="10")  # type: ignore[arg-type]
    with pytest.raises(keyflow.ConfigurationError, match="unknown status 'bogus'"):
        await kf.list_runs(status="bogus")
    with pytest.raises(keyflow.ConfigurationError, match="job must be a string"):
        await kf.count_runs(job=5)  # type: ignore[arg-type]
    with pytest.raises(keyflow.ConfigurationError, match="prefix"):
        kf.keys(prefix=5)  # type: ignore[arg-type]
    with pytest.raises(keyflow.RunNotFoundError, match="run ids are strings"):
        await kf.wait({"id": 1})  # type: ignore[arg-type]
    assert kf.running  # nothing above stopped it


@pytest.mark.parametrize("parent", [5, {}, "", SURROGATE])
async def test_parent_run_ids_are_checked(make_keyflow: MakeKeyflow, parent: Any) -> None:
    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    with pytest.raises(keyflow.TriggerError, match="parent_run_id"):
        await job.trigger(parent_run_id=parent)
    assert await kf.list_runs() == []


# -- label filters and free text: every backend finds the same runs ------------------

ODD_LABELS = [
    {"ключ": "значение"},
    {"équipe": "données"},
    {'say "hi"': "x"},
    {"nul": "a\x00b"},
    {"a.b": "dotted"},
    {"$.labels": "path-like"},
    {"emoji": "😀"},
]


async def test_label_filters_find_any_name_and_value(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    odd = ODD_LABELS
    if storage_url.startswith("postgresql"):  # its text holds no NUL: that run is refused
        odd = [labels for labels in ODD_LABELS if "\x00" not in labels.get("nul", "")]
        with pytest.raises(keyflow.InvalidInputError, match="NUL"):
            await job.trigger({}, labels={"nul": "a\x00b"})
    made = [(await job.trigger({}, labels=labels)).run_id for labels in odd]
    await kf.run_until_idle(timeout=5)
    for run_id, labels in zip(made, odd, strict=True):
        found = await kf.list_runs(labels=labels)
        assert [r.id for r in found] == [run_id], labels
        assert await kf.count_runs(labels=labels) == 1
    assert await kf.list_runs(labels={"nul": "a"}) == []  # NUL is not an end of text


async def test_free_text_ignores_case_beyond_ascii(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    @kf.job()
    async def job(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    await kf.start()
    made = await job.trigger({"team": "Équipe Données"})
    await job.trigger({"team": "other"})
    await kf.run_until_idle(timeout=5)
    for text in ("équipe", "ÉQUIPE", "DONNÉES", "équipe données"):
        assert [r.id for r in await kf.list_runs(text=text)] == [made.run_id], text
    assert await kf.count_runs(text="ÉQUIPE") == 1
