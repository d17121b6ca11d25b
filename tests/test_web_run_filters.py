"""The runs page's key prefix and time range filters: parsed, applied by both sources,
kept by links, and a value that is not a time said on the page (never a 5xx)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import keyflow
from keyflow.cli import read_only_url
from keyflow.storage_backends import open_backend
from keyflow.testing import VirtualClock
from keyflow.web import create_app
from keyflow.web.instants import NotAnInstantError, format_instant, parse_instant
from keyflow.web.source import RunFilters
from keyflow.web.storage_source import opened
from keyflow.web.widgets import Params

from .conftest import MakeKeyflow, storage_url_for
from .webkit import Gate, client, csrf_of

HOUR = 3600.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-02", 86_400.0),
        ("1970-01-02T01:00", 90_000.0),
        ("1970-01-02 01:00:30", 90_030.0),
        ("1970-01-02T01:00:00Z", 90_000.0),
        ("1970-01-02T03:00+02:00", 90_000.0),
        (" 1970-01-02 ", 86_400.0),
        ("1970-01-02T00:00:00.250000", 86_400.25),
        ("0001-01-01", -62_135_596_800.0),
        ("9999-12-31T23:59:59", 253_402_300_799.0),
    ],
)
def test_iso_dates_and_times_are_read_as_utc(text: str, seconds: float) -> None:
    assert parse_instant(text, "created after") == seconds
    assert parse_instant(format_instant(seconds), "x") == seconds


@pytest.mark.parametrize(
    "text",
    [
        *("yesterday", "2026-13-01", "1e309", "NaN", "12:00", "9" * 40, ""),
        "9999-12-31T23:59:59.999999",  # rounds to year 10000 as epoch seconds
        "9999-12-31T23:00-05:00",  # year 10000 in UTC
        "0001-01-01T00:00+05:00",  # year 0 in UTC
    ],
)
def test_what_is_not_a_time_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(NotAnInstantError, match=r"created after: .* write it like 2026-11-29"):
        parse_instant(text, "created after")


def test_times_keep_their_shortest_form_in_links() -> None:
    filters = Params.parse(
        {"created_after": "2026-11-29", "finished_before": "2026-11-29T14:30Z", "key_prefix": "p:"}
    ).filters
    assert filters.as_query() == {
        "key_prefix": "p:",
        "created_after": "2026-11-29",
        "finished_before": "2026-11-29T14:30",
    }
    assert Params.parse(filters.as_query()).filters == filters


@pytest.fixture(params=("memory", "sqlite"))
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return storage_url_for(request.param, tmp_path)


async def history(kf: keyflow.Keyflow, clock: VirtualClock) -> float:
    """Runs over two hours: ``process:a1``, ``process:a2``, ``crawl:b`` created at t0,
    ``process:a3`` at t0 + 1h, ``process:a4`` at t0 + 2h (unfinished); returns t0."""
    t0 = clock.now()
    for key in ("process:a1", "process:a2", "crawl:b"):
        await kf.trigger("process", {}, concurrency_key=key)
    await kf.run_until_idle()
    clock.advance(HOUR)
    await kf.trigger("process", {}, concurrency_key="process:a3")
    await kf.run_until_idle()
    clock.advance(HOUR)
    await kf.trigger("process", {}, concurrency_key="process:a4", delay=600)
    return t0


def keys_of(page: str) -> list[str]:
    return sorted(set(re.findall(r'<tr data-run="[^"]+".*?<code>([^<]+:[^<]+)</code>', page, re.S)))


async def test_the_runs_page_filters_by_key_prefix_and_time(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    gate = Gate()
    gate.open()
    kf = make_keyflow(workers=2)
    kf.job("process")(gate.handler)
    await kf.start()
    t0 = await history(kf, clock)
    half = format_instant(t0 + HOUR / 2)
    async with client(create_app(kf)) as http:

        async def shown(**query: str) -> list[str]:
            response = await http.get("/runs", params=query)
            assert response.status_code == 200
            assert "data-problem" not in response.text
            return keys_of(response.text)

        assert await shown(key_prefix="process:") == [f"process:a{n}" for n in (1, 2, 3, 4)]
        assert await shown(key_prefix="crawl") == ["crawl:b"]
        assert await shown(created_after=half) == ["process:a3", "process:a4"]
        assert await shown(created_before=half) == ["crawl:b", "process:a1", "process:a2"]
        assert await shown(finished_after=half) == ["process:a3"]  # a4 has not finished
        assert await shown(finished_before=half, key_prefix="process:") == [
            "process:a1",
            "process:a2",
        ]
        window = {"created_after": half, "created_before": format_instant(t0 + 1.5 * HOUR)}
        assert await shown(**window) == ["process:a3"]
        page = (await http.get("/runs", params=window)).text
        assert f'name="created_after" value="{half}"' in page  # the form shows the filter


async def test_pages_and_links_keep_the_new_filters(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    gate = Gate()
    gate.open()
    kf = make_keyflow(workers=2)
    kf.job("process")(gate.handler)
    await kf.start()
    t0 = clock.now()
    for n in range(60):
        await kf.trigger("process", {"n": n}, concurrency_key=f"p:{n}", delay=60)
    await kf.trigger("process", {}, concurrency_key="other", delay=60)
    after = format_instant(t0)
    async with client(create_app(kf)) as http:
        page = (await http.get("/runs", params={"key_prefix": "p:", "created_after": after})).text
        assert 'data-total="60"' in page
        link = re.search(r'href="\?([^"]*page=2[^"]*)"', page)
        assert link, "no link to page 2"
        query = link[1].replace("&amp;", "&")
        assert "key_prefix=p%3A" in query
        assert f"created_after={after.replace(':', '%3A')}" in query
        second = (await http.get(f"/runs?{query}")).text
        assert len(keys_of(second)) == 10
        assert "other" not in keys_of(second)
        live = re.search(r'sse-connect="([^"]+)"', page)
        assert live
        assert "key_prefix=p%3A" in live[1]  # the live stream renders the same filters


async def test_a_bad_time_is_said_on_the_page_and_refused_for_bulk_actions(
    make_keyflow: MakeKeyflow,
) -> None:
    gate = Gate()
    kf = make_keyflow(workers=2)
    kf.job("process")(gate.handler)
    await kf.start()
    waiting = await kf.trigger("process", {}, concurrency_key="k", delay=600)
    async with client(create_app(kf)) as http:
        for name in ("created_after", "created_before", "finished_after", "finished_before"):
            response = await http.get("/runs", params={name: "last tuesday", "job": "process"})
            assert response.status_code == 200
            problem = re.search(rf'data-problem="{name}">([^<]*)<', response.text)
            assert problem, name
            assert "is not a date or time" in problem[1]
            assert "2026-11-29T14:30" in problem[1]  # an example to copy
            assert "this filter is not applied" in problem[1]
            assert f'name="{name}" value="last tuesday"' in response.text  # kept, to fix
            assert 'data-total="1"' in response.text  # the other filters still apply
        for extreme in ("9999-12-31T23:59:59.999999", "0001-01-01", "9999-12-31T23:59:59"):
            edge = await http.get("/runs", params={"finished_before": extreme, "page": "2"})
            assert edge.status_code == 200, extreme
        partial = await http.get("/partials/runs", params={"created_after": "x"})
        assert partial.status_code == 200
        assert 'data-problem="created_after"' in partial.text
        token = await csrf_of(http)
        fields = {
            "action": "cancel",
            "scope": "matching",
            "job": "process",
            "created_after": "soon",
        }
        refused = await http.post("/bulk", data=fields, headers={"X-CSRF-Token": token})
        assert refused.status_code == 400
        assert "created after: &#39;soon&#39; is not a date or time" in refused.text
    run = await kf.get_run(waiting.run_id)
    assert run is not None
    assert run.status is keyflow.RunStatus.SCHEDULED  # nothing was cancelled


async def test_the_storage_dashboard_applies_the_same_filters(
    make_keyflow: MakeKeyflow, clock: VirtualClock, tmp_path: Path
) -> None:
    gate = Gate()
    gate.open()
    url = storage_url_for("sqlite", tmp_path / "reader")
    (tmp_path / "reader").mkdir()
    kf = make_keyflow(workers=2, storage=url)
    kf.job("process")(gate.handler)
    await kf.start()
    t0 = await history(kf, clock)
    async with opened(open_backend(read_only_url(url), retention=1000)) as source:
        source.poll_seconds = 0.0
        half = t0 + HOUR / 2

        async def keys(**filters: Any) -> list[str]:
            runs = await source.find_runs(RunFilters(**filters), 0, 50)
            assert await source.count_runs(RunFilters(**filters)) == len(runs)
            return sorted(r.concurrency_key or "" for r in runs)

        assert await keys(key_prefix="crawl") == ["crawl:b"]
        assert await keys(created_after=half) == ["process:a3", "process:a4"]
        assert await keys(finished_after=half) == ["process:a3"]
        assert await keys(finished_before=half, key_prefix="process:") == [
            "process:a1",
            "process:a2",
        ]
        async with client(create_app(source, read_only=True)) as http:
            page = await http.get("/runs", params={"created_before": format_instant(half)})
            assert keys_of(page.text) == ["crawl:b", "process:a1", "process:a2"]
            bad = await http.get("/runs", params={"finished_after": "2026-02-30"})
            assert bad.status_code == 200
            assert 'data-problem="finished_after"' in bad.text
