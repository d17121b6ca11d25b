"""Siblings of the reliability defects, found by trying the fixes as a hostile user would.

Each test names its class: a handler's own cancellation, values too big or too deep,
crash suspects, abandoned handlers, locks, cancels across restarts, corrupt rows,
numbers beyond range, and configuration that fails at a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow import RunStatus
from keyflow.cli import read_only_url
from keyflow.storage_backends import open_backend

from .conftest import DURABLE, MakeKeyflow, fresh_storage_url, storage_url_for
from .fakes import DiskLikeBackend
from .test_durability import Recorder, stored_run, write_records


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


# -- a handler's own cancellation is its exception, never the worker's end -----------


async def test_handlers_that_cancel_their_own_task_keep_every_worker(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow(workers=2)

    @kf.job()
    async def deadline_idiom(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        handle = asyncio.get_running_loop().call_later(0, asyncio.current_task().cancel)  # type: ignore[union-attr]
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise TimeoutError("too slow") from None
        finally:
            handle.cancel()

    @kf.job()
    async def bare_self_cancel(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    @kf.job()
    async def cancel_never_awaited(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # and returns at once: the cancel is still pending on the task
        return "returned"

    @kf.job()
    async def ordinary(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        return "ran"

    await kf.start()
    for job in (deadline_idiom, bare_self_cancel, cancel_never_awaited) * 3:
        run = await job.trigger_and_wait({}, timeout=5)
        assert run.status in (RunStatus.FAILED, RunStatus.COMPLETED), run
    deadline = await deadline_idiom.trigger_and_wait({}, timeout=5)
    assert deadline.errors[0].type == "TimeoutError"
    bare = await bare_self_cancel.trigger_and_wait({}, timeout=5)
    assert (bare.status, bare.errors[0].type, bare.attempt) == (
        RunStatus.FAILED,
        "CancelledError",
        1,
    )
    # Every worker is alive: twice as many ordinary runs as workers all complete.
    results = await asyncio.gather(*(ordinary.trigger_and_wait({}, timeout=5) for _ in range(4)))
    assert {r.output for r in results} == {"ran"}
    assert kf.statistics().workers == 2


# -- values: too big, too deep, too long to print --------------------------------------


async def test_huge_text_from_a_handler_is_cut_and_huge_values_are_refused(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job(retries=70, backoff=0)
    async def loud(ctx: keyflow.RunContext, input: dict[str, Any]) -> Any:
        if input["kind"] == "log":
            ctx.log.info("x" * 50_000, data="y" * 50_000)
            ctx.progress(1, 2, "z" * 50_000)
            return "fine"
        if input["kind"] == "output":
            return {"blob": "b" * 2_000_000}
        raise ValueError("e" * 50_000)  # every attempt: more errors than are kept

    await kf.start()
    logged = await loud.trigger_and_wait({"kind": "log"}, timeout=10)
    assert logged.status is RunStatus.COMPLETED
    assert len(logged.logs[0].message) < 10_100
    assert "more characters" in logged.logs[0].message
    assert "too many to keep" in logged.logs[0].data["data"]
    assert logged.progress is not None
    assert len(logged.progress.message or "") < 10_100
    output = await loud.trigger_and_wait({"kind": "output"}, timeout=10)
    assert output.status is RunStatus.FAILED
    assert "characters of JSON" in (output.error or "")
    errors = await loud.trigger_and_wait({"kind": "error"}, timeout=30)
    assert errors.status is RunStatus.FAILED
    assert len(errors.errors) == 50  # the newest kept
    assert errors.errors[-1].attempt == 71
    assert len(errors.errors[-1].message) < 10_100
    with pytest.raises(keyflow.InvalidInputError, match="characters of JSON"):
        await loud.trigger({"kind": "log", "blob": "i" * 2_000_000})
    # Short values, each written as six-character escapes: over the limit all the same.
    escaped = {f"k{n}": "\x01" * 4000 for n in range(60)}
    with pytest.raises(keyflow.InvalidInputError, match="characters of JSON"):
        await loud.trigger(escaped)
    with pytest.raises(keyflow.InvalidInputError, match="characters of JSON"):
        await loud.trigger({"\x01" * 200_000: 1})  # a long key counts too
    assert kf.statistics().storage_error is None


async def test_nesting_deeper_than_storage_reads_is_refused_or_fails_its_run(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job()
    async def deep(ctx: keyflow.RunContext, input: dict[str, Any]) -> Any:
        if input["kind"] == "log":
            ctx.log.info("deep", value=nested(2_000))
            return "logged"
        return nested(150)

    await kf.start()
    for depth in (101, 2_000):
        with pytest.raises(keyflow.InvalidInputError, match="nests deeper than 100"):
            await deep.trigger({"kind": "input", "value": nested(depth)})
    async with kf.events():  # snapshots for subscribers must not choke on depth either
        accepted = await deep.trigger({"kind": "input", "value": nested(95)})
        run = await kf.wait(accepted.run_id, timeout=5)
    assert run.status is RunStatus.FAILED
    assert "nests deeper than 100" in (run.error or "")
    logged = await deep.trigger_and_wait({"kind": "log"}, timeout=5)
    assert logged.status is RunStatus.COMPLETED  # a log line never costs the run


async def test_an_application_that_lowers_pythons_integer_limit_wedges_nothing(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job()
    async def big(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
        return 10**700

    await kf.start()
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)  # some applications harden themselves so
    try:
        run = await big.trigger_and_wait({}, timeout=5)
        assert run.status is RunStatus.FAILED
        assert "longer than 640 digits" in (run.error or "")
        with pytest.raises(keyflow.InvalidInputError, match="640 digits"):
            await big.trigger({"n": 10**700})
        assert kf.statistics().storage_error is None
    finally:
        sys.set_int_max_str_digits(before)


# -- numbers beyond range, and sizes nobody means -----------------------------------


HUGE = 10**400  # beyond a float


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: keyflow.Keyflow(grace=HUGE), "grace"),
        (lambda: keyflow.Keyflow(cancel_grace=HUGE), "cancel_grace"),
        (lambda: keyflow.Keyflow(workers=10**20), "workers"),
        (lambda: keyflow.Keyflow(event_buffer=10**20), "event_buffer"),
        (lambda: keyflow.Backoff(initial=HUGE), "initial"),
        (lambda: keyflow.Backoff(maximum=1e308), "maximum"),
        (lambda: keyflow.Retry(delay=HUGE), "Retry delay"),
        (lambda: keyflow.Keyflow().job(timeout=HUGE), "timeout"),
        (lambda: keyflow.Keyflow().job(retries=10**5000), "retries"),
        (lambda: keyflow.Keyflow(storage="sqlite:///a\x00b.db"), "NUL"),
    ],
)
def test_numbers_beyond_range_are_refused_by_name(build: Any, name: str) -> None:
    with pytest.raises(keyflow.ConfigurationError, match=name):
        build()


async def test_call_arguments_beyond_range_are_refused_by_name(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()
    kf.job("job")(Recorder().handler)
    await kf.start()
    result = await kf.trigger("job", {})
    with pytest.raises(keyflow.InvalidTriggerError, match="delay"):
        await kf.trigger("job", {}, delay=HUGE)
    with pytest.raises(keyflow.ConfigurationError, match="timeout"):
        await kf.wait(result.run_id, timeout=HUGE)
    with pytest.raises(keyflow.ConfigurationError, match="limit"):
        await kf.list_runs(limit=2**63)


async def test_a_huge_progress_number_fails_the_run_with_a_clear_message(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()

    @kf.job()
    async def progress(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ctx.progress(HUGE)

    await kf.start()
    run = await progress.trigger_and_wait({}, timeout=5)
    assert "progress current must be a finite number" in (run.error or "")


def test_backoff_jitter_never_exceeds_the_maximum() -> None:
    import random

    backoff = keyflow.Backoff(initial=100, maximum=100, jitter=1)
    rng = random.Random(1)
    assert max(backoff.delay(5, rng) for _ in range(500)) <= 100


# -- crash suspects hold no worker while they wait ------------------------------------


async def test_runs_a_crash_cut_short_wait_their_turn_without_holding_workers(
    tmp_path: Path,
) -> None:
    url = storage_url_for("sqlite", tmp_path)
    await write_records(
        url,
        *(stored_run(f"s{n}", RunStatus.RUNNING, key=f"k{n}", attempt=1) for n in range(4)),
    )
    release = asyncio.Event()
    kf = keyflow.Keyflow(storage=url, workers=2)

    @kf.job("work")
    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        await release.wait()

    @kf.job()
    async def fresh(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        return "done"

    async with kf:
        # One suspect runs; three wait without a worker: new work still flows.
        new = await fresh.trigger_and_wait({}, timeout=5)
        assert new.output == "done"
        running = await kf.list_runs(status=RunStatus.RUNNING)
        assert len(running) == 1
        release.set()
        await kf.run_until_idle(timeout=10)
        assert {r.status for r in await kf.list_runs(job="work")} == {RunStatus.COMPLETED}


# -- abandoned handlers, locks and cancels across stops and restarts ------------------


@pytest.fixture(params=DURABLE)
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_storage_url(request, tmp_path)


async def test_storage_stays_locked_while_an_abandoned_handler_runs(durable_url: str) -> None:
    kf = keyflow.Keyflow(storage=durable_url, cancel_grace=0.01)
    started = asyncio.Event()
    release = asyncio.Event()

    @kf.job()
    async def deaf(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    await kf.start()
    await deaf.trigger({})
    await started.wait()
    await kf.stop(grace=0)  # returns: the handler is abandoned
    successor = keyflow.Keyflow(storage=durable_url)
    with pytest.raises(keyflow.StorageLockedError):
        await successor.start()  # it would run that run while the handler still runs
    release.set()
    await kf.stop()  # a later stop() waits until the handler ended and storage closed
    again = keyflow.Keyflow(storage=durable_url)
    again.job("deaf")(Recorder().handler)
    async with again:
        await again.run_until_idle(timeout=5)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
async def test_another_name_for_the_same_file_meets_the_same_lock(
    tmp_path: Path, link: str
) -> None:
    real = tmp_path / "real.db"
    first = keyflow.Keyflow(storage=f"sqlite:///{real}")
    await first.start()
    other = tmp_path / "other.db"
    if link == "symlink":
        other.symlink_to(real)
    else:
        os.link(real, other)
    try:
        with pytest.raises(keyflow.StorageLockedError):
            await keyflow.Keyflow(storage=f"sqlite:///{other}").start()
    finally:
        await first.stop()


async def test_a_json_store_behind_a_symlink_meets_the_same_lock(tmp_path: Path) -> None:
    real = tmp_path / "runs.json"
    first = keyflow.Keyflow(storage=f"json:///{real}")
    await first.start()
    (tmp_path / "other.json").symlink_to(real)
    try:
        with pytest.raises(keyflow.StorageLockedError):
            await keyflow.Keyflow(storage=f"json:///{tmp_path / 'other.json'}").start()
    finally:
        await first.stop()


async def test_a_cancel_is_honoured_across_a_stop_and_a_restart(durable_url: str) -> None:
    kf = keyflow.Keyflow(storage=durable_url, cancel_grace=10)
    started = asyncio.Event()
    release = asyncio.Event()
    ran: list[int] = []

    @kf.job()
    async def stubborn(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        ran.append(ctx.attempt)
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await release.wait()  # takes a while to give up
        await release.wait()

    await kf.start()
    result = await stubborn.trigger({})
    await started.wait()
    cancelling = asyncio.ensure_future(kf.cancel(result.run_id))
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(kf.stop(grace=0))
    await asyncio.sleep(0)
    release.set()
    await stopping
    cancelling.cancel()
    again = keyflow.Keyflow(storage=durable_url)
    again.job("stubborn")(stubborn.handler)
    async with again:
        await again.run_until_idle(timeout=5)
        run = await again.get_run(result.run_id)
    assert run is not None
    assert run.status is RunStatus.CANCELLED
    assert ran == [1]  # never executed again


async def test_a_cancel_survives_a_crash(tmp_path: Path) -> None:
    url = storage_url_for("sqlite", tmp_path)
    record = stored_run("c", RunStatus.PENDING, cancel_requested=True, attempt=1)
    await write_records(url, record)
    recorder = Recorder()
    kf = keyflow.Keyflow(storage=url)
    kf.job("work")(recorder.handler)
    async with kf:
        await kf.run_until_idle(timeout=5)
        run = await kf.get_run("c")
    assert run is not None
    assert run.status is RunStatus.CANCELLED
    assert recorder.started == []


# -- nothing outlives a stop or a failed start ----------------------------------------


async def test_a_failed_start_ends_subscriptions_and_leaves_no_writer(durable_url: str) -> None:
    holder = keyflow.Keyflow(storage=durable_url)
    await holder.start()
    try:
        kf = keyflow.Keyflow(storage=durable_url)
        events = kf.events()
        changes = kf.changes()
        with pytest.raises(keyflow.StorageLockedError):
            await kf.start()
        assert [e async for e in events] == []
        assert [c async for c in changes] == []
        assert [e async for e in kf.events()] == []
    finally:
        await holder.stop()


async def test_leaving_async_with_does_not_hang_on_failing_storage() -> None:
    backend = DiskLikeBackend()
    kf = keyflow.Keyflow(storage=backend, grace=0)

    @kf.job()
    async def work(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    async with asyncio.timeout(30):  # the stop gives storage at most 10 s for the rest
        async with kf:
            await work.trigger({}, delay=0)
            backend.fail = True  # its start cannot be written: it cannot run
            await asyncio.sleep(0)
    assert not kf.running


async def test_an_abandoned_handler_changes_nothing_after_the_stop() -> None:
    backend = DiskLikeBackend()
    kf = keyflow.Keyflow(storage=backend, cancel_grace=0.01)
    started = asyncio.Event()
    release = asyncio.Event()
    logged_after = asyncio.Event()

    @kf.job()
    async def late(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        started.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()
        ctx.log.info("after the stop")
        logged_after.set()

    await kf.start()
    await late.trigger({})
    await started.wait()
    await kf.stop(grace=0)
    writes = len(backend.writes)
    release.set()
    await logged_after.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(backend.writes) == writes  # nothing retried against closed storage


# -- stored rows that are not runs -----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("due_at", "soon", "'due_at'"),
        ("crashes", "2", "'crashes'"),
        ("attempt", "1", "'attempt'"),
        ("labels", ["a", "b"], "'labels'"),
        ("labels", {"a": 1}, "labels are not all text"),
    ],
)
async def test_a_stored_row_of_the_wrong_types_is_reported_with_its_file(
    tmp_path: Path, field: str, value: Any, message: str
) -> None:
    path = tmp_path / "runs.db"
    await write_records(f"sqlite:///{path}", stored_run("bad", RunStatus.PENDING))
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT data FROM keyflow_runs WHERE id = 'bad'").fetchone()
        row = json.loads(data)
        row[field] = value
        db.execute("UPDATE keyflow_runs SET data = ? WHERE id = 'bad'", (json.dumps(row),))
    db.close()
    kf = keyflow.Keyflow(storage=f"sqlite:///{path}")
    with pytest.raises(keyflow.StorageCorruptError, match=message) as caught:
        await kf.start()
    assert str(path) in str(caught.value)


# -- configuration that fails at a restart ---------------------------------------------


async def test_a_lane_limit_function_failing_for_a_stored_key_does_not_stop_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = storage_url_for("sqlite", tmp_path)
    await write_records(url, stored_run("a", RunStatus.QUEUED, key="legacy"))

    def limit(key: str) -> int:
        if key == "legacy":
            raise KeyError(key)
        return 2

    recorder = Recorder()
    kf = keyflow.Keyflow(storage=url, lane_limit=limit)
    kf.job("work")(recorder.handler)
    async with kf:
        await kf.run_until_idle(timeout=5)
        assert kf.lane("legacy").limit == 1
    assert [run_id for run_id, _, _ in recorder.started] == ["a"]
    assert any("runs one at a time" in r.getMessage() for r in caplog.records)


async def test_the_storage_of_a_read_only_file_system_can_be_read(tmp_path: Path) -> None:
    from .test_reliability_storage import small_disk

    with small_disk(tmp_path, size="2m") as disk:
        url = storage_url_for("sqlite", disk)
        kf = keyflow.Keyflow(storage=url)
        kf.job("work")(Recorder().handler)
        async with kf:
            made = await kf.trigger_and_wait("work", {}, timeout=5)
        remount = await asyncio.create_subprocess_exec("mount", "-o", "remount,ro", str(disk))
        assert await remount.wait() == 0
        reader = open_backend(read_only_url(url), retention=10)
        await reader.open()
        try:
            run = await reader.get_run(made.id)
        finally:
            await reader.close()
        assert run is not None
        assert run.status is RunStatus.COMPLETED
