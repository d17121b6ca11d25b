"""The build under test is the one asked for (``make test`` runs the suite on both)."""

from __future__ import annotations

import os

import pytest

from keyflow.build import HOT_PATH_MODULES, compiled_modules, describe


def test_the_build_under_test_is_the_one_asked_for() -> None:
    wanted = os.environ.get("KEYFLOW_EXPECT_COMPILED")
    if wanted is None:
        pytest.skip("KEYFLOW_EXPECT_COMPILED is not set (make pytest-compiled sets it)")
    expected = list(HOT_PATH_MODULES) if wanted == "1" else []
    assert compiled_modules() == expected
    assert describe().startswith("compiled" if expected else "pure Python")


async def test_a_user_subclass_of_the_memory_backend_works_in_either_build() -> None:
    """The memory backend is sold as the fake to subclass; compiled, it must still be."""
    import keyflow
    from keyflow.storage_backends import MemoryBackend, WriteBatch

    class CountingBackend(MemoryBackend):
        synchronous = False  # a fake of a remote store: every write is awaited

        def __init__(self) -> None:
            super().__init__(retention=100)
            self.batches = 0

        async def write(self, batch: WriteBatch) -> None:
            self.batches += 1
            await super().write(batch)

    backend = CountingBackend()
    kf = keyflow.Keyflow(storage=backend)

    @kf.job
    async def noop(ctx: keyflow.RunContext, input: dict[str, object]) -> str:
        return "done"

    async with kf:
        result = await kf.trigger_and_wait("noop", {})
    assert result.output == "done"
    assert backend.batches >= 1  # the override ran


def test_compiled_extensions_live_inside_the_package() -> None:
    """No top-level module of ours beside the package (a wheel's files stay in keyflow/)."""
    import importlib.util

    assert importlib.util.find_spec("keyflow__mypyc") is None
