"""Job statistics from storage's run times (issue 12, item 15): thousands counted, a cap marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

import keyflow
from keyflow.storage_backends import open_backend
from keyflow.web import create_app
from keyflow.web.jobstats import MAX_RUNS
from keyflow.web.storage_source import opened

from .webkit import client

RUNS = 2_600
"""More than the 2,000 runs the statistics used to read: a window must not stop there."""
CAPPED = 300
"""A cap the test sets, to see a window beyond it marked."""


async def _noop(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    return None


async def _fail(ctx: keyflow.RunContext, input: dict[str, Any]) -> None:
    raise RuntimeError("no")


async def test_every_run_of_a_busy_day_is_counted_by_both_dashboards(tmp_path: Path) -> None:
    assert MAX_RUNS > RUNS
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    kf = keyflow.Keyflow(storage=url, workers=8, retention=10 * RUNS)
    kf.job("busy")(_noop)
    kf.job("flaky", retries=0)(_fail)
    async with kf:
        await kf.batch_trigger(keyflow.TriggerRequest("busy", {"n": n}) for n in range(RUNS))
        await kf.batch_trigger(keyflow.TriggerRequest("flaky", {"n": n}) for n in range(3))
        await kf.run_until_idle()
        timings = await kf.run_timings("busy")
        assert len(timings) == RUNS
        assert all(t.status is keyflow.RunStatus.COMPLETED for t in timings)
        assert len(await kf.run_timings("busy", limit=10)) == 10
        assert await kf.run_timings("busy", since=timings[0].created_at + 1) == []
        async with client(create_app(kf)) as http:
            embedded = (await http.get("/jobs/busy", params={"window": "24h"})).text
            flaky = (await http.get("/jobs/flaky")).text
    assert f'data-runs="{RUNS}"' in embedded
    assert f"{RUNS:,}+" not in embedded  # not capped
    assert 'data-failure-rate="1.0"' in flaky
    backend = open_backend(url, retention=10 * RUNS)
    async with opened(backend) as source, client(create_app(source)) as http:
        stored = (await http.get("/jobs/busy", params={"window": "24h"})).text
    assert f'data-runs="{RUNS}"' in stored


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"job": 5}, "job"),
        ({"job": "busy", "since": float("nan")}, "since"),
        ({"job": "busy", "since": "yesterday"}, "since"),
        ({"job": "busy", "since": 2**1100}, "since"),
        ({"job": "caf\udce9"}, "job"),
        ({"job": "busy", "limit": -1}, "limit"),
    ],
)
async def test_run_timings_refuses_bad_arguments_by_name(
    arguments: dict[str, Any], named: str
) -> None:
    kf = keyflow.Keyflow()
    job = arguments.pop("job")
    with pytest.raises(keyflow.ConfigurationError, match=named):
        await kf.run_timings(job, **arguments)


async def test_a_window_beyond_the_cap_is_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("keyflow.web.jobstats.MAX_RUNS", CAPPED)
    kf = keyflow.Keyflow(storage=f"sqlite:///{tmp_path / 'runs.db'}", workers=8)
    kf.job("busy")(_noop)
    async with kf:
        await kf.batch_trigger(keyflow.TriggerRequest("busy", {"n": n}) for n in range(400))
        await kf.run_until_idle()
        async with client(create_app(kf)) as http:
            page = (await http.get("/jobs/busy", params={"window": "24h"})).text
    assert f'data-runs="{CAPPED}">{CAPPED}+<' in page


@pytest.mark.parametrize("name", ["crawl/org", "a b?c#d", "100%", "ünïcode"])
async def test_any_job_name_links_to_its_statistics(name: str, tmp_path: Path) -> None:
    """A job named with "/", "?", "#" or "%" renders every page and reaches its stats."""
    kf = keyflow.Keyflow()
    kf.job(name)(_noop)
    async with kf:
        run = await kf.trigger_and_wait(name, {})
        await kf.pause(job=name)
        async with client(create_app(kf)) as http:
            for path in ("/", f"/runs/{run.id}", "/partials/paused", "/runs"):
                page = await http.get(path)
                assert page.status_code == 200, (path, page.text[-300:])
            link = f'href="/jobs/{quote(name, safe="/")}"'
            overview = (await http.get("/")).text
            assert link in overview
            stats = await http.get(f"/jobs/{quote(name, safe='/')}")
            assert stats.status_code == 200
            assert 'data-window="24h"' in stats.text
