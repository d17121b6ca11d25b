"""``@kf.job`` both ways, and the typed trigger options (issue: first contact)."""

from __future__ import annotations

from typing import Any

import pytest

import keyflow

from .conftest import MakeKeyflow


async def test_kf_job_works_bare_and_with_options(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    @kf.job
    async def bare(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        """Bare decorator."""
        return "bare"

    @kf.job()
    async def empty(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        return "empty"

    @kf.job("named", retries=2)
    async def renamed(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        return "named"

    @kf.job(name="keyword")
    async def by_keyword(ctx: keyflow.RunContext, input: dict[str, Any]) -> str:
        return "keyword"

    # mypy checks these: each decorator gives a Job, not the function or None.
    jobs: list[keyflow.Job] = [bare, empty, renamed, by_keyword]
    assert [job.name for job in jobs] == ["bare", "empty", "named", "keyword"]
    assert sorted(kf.jobs) == ["bare", "empty", "keyword", "named"]
    assert bare.__doc__ == "Bare decorator."
    assert renamed.retries == 2
    await kf.start()
    for job in jobs:
        run = await job.trigger_and_wait({}, timeout=5)
        assert run.output == job.name


def test_a_bare_decorator_still_refuses_what_it_refuses(make_keyflow: MakeKeyflow) -> None:
    kf = make_keyflow()

    def not_async(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        return None

    with pytest.raises(keyflow.ConfigurationError, match="async function"):
        kf.job(not_async)  # type: ignore[arg-type]


async def test_trigger_options_are_typed_and_unknown_ones_refused(
    make_keyflow: MakeKeyflow,
) -> None:
    kf = make_keyflow()
    seen: list[str | None] = []

    @kf.job
    async def child(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        seen.append(ctx.concurrency_key)

    @kf.job
    async def parent(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
        options: keyflow.TriggerOptions = {"concurrency_key": "c", "labels": {"a": "b"}}
        await ctx.trigger("child", {}, **options)

    await kf.start()
    await parent.trigger_and_wait({}, timeout=5)
    await kf.run_until_idle(timeout=5)
    assert seen == ["c"]
    with pytest.raises(TypeError, match="unexpected options: colesce"):
        await kf.trigger_and_wait("child", {}, colesce="queue")  # type: ignore[call-arg]
    assert kf.statistics().triggers.total == 2  # the misspelt one made nothing
