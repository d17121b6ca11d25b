"""The test suite's PostgreSQL: one reachability check per session, schemas per test.

``$KEYFLOW_TEST_POSTGRES`` names the server (``postgresql://postgres@127.0.0.1:5432/test``
by default: the machine's own, which CI machines start themselves). Test schemas are
named ``kf_test_<pid>_<hash of a directory>``: a session drops only its own.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

import keyflow
from keyflow.shared.backend import SharedPostgreSQLBackend
from keyflow.shared.coordinator import SharedCoordinator

POSTGRES = os.environ.get("KEYFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
"""The server the PostgreSQL tests use."""

PREFIX = f"kf_test_{os.getpid()}_"
"""The names of this session's schemas start so."""

T = TypeVar("T")


def run_aside(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` on an event loop of its own, in a thread (any loop here is left be)."""
    found: list[T] = []
    failed: list[BaseException] = []

    def main() -> None:
        try:
            found.append(asyncio.run(_call(work)))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return found[0]


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


@functools.cache
def unreachable() -> str | None:
    """Why PostgreSQL cannot be used here, or None (asked once per session)."""
    try:
        import asyncpg
    except ImportError as exc:
        return f"asyncpg is not installed ({exc})"

    async def check() -> None:
        conn = await asyncpg.connect(POSTGRES, timeout=3)
        await conn.close()

    try:
        run_aside(check)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def need_postgres() -> None:
    """Skip the test, saying why, unless PostgreSQL is reachable."""
    problem = unreachable()
    if problem is not None:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES}: {problem}")


def schema_for(directory: Path) -> str:
    """The test schema of ``directory``."""
    return PREFIX + hashlib.sha256(str(directory).encode()).hexdigest()[:16]


def postgres_url(directory: Path) -> str:
    """The storage URL of ``directory``'s schema (skips if PostgreSQL is unreachable)."""
    need_postgres()
    return f"{POSTGRES}?schema={schema_for(directory)}"


def schema_of(url: str) -> str:
    """The ``schema`` option of a storage URL."""
    return parse_qs(urlsplit(url).query)["schema"][0]


def drop_schemas(*names: str) -> None:
    """Drop these schemas, or with none named every schema of this session."""
    if not (unreachable.cache_info().currsize and unreachable() is None):
        return  # PostgreSQL was never used

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES, timeout=3)
        try:
            targets = list(names) or [
                name
                for (name,) in await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)", PREFIX
                )
            ]
            # A scheduler a failed test left running may hold locks: never wait forever.
            await conn.execute("SET lock_timeout = '10s'")
            for name in targets:
                try:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                except asyncpg.LockNotAvailableError:
                    continue  # the session's last sweep drops it
        finally:
            await conn.close()

    run_aside(drop)


def shared_schema(directory: Path) -> Iterator[str]:
    """A fresh schema of ``directory`` in shared mode, short leases (2 s), dropped after:
    the body of a ``url`` fixture."""
    yield postgres_url(directory) + "&lease=2"
    drop_schemas(schema_for(directory))


def coordinator_of(kf: keyflow.Keyflow) -> SharedCoordinator:
    """The shared coordinator of a scheduler on shared PostgreSQL storage."""
    backend = kf._backend
    assert isinstance(backend, SharedPostgreSQLBackend)
    return backend.coordinator
