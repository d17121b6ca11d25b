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


BACKENDS = ("memory", "sqlite", "json", "postgresql")
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
        # The scheduler suite's single-process semantics: the single-writer mode. Shared
        # mode (many processes) has suites of its own, tests/test_shared*.py.
        return postgres_url(directory) + "&mode=single"
    suffix = "db" if backend == "sqlite" else "json"
    return f"{backend}:///{directory / f'runs.{suffix}'}"


def fresh_storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fixture's body: the URL of ``request.param`` in ``tmp_path``, cleaned up after.

    A module's own ``storage_url`` fixture (over other backends) yields from it.
    """
    url = storage_url_for(request.param, tmp_path)
    yield url
    if request.param == "postgresql":
        drop_schemas(schema_of(url))


def files_only(url: str, what: str) -> None:
    """Skip a test of storage files (paths, file locks, disks) on a database: ``what`` says."""
    if url.startswith("postgresql"):
        pytest.skip(f"{what}: a matter of storage files, which PostgreSQL has none of")


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
