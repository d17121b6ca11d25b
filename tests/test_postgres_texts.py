"""Texts PostgreSQL cannot index (a job name, key, idempotency key or label longer than
``MAX_TEXT_BYTES``): refused before any write, by name, in both PostgreSQL modes, and
the scheduler goes on; the longest allowed texts are stored (the limit is under the
server's own). File storage takes such texts as they are."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow.runs import JSONObject
from keyflow.storage_backends.postgres_text import MAX_TEXT_BYTES

from .pg import drop_schemas, postgres_url, schema_for

pytestmark = pytest.mark.timeout(120)

HUGE = "k" * 1_000_000
"""1 MB: far beyond any index entry (compressed or not)."""


def incompressible(size: int, seed: int) -> str:
    """``size`` bytes of UTF-8 that compress badly (random code points of 1 to 4 bytes)."""
    rng = random.Random(seed)
    pools = [(0x21, 0x7E, 1), (0x100, 0x7FF, 2), (0x4E00, 0x9FFF, 3), (0x1F300, 0x1FAFF, 4)]
    out: list[str] = []
    left = size
    while left:
        low, high, width = rng.choice([p for p in pools if p[2] <= left])
        out.append(chr(rng.randint(low, high)))
        left -= width
    return "".join(out)


@pytest.fixture(params=["single", "shared"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh schema in each PostgreSQL mode, dropped after the test."""
    found = postgres_url(tmp_path) + ("&mode=single" if request.param == "single" else "")
    yield found
    drop_schemas(schema_for(tmp_path))


async def _noop(ctx: keyflow.RunContext, input: JSONObject) -> None:
    return None


async def test_texts_too_long_to_index_fail_their_triggers_alone(
    url: str, request: pytest.FixtureRequest
) -> None:
    kf = keyflow.Keyflow(storage=url, workers=2)
    kf.job("work")(_noop)
    kf.job("j" * (MAX_TEXT_BYTES + 1))(_noop)
    too_long: list[tuple[str, dict[str, Any]]] = [
        ("concurrency key", {"concurrency_key": HUGE}),
        ("idempotency key", {"idempotency_key": HUGE}),
        ("label value", {"labels": {"org": HUGE}}),
        ("label name", {"labels": {HUGE: "x"}}),
        ("concurrency key", {"concurrency_key": "é" * (MAX_TEXT_BYTES // 2 + 1)}),  # bytes
    ]
    async with kf:
        results = await asyncio.gather(
            *(kf.trigger("work", {}, **options) for _field, options in too_long),
            *(kf.trigger("work", {"n": n}, concurrency_key=f"fine{n}") for n in range(3)),
            return_exceptions=True,
        )
        for (field, _options), result in zip(too_long, results, strict=False):
            assert isinstance(result, keyflow.InvalidInputError), (field, result)
            message = str(result)
            assert f"its {field} is" in message
            assert f"at most {MAX_TEXT_BYTES} bytes" in message
            assert len(message) < 400  # the text itself is not in it
        assert all(isinstance(r, keyflow.TriggerResult) for r in results[len(too_long) :])
        with pytest.raises(keyflow.InvalidInputError, match="its job name is 1025 bytes long"):
            await kf.trigger("j" * (MAX_TEXT_BYTES + 1), {})
        await kf.run_until_idle(timeout=30)
        stored = await kf.list_runs(limit=100)
        assert sorted(r.concurrency_key or "" for r in stored) == ["fine0", "fine1", "fine2"]
        assert {r.status for r in stored} == {keyflow.RunStatus.COMPLETED}
        after = await kf.trigger_and_wait("work", {}, concurrency_key="after", timeout=30)
        assert after.status is keyflow.RunStatus.COMPLETED  # the scheduler goes on


async def test_a_batch_with_one_text_too_long_is_refused_whole(
    url: str, request: pytest.FixtureRequest
) -> None:
    kf = keyflow.Keyflow(storage=url, workers=1)
    kf.job("work")(_noop)
    async with kf:
        with pytest.raises(keyflow.InvalidInputError, match="concurrency key"):
            await kf.batch_trigger(
                [
                    keyflow.TriggerRequest("work", concurrency_key="fine"),
                    keyflow.TriggerRequest("work", concurrency_key=HUGE),
                ]
            )
        await kf.run_until_idle(timeout=30)
        assert await kf.count_runs() == 0


async def test_the_longest_texts_allowed_are_stored_and_found(url: str) -> None:
    kf = keyflow.Keyflow(storage=url, workers=1)
    name = incompressible(MAX_TEXT_BYTES, 1)
    kf.job(name)(_noop)
    key, idem, label, value = (incompressible(MAX_TEXT_BYTES, seed) for seed in (2, 3, 4, 5))
    assert all(len(t.encode()) == MAX_TEXT_BYTES for t in (name, key, idem, label, value))
    async with kf:
        options: dict[str, Any] = {"concurrency_key": key, "idempotency_key": idem}
        first = await kf.trigger(name, {}, labels={label: value}, **options)
        again = await kf.trigger(name, {}, labels={label: value}, **options)
        assert again.disposition is keyflow.Disposition.IDEMPOTENT
        assert (await kf.wait(first.run_id, timeout=30)).status is keyflow.RunStatus.COMPLETED
        found = await kf.list_runs(job=name, concurrency_key=key, labels={label: value})
        assert [r.id for r in found] == [first.run_id]


async def test_a_pause_of_a_name_too_long_never_blocks_storage(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    kf = keyflow.Keyflow(storage=url, workers=1)
    kf.job("work")(_noop)
    async with kf:
        with caplog.at_level(logging.WARNING, logger="keyflow"):
            await kf.pause(key=HUGE)
            await kf.pause(job="\x00")
            done = await kf.trigger_and_wait("work", {}, concurrency_key="k", timeout=30)
            assert done.status is keyflow.RunStatus.COMPLETED
            await kf.resume(key=HUGE)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("cannot keep the pause of key 'kkk" in w and "bytes long" in w for w in warnings)
    assert any("cannot keep the pause of job '\\x00'" in w for w in warnings)
    assert not any("write failed" in w or "not written" in w for w in warnings), warnings


@pytest.mark.parametrize("scheme", ["sqlite", "json"])
async def test_file_storage_takes_long_texts(scheme: str, tmp_path: Path) -> None:
    kf = keyflow.Keyflow(storage=f"{scheme}:///{tmp_path}/runs.{scheme}", workers=1)
    kf.job("work")(_noop)
    async with kf:
        result = await kf.trigger(
            "work", {}, concurrency_key=HUGE, idempotency_key=HUGE, labels={HUGE: HUGE}
        )
        assert (await kf.wait(result.run_id, timeout=30)).status is keyflow.RunStatus.COMPLETED
        assert [r.id for r in await kf.list_runs(concurrency_key=HUGE)] == [result.run_id]
