"""Extra navigation entries: ``create_app(kf, links=[(label, href)])`` on every page."""

from __future__ import annotations

import re

import pytest

import keyflow
from keyflow.web import create_app

from .conftest import MakeKeyflow
from .webkit import Gate, client

XSS = "<script>alert('owned')</script>"


@pytest.fixture
def storage_url() -> str:
    return "memory://"


@pytest.fixture
async def started(make_keyflow: MakeKeyflow) -> keyflow.Keyflow:
    kf = make_keyflow()
    kf.job("process")(Gate().handler)
    await kf.start()
    return kf


def nav(html: str) -> list[tuple[str, str]]:
    """The (href, text) of each link in the page's navigation bar."""
    found = re.search(r'<header class="top">.*?<nav>(.*?)</nav>', html, re.DOTALL)
    assert found, "every page has the navigation bar"
    return re.findall(r'<a href="([^"]*)"[^>]*>([^<]*)</a>', found[1])


async def test_links_follow_the_dashboards_own_on_every_page(started: keyflow.Keyflow) -> None:
    app = create_app(
        started, links=[("Story", "/story"), ("Docs", "https://example.org/d?a=1&b=2")]
    )
    async with client(app) as http:
        for path in ("/", "/lanes", "/runs", "/runs/nope"):  # the 404 page too
            response = await http.get(path)
            assert nav(response.text) == [
                ("/", "Overview"),
                ("/lanes", "Lanes"),
                ("/runs", "Runs"),
                ("/story", "Story"),
                ("https://example.org/d?a=1&amp;b=2", "Docs"),
            ], path


async def test_a_links_label_and_href_are_escaped(started: keyflow.Keyflow) -> None:
    app = create_app(started, links=[(XSS, '/x" onclick="alert(1)')])
    async with client(app) as http:
        page = (await http.get("/")).text
    assert XSS not in page
    assert 'onclick="alert(1)"' not in page
    assert nav(page)[-1] == (
        "/x&#34; onclick=&#34;alert(1)",
        "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;",
    )


async def test_without_links_the_bar_is_the_dashboards_own(started: keyflow.Keyflow) -> None:
    async with client(create_app(started)) as http:
        assert [text for _, text in nav((await http.get("/")).text)] == [
            "Overview",
            "Lanes",
            "Runs",
        ]
