"""Shared fixtures: a factory for started schedulers on the in-memory backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

import keyflow
from keyflow.testing import VirtualClock

MakeKeyflow = Callable[..., keyflow.Keyflow]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def make_keyflow(clock: VirtualClock) -> AsyncIterator[MakeKeyflow]:
    """Build a Keyflow on memory storage and a virtual clock; stopped at teardown.

    Register jobs on it, then ``await kf.start()`` (or use the ``started`` helper).
    """
    created: list[keyflow.Keyflow] = []

    def make(**options: Any) -> keyflow.Keyflow:
        options.setdefault("clock", clock)
        options.setdefault("workers", 4)
        options.setdefault("seed", 1)
        kf = keyflow.Keyflow(**options)
        created.append(kf)
        return kf

    async with AsyncExitStack():
        yield make
    for kf in created:
        await kf.stop(grace=0)
