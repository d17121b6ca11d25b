"""``keyflow worker`` at its edges, as a real process: it waits for a database that does
not answer (and stops at once when told to), starts when it answers, and refuses at once,
with one clear line and status 2, what retrying cannot mend."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

import keyflow

from .pg import POSTGRES, drop_schemas, postgres_url, run_aside, schema_for

pytestmark = pytest.mark.timeout(120)

SOURCE = Path(keyflow.__file__).resolve().parent.parent
"""Where the keyflow under test lives: the worker processes import the same one."""

APP = """
import keyflow

kf = keyflow.Keyflow("memory://", workers=0)


@kf.job()
async def work(ctx, input):
    return "done"


def make():
    raise ValueError("no settings file\\nat /etc/app.toml")


async def make_async():
    return kf
"""


class Worker:
    """A ``keyflow worker`` process in ``directory``; its stderr read line by line."""

    def __init__(self, directory: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE), str(directory)])}
        command = [sys.executable, "-m", "keyflow", "worker", "--log-level", "INFO", *args]
        self.process = subprocess.Popen(
            command, cwd=directory, env=env, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        with stream:
            for line in stream:
                self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first line (from now on) holding ``text``; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if line is None:
                raise AssertionError(f"the worker ended before saying {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = 30.0) -> tuple[int, list[str]]:
        """Its exit status and every line it wrote."""
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()  # leave no process behind
            self.process.wait()
            raise
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return status, self.seen


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "wapp.py").write_text(APP, encoding="utf-8")
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('boom at import')\n")
    return tmp_path


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    found = postgres_url(tmp_path) + "&lease=2"
    yield found
    drop_schemas(schema_for(tmp_path))


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def forwarder(port: int) -> Iterator[None]:
    """Listen on ``port`` and pass every connection on to the test's PostgreSQL."""
    target = urlsplit(POSTGRES)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    done = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Future[tuple[None, None]]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        writers.extend((writer, up_writer))
        both = asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        tasks.add(both)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        await done.wait()
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def main() -> None:
        loop.run_until_complete(serve())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join(10)


def _on_port(url: str, port: int) -> str:
    netloc = urlsplit(url).netloc
    host = netloc.rpartition("@")[2]
    return url.replace(host, f"127.0.0.1:{port}", 1)


# -- waiting for the database -----------------------------------------------------------


def test_an_unreachable_database_is_retried_until_sigterm_ends_it(app: Path) -> None:
    port = closed_port()
    worker = Worker(
        app, "--app", "wapp:kf", "--workers", "2", "--storage", _on_port(POSTGRES, port)
    )
    first = worker.wait_for("storage unreachable")
    assert "(try 1)" in first
    assert f"127.0.0.1:{port}" in first
    assert first.endswith("next try in 1 s")
    worker.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    status, lines = worker.finish()
    assert status == 0
    assert time.monotonic() - started < 5  # at once, not after the next pause
    assert not any("Traceback" in line for line in lines)
    assert any("stopped before its storage answered" in line for line in lines)


def test_a_worker_waits_for_the_database_then_runs_jobs(app: Path, url: str) -> None:
    port = closed_port()
    worker = Worker(app, "--app", "wapp:kf", "--workers", "2", "--storage", _on_port(url, port))
    try:
        worker.wait_for("storage unreachable (try 1)")
        with forwarder(port):  # the database answers from now on
            worker.wait_for("jobs work; stop with SIGTERM")

            async def trigger() -> keyflow.Run:
                kf = keyflow.Keyflow(url, workers=0)
                kf.job("work")(_unused)
                async with kf:
                    return await kf.trigger_and_wait("work", {}, timeout=30)

            done = run_aside(trigger)
            assert done.status is keyflow.RunStatus.COMPLETED
            assert done.output == "done"  # the worker ran it
            worker.process.send_signal(signal.SIGTERM)
            status, lines = worker.finish()
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
    assert status == 0
    assert sum("storage unreachable" in line for line in lines) in (1, 2)  # once per try


async def _unused(ctx: keyflow.RunContext, input: dict[str, object]) -> None:
    raise AssertionError("the worker process runs this job")


def test_what_retrying_cannot_mend_ends_the_worker_at_once(app: Path, url: str) -> None:
    async def newer() -> None:
        schema = schema_for(app)
        conn = await asyncpg.connect(POSTGRES)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(f'CREATE TABLE "{schema}".keyflow_schema (version int, writes int)')
            await conn.execute(f'INSERT INTO "{schema}".keyflow_schema VALUES (99, 0)')
        finally:
            await conn.close()

    run_aside(newer)
    base = POSTGRES.rpartition("/")[0]
    cases = [
        (url, "schema version 99, written by a newer keyflow"),
        (f"{base.replace('postgres@', 'no_such_role@')}/test", 'role "no_such_role"'),
        (f"{base}/no_such_database", 'database "no_such_database" does not exist'),
        (f"{POSTGRES}?lease=0", "lease must be"),
        (f"{POSTGRES}?schema=a&schema=b", "option 'schema' is given twice"),
    ]
    for storage, said in cases:
        status, lines = Worker(
            app, "--app", "wapp:kf", "--workers", "1", "--storage", storage
        ).finish()
        assert status == 2, (storage, lines)
        assert lines[-1].startswith("keyflow worker: "), (storage, lines)
        assert said in lines[-1], (storage, lines)
        assert not any("storage unreachable" in line for line in lines)


# -- applications and options it refuses -------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--app", "wapp:make"],
            "--app wapp:make raised ValueError: no settings file at /etc/app.toml",
        ),
        (
            ["--app", "brokenapp:kf"],
            "cannot import 'brokenapp' for --app: it raised RuntimeError: boom at import",
        ),
        (["--app", "missing:kf"], "cannot import 'missing' for --app: No module named 'missing'"),
        (["--app", "wapp:nothing"], "'wapp' has no 'nothing' (--app wapp:nothing)"),
        (["--app", "wapp:make_async"], "--app wapp:make_async is an async function"),
        (
            ["--app", "wapp:kf", "--storage", "sqlite:///r.db", "--workers", "0"],
            "--workers must be at least 1, got 0",
        ),
        (
            ["--app", "wapp:kf", "--storage", "sqlite:///r.db", "--workers", "-3"],
            "--workers must be at least 1, got -3",
        ),
        (["--app", "wapp:kf", "--storage", "sqlite:///r.db"], "would execute nothing (workers=0)"),
        (["--app", "wapp:kf", "--workers", "2"], "the storage is memory://"),
        (
            ["--app", "wapp:kf", "--workers", "2", "--storage", "memory://"],
            "the storage is memory://",
        ),
        (
            ["--app", "wapp:kf", "--workers", "2", "--storage", "sqlite:///r.db?mode=ro"],
            "read-only",
        ),
        (["--app", "wapp:kf", "--workers", "2", "--storage", f"{POSTGRES}?mode=ro"], "read-only"),
        (
            ["--app", "wapp:kf", "--workers", "1", "--grace", "-1"],
            "--grace must be a finite number",
        ),
        (
            ["--app", "wapp:kf", "--workers", "1", "--grace", "nan"],
            "--grace must be a finite number",
        ),
    ],
)
def test_a_bad_app_or_option_is_one_clear_line_and_status_2(
    app: Path, args: list[str], said: str
) -> None:
    status, lines = Worker(app, *args).finish()
    assert status == 2
    assert lines == [f"keyflow worker: {lines[0].partition(': ')[2]}"]  # one line, no traceback
    assert said in lines[0]
    assert not (app / "r.db").exists()  # nothing was opened


def test_a_worker_on_a_file_says_it_is_the_only_writer(app: Path) -> None:
    worker = Worker(app, "--app", "wapp:kf", "--workers", "1", "--storage", "sqlite:///r.db")
    warned = worker.wait_for("has one writer, this process")
    assert "postgresql:// storage is shared" in warned
    worker.wait_for("jobs work; stop with SIGTERM")
    worker.process.send_signal(signal.SIGINT)
    assert worker.finish()[0] == 0
