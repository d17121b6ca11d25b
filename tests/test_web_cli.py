"""``keyflow dashboard --storage URL``: a read-only dashboard over another process's file."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import keyflow
from keyflow.cli import allowed_hosts, dashboard_token, main, read_only_url
from keyflow.runs import Run
from keyflow.storage_backends import RunQuery, open_backend
from keyflow.storage_backends.jsonfile import JSONFileBackend
from keyflow.web import create_app
from keyflow.web.storage_source import opened

from .conftest import DURABLE, MakeKeyflow, fresh_storage_url
from .webkit import Gate, client, free_port


@pytest.fixture(params=DURABLE)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_storage_url(request, tmp_path)


async def test_a_storage_dashboard_follows_the_writer(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    gate = Gate()
    writer = make_keyflow(workers=2)
    writer.job("process")(gate.handler)
    await writer.start()
    first = await writer.trigger("process", {"org": "acme"}, concurrency_key="process:acme")
    await gate.any_started.wait()
    await writer.trigger("process", {}, concurrency_key="process:acme", coalesce="queue")
    await writer.trigger("process", {}, concurrency_key="process:acme", coalesce="queue")
    backend = open_backend(read_only_url(storage_url), retention=1000)
    if isinstance(backend, JSONFileBackend):
        backend.refresh_seconds = 0.0  # re-read the files at every request
    async with opened(backend) as source:
        source.poll_seconds = 0.0  # re-read at every request
        async with client(create_app(source, read_only=True)) as http:
            lanes = await http.get("/lanes")
            assert lanes.status_code == 200
            assert 'data-state="running+queued"' in lanes.text
            assert "Trigger" not in (await http.get("/")).text
            run_page = await http.get(f"/runs/{first.run_id}")
            assert 'data-status="running"' in run_page.text
            gate.open()
            await writer.run_until_idle()
            await writer.stop()
            lanes = await http.get("/lanes")
            assert 'data-state="running+queued"' not in lanes.text
            done = await http.get(f"/runs/{first.run_id}")
            assert 'data-status="completed"' in done.text
            refused = await http.post("/trigger", data={"job": "process"})
            assert refused.status_code == 403


def test_the_command_refuses_open_binds_without_a_token_and_memory_storage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dashboard", "--storage", "sqlite:///x.db", "--host", "0.0.0.0"])
    assert exited.value.code == 2
    assert "--token" in capsys.readouterr().err
    assert main(["dashboard", "--storage", "memory://"]) == 2
    assert "memory://" in capsys.readouterr().err
    for storage, token in [
        ("sqlite:///x.db", ["--token", "t"]),
        ("postgresql://kf@db/app", []),
        ("postgresql://kf@db/app?mode=ro", ["--token", "t"]),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(["dashboard", "--storage", storage, "--app", "myapp:kf", *token])
        assert exited.value.code == 2
        assert "--app names the jobs" in capsys.readouterr().err
    assert read_only_url("sqlite:///a.db") == "sqlite:///a.db?mode=ro"
    assert (
        read_only_url("sqlite:///a.db?synchronous=full")
        == "sqlite:///a.db?synchronous=full&mode=ro"
    )
    shared = "postgresql://kf@db/app?schema=k&lease=5&pool=3&mode=shared"
    assert read_only_url(shared) == "postgresql://kf@db/app?schema=k&mode=ro"  # opens
    assert open_backend(read_only_url(shared), retention=1).read_only


def test_the_token_comes_from_a_file_or_the_environment_before_argv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    env = {"KEYFLOW_DASHBOARD_TOKEN": "from-env"}
    assert dashboard_token("from-argv", str(secret), env) == "from-file"
    assert dashboard_token("from-argv", None, env) == "from-env"
    assert dashboard_token("from-argv", None, {}) == "from-argv"
    assert dashboard_token(None, None, {}) is None
    (tmp_path / "empty").write_text("\n")
    for bad in ("empty", "missing"):
        with pytest.raises(SystemExit) as exited:
            main(["dashboard", "--storage", "sqlite:///x.db", "--token-file", str(tmp_path / bad)])
        assert exited.value.code == 2
        assert "token file" in capsys.readouterr().err


def test_a_bind_beyond_loopback_answers_its_own_name() -> None:
    assert allowed_hosts("127.0.0.1") is None  # the app's default: loopback names only
    assert allowed_hosts("localhost") is None
    assert allowed_hosts("0.0.0.0") == ["*"]  # any name: the token guards it
    assert allowed_hosts("192.0.2.7") == ["192.0.2.7", "localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("2001:db8::1")[0] == "[2001:db8::1]"  # type: ignore[index]


async def test_the_command_takes_its_token_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    kf = keyflow.Keyflow(storage=url)
    kf.job("process")(Gate().handler)
    await kf.start()
    await kf.trigger("process", {}, concurrency_key="process:acme", delay=600)
    port = free_port()
    command = [sys.executable, "-m", "keyflow.cli", "dashboard", "--storage", url]
    env = {**os.environ, "KEYFLOW_DASHBOARD_TOKEN": "env-s3cret"}
    proc = subprocess.Popen(  # noqa: ASYNC220  # a child to kill, not a call to await
        [*command, "--port", str(port)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        banner = await asyncio.to_thread(proc.stdout.readline)
        assert "?token=env-s3cret" in banner
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(100):  # the banner comes just before uvicorn listens
                try:
                    refused = await http.get("/lanes")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert refused.status_code == 403
            bearer = {"Authorization": "Bearer env-s3cret"}
            assert (await http.get("/lanes", headers=bearer)).status_code == 200
            moved = await http.get("/lanes?token=env-s3cret")
            assert moved.status_code == 303
            assert moved.headers["location"] == "/lanes"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        await kf.stop()


async def test_the_command_serves_a_storage_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    kf = keyflow.Keyflow(storage=url)
    kf.job("process")(Gate().handler)
    await kf.start()
    await kf.trigger("process", {}, concurrency_key="process:acme", delay=600)
    port = free_port()
    command = [sys.executable, "-m", "keyflow.cli", "dashboard", "--storage", url]
    proc = subprocess.Popen(  # noqa: ASYNC220  # a child to kill, not a call to await
        [*command, "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        banner = await asyncio.to_thread(proc.stdout.readline)
        assert f"127.0.0.1:{port}" in banner
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(100):  # the banner comes just before uvicorn listens
                try:
                    response = await http.get("/lanes")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert response.status_code == 200
            assert "process:acme" in response.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        await kf.stop()


async def test_a_storage_dashboard_tells_the_truth_and_idles_cheaply(
    make_keyflow: MakeKeyflow, storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()
    writer = make_keyflow(workers=2)
    writer.job("process")(gate.handler)
    writer.job("crawl")(gate.handler)
    await writer.start()
    gate.open()
    await writer.trigger("crawl", {}, concurrency_key="repo10")
    await writer.trigger("crawl", {}, concurrency_key="repo4")
    await writer.run_until_idle()
    gate.opened = False  # from now on, runs wait for the test
    running = await writer.trigger("process", {}, concurrency_key="process:acme")
    await gate.any_started.wait()
    queued = await writer.trigger("process", {}, concurrency_key="process:acme", coalesce="queue")
    for _ in range(2):
        await writer.trigger("process", {}, concurrency_key="process:acme", coalesce="queue")
    backend = open_backend(read_only_url(storage_url), retention=1000)
    if isinstance(backend, JSONFileBackend):
        backend.refresh_seconds = 0.0
    async with opened(backend) as source, client(create_app(source)) as http:
        lanes = await http.get("/lanes")
        keys = re.findall(r'<tr class="lane-([^"]*)" data-key="([^"]+)"', lanes.text)
        assert keys == [  # every key with runs in storage, idle ones too, in natural order
            ("running-queued", "process:acme"),
            ("idle", "repo4"),
            ("idle", "repo10"),
        ]
        assert 'data-coalesced="2"' in lanes.text
        counts = await source.counts()
        assert counts.coalesced_total == 2
        assert counts.lanes_by_state == {"idle": 2, "running": 0, "running+queued": 1}
        assert source.jobs() == ["crawl", "process"]
        assert '<option value="crawl"' in (await http.get("/runs")).text

        reads: list[RunQuery] = []  # the scans: unfinished runs, and the catch-up
        real = backend.list_runs

        async def counting(query: RunQuery) -> list[Run]:
            if query.limit >= 5_000:
                reads.append(query)
            return await real(query)

        monkeypatch.setattr(backend, "list_runs", counting)
        for _ in range(3):
            await http.get("/lanes")
            await http.get("/")
        assert reads == []  # nothing written since: no scan (the pages' own queries only)
        changes = source.changes()
        source.poll_seconds = 0.001
        waiting = asyncio.ensure_future(anext(changes))
        await writer.trigger("process", {}, concurrency_key="process:acme", coalesce="queue")
        await writer.trigger("crawl", {}, concurrency_key="repo11", delay=60)
        assert (await asyncio.wait_for(waiting, 10)).everything  # the write is noticed
        await changes.aclose()  # type: ignore[attr-defined]
        gate.open()
        await writer.run_until_idle()
        await writer.stop()
        lanes = await http.get("/lanes")
        assert "repo11" in lanes.text
        assert reads  # the write was read
        counts = await source.counts()
        assert counts.coalesced_total == 3  # the run joined after the last look counts too
        final = await source.run(queued.run_id)
        assert final is not None
        assert final.trigger_count == 4
    assert running.run_id != queued.run_id


async def test_background_sampling_stops_quietly_when_storage_closes(
    make_keyflow: MakeKeyflow, storage_url: str
) -> None:
    writer = make_keyflow()
    writer.job("process")(Gate().handler)
    await writer.start()
    await writer.trigger("process", {}, concurrency_key="k", delay=60)
    backend = open_backend(read_only_url(storage_url), retention=1000)
    async with opened(backend) as source:
        app = create_app(source)
        async with client(app) as http:
            assert (await http.get("/")).status_code == 200
        sampler = app.state.dashboard.sampler
        assert sampler.task is not None  # sampling in the background since the first page
        assert source.alive
    assert not source.alive
    await sampler.stop()  # ends without an error, whatever it was doing
    sampler.ensure_running()
    await asyncio.wait_for(sampler.task, 5)  # a closed source: nothing to sample
    assert sampler.task.exception() is None
