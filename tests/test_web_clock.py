"""One clock: the dashboard shows time as the scheduler's clock tells it (issue 11, item 2).

A simulated or virtual clock far from the wall clock gives readable ages, timelines,
sparklines and statistics, never "7984h ago".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow.cli import main, read_only_url
from keyflow.storage_backends import open_backend
from keyflow.testing import VirtualClock
from keyflow.web import create_app
from keyflow.web.storage_source import opened

from .conftest import MakeKeyflow
from .webkit import CaptureTemplates, Gate, client

SIMULATED_START = 1_767_225_600.0  # 2026-01-01: like the demo, far from today


@pytest.fixture
def storage_url() -> str:
    return "memory://"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=SIMULATED_START)


async def busy(make_keyflow: MakeKeyflow, clock: VirtualClock) -> tuple[keyflow.Keyflow, str]:
    kf = make_keyflow(clock=clock)
    gate = Gate()
    gate.open()
    kf.job("process")(gate.handler)
    await kf.start()
    first = await kf.trigger("process", {}, concurrency_key="process:acme")
    await kf.run_until_idle()
    clock.advance(60)
    await kf.trigger("process", {"fail": "x"}, concurrency_key="process:acme")
    await kf.run_until_idle()
    clock.advance(30)
    return kf, first.run_id


async def test_ages_timelines_rates_and_stats_follow_the_schedulers_clock(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    kf, first = await busy(make_keyflow, clock)
    app = CaptureTemplates(create_app(kf, clock=clock))
    async with client(app) as http:
        run_page = (await http.get(f"/runs/{first}")).text
        assert "1m30s ago" in run_page
        runs_page = (await http.get("/runs")).text
        assert "h ago" not in runs_page  # no hours between the simulation and today
        assert "30.0s ago" in runs_page
        key_page = (await http.get("/key", params={"name": "process:acme"})).text
        labels = re.findall(r'class="axis-label"[^>]*>([^<]+)<', key_page)
        assert labels[0] == "-1.5m"
        assert labels[-1] == "now"
        stats = (await http.get("/jobs/process", params={"window": "5m"})).text
        assert 'data-runs="2"' in stats  # both runs are inside the simulated 5 minutes
        assert 'data-failure-rate="0.5"' in stats
        await http.get("/")  # the counters, sampled now
        await kf.trigger("process", {}, concurrency_key="process:acme")
        await kf.run_until_idle()
        clock.advance(30)
        await http.get("/")  # and 30 simulated seconds later: one more run finished
    dashboard: Any = app.app.state.dashboard  # type: ignore[attr-defined]
    rates = dashboard.history.rates("finished", clock.now())
    assert sum(rates) * 10 == pytest.approx(1)  # 10-second buckets, in simulated time


async def test_the_schedulers_own_clock_is_the_default(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    kf, first = await busy(make_keyflow, clock)
    assert kf.clock is clock  # the scheduler's own clock, which the dashboard takes
    async with client(create_app(kf)) as http:
        assert "1m30s ago" in (await http.get(f"/runs/{first}")).text


async def test_a_storage_dashboard_can_read_a_simulated_store_as_of_its_last_activity(
    tmp_path: Path,
) -> None:
    """``keyflow dashboard --storage … --clock stored`` over a store the demo wrote."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    clock = VirtualClock(start=SIMULATED_START)
    kf = keyflow.Keyflow(storage=url, clock=clock)
    gate = Gate()
    gate.open()
    kf.job("process")(gate.handler)
    async with kf:
        first = await kf.trigger("process", {}, concurrency_key="process:acme")
        await kf.run_until_idle()
        clock.advance(120)
        await kf.trigger("process", {}, concurrency_key="process:acme")
        await kf.run_until_idle()
    pages = {}
    for stored in (False, True):
        backend = open_backend(read_only_url(url), retention=1000)
        async with (
            opened(backend, stored_clock=stored) as source,
            client(create_app(source)) as http,
        ):
            pages[stored] = (await http.get(f"/runs/{first.run_id}")).text
    assert re.search(r"\d{4,}h\d\dm ago", pages[False])  # the wall clock: months ago
    assert "2m00s ago" in pages[True]  # as of the store's last activity
    assert not re.search(r"\d{3,}h\d\dm ago", pages[True])


def test_the_dashboard_command_offers_the_stored_clock_and_names_a_bare_path() -> None:
    with pytest.raises(SystemExit):
        main(["dashboard", "--storage", "sqlite:///x.db", "--clock", "simulated"])
    with pytest.raises(keyflow.KeyflowError, match=r"'runs\.db' has no scheme: sqlite:///runs"):
        read_only_url("runs.db")
    with pytest.raises(keyflow.KeyflowError, match=r"'sqlite://t0\.db' needs a path"):
        read_only_url("sqlite://t0.db")  # named as typed, without a "?mode=ro" of ours
    # Read-only whatever the URL says: a dashboard never takes the writer's lock.
    assert read_only_url("sqlite:///x.db?mode=rw") == "sqlite:///x.db?mode=ro"
    forced = read_only_url("json:///x.json?mode=rwc&retention=5")
    assert forced == "json:///x.json?retention=5&mode=ro"
    assert open_backend(read_only_url("sqlite:///x.db?mode=rw"), retention=1).read_only
