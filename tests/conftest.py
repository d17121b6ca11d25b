"""Shared fixtures: a factory for schedulers on every backend, and a virtual clock.

``make_keyflow`` builds on ``storage_url``, which is parametrised over the in-memory,
SQLite and JSON-file backends: every scheduler-level test is the storage contract too.
A module that needs one particular storage overrides ``storage_url``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow.testing import VirtualClock

MakeKeyflow = Callable[..., keyflow.Keyflow]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


BACKENDS = ("memory", "sqlite", "json")


def storage_url_for(backend: str, directory: Path) -> str:
    """A fresh storage URL of ``backend`` in ``directory``."""
    if backend == "memory":
        return "memory://"
    suffix = "db" if backend == "sqlite" else "json"
    return f"{backend}:///{directory / f'runs.{suffix}'}"


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return storage_url_for(request.param, tmp_path)


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
