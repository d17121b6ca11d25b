"""Shared fixtures: a factory for schedulers on every backend, and a virtual clock.

``make_keyflow`` builds on ``storage_url``, which is parametrised over the in-memory,
SQLite, JSON-file and PostgreSQL backends: every scheduler-level test is the storage
contract too. A module that needs one particular storage overrides ``storage_url``.

PostgreSQL is the one at ``$KEYFLOW_TEST_POSTGRES`` (the machine's own by default); each
test gets a schema of its own, dropped after it. Where none is reachable, the PostgreSQL
cases skip, saying so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow.testing import VirtualClock

from .pg import drop_schemas, postgres_url, schema_of

MakeKeyflow = Callable[..., keyflow.Keyflow]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


BACKENDS = ("memory", "sqlite", "json", "postgresql", "postgresql-shared")
DURABLE = ("sqlite", "json", "postgresql")
"""The backends whose runs survive a restart."""


def storage_url_for(backend: str, directory: Path) -> str:
    """A fresh storage URL of ``backend`` in ``directory``.

    For ``postgresql``: a schema named after ``directory`` (the same directory, the same
    schema: a reopen finds what was written); skips the test when PostgreSQL is not
    reachable.
    """
    if backend == "memory":
        return "memory://"
    if backend == "postgresql":
        return postgres_url(directory) + "&mode=single"  # one writing process
    if backend == "postgresql-shared":
        return postgres_url(directory) + "&mode=shared"  # many processes may share it
    suffix = "db" if backend == "sqlite" else "json"
    return f"{backend}:///{directory / f'runs.{suffix}'}"


def fresh_storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fixture's body: the URL of ``request.param`` in ``tmp_path``, cleaned up after.

    A module's own ``storage_url`` fixture (over other backends) yields from it.
    """
    url = storage_url_for(request.param, tmp_path)
    yield url
    if request.param.startswith("postgresql"):
        drop_schemas(schema_of(url))


def files_only(url: str, what: str) -> None:
    """Skip a test of storage files (paths, file locks, disks) on a database: ``what`` says."""
    if url.startswith("postgresql"):
        pytest.skip(f"{what}: a matter of storage files, which PostgreSQL has none of")


def shared_differs(url: str, what: str, documented: str) -> None:
    """Skip on shared storage a test of ``what``, which ``documented`` says differs there."""
    if url.endswith("mode=shared"):
        pytest.skip(f"{what}: on shared storage {documented} (docs/deployment.md)")


def sync_reads_are_local(url: str, what: str) -> None:
    """Skip on shared storage a test of ``what`` through the synchronous lane reads.

    There ``lane()``, ``keys()``, ``lane_states()`` and ``statistics()`` show only the
    runs this process executes, not those waiting in the database (docs/deployment.md,
    "Reads"); the async reads answer from the database.
    """
    shared_differs(url, what, "the synchronous reads show this process's runs only")


async def get_run_after_stop(kf: keyflow.Keyflow, url: str, run_id: str) -> keyflow.Run | None:
    """``kf.get_run(run_id)`` after ``kf.stop()``, read through a read-only backend on shared
    storage, whose stopped process holds no run in memory (its runs are the database's)."""
    if not url.endswith("mode=shared"):
        return await kf.get_run(run_id)
    from keyflow.cli import read_only_url
    from keyflow.storage_backends import open_backend

    reader = open_backend(read_only_url(url), retention=10_000)
    await reader.open()
    try:
        return await reader.get_run(run_id)
    finally:
        await reader.close()


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_storage_url(request, tmp_path)


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_schemas_left() -> Iterator[None]:
    """Schemas tests made without ``storage_url`` (a hypothesis example's): gone at the end."""
    yield
    drop_schemas()


@pytest.fixture
async def make_keyflow(clock: VirtualClock, storage_url: str) -> AsyncIterator[MakeKeyflow]:
    """Build a Keyflow on ``storage_url`` and a virtual clock; stopped at teardown.

    Register jobs on it, then ``await kf.start()`` (or use the ``started`` helper).
    """
    created: list[keyflow.Keyflow] = []

    def make(**options: Any) -> keyflow.Keyflow:
        options.setdefault("clock", clock)
        options.setdefault("storage", storage_url)
        options.setdefault("workers", 4)
        options.setdefault("seed", 1)
        kf = keyflow.Keyflow(**options)
        created.append(kf)
        return kf

    async with AsyncExitStack():
        yield make
    for kf in created:
        await kf.stop(grace=0)
