"""Every route, every parameter and form field, odd values: the dashboard never answers 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keyflow
import keyflow.testing
from keyflow.web import create_app, token_authorizer

from .webkit import Gate, client, csrf_of

QUERY_FIELDS = [
    *("page", "prefix", "state", "sort", "job", "status", "key", "q", "labels"),
    *("run", "window", "w", "name", "token", "key_prefix"),
    *("created_after", "created_before", "finished_after", "finished_before"),
]
FORM_FIELDS = [
    *("job", "input", "key", "coalesce", "action", "scope", "run", "status", "q"),
    *("labels", "csrf_token", "key_prefix", "created_after", "finished_before"),
]
GET_PATHS = [
    *("/", "/lanes", "/runs", "/key", "/runs/{run}", "/jobs/{job}", "/keys/{key}"),
    *("/partials/{widget}", "/lanes/", "/runs/{run}/"),
]
POST_PATHS = [
    *("/trigger", "/bulk", "/runs/{run}/cancel", "/runs/{run}/retrigger", "/pause", "/resume"),
]

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "99999999999999999999",
            "-1",
            "0",
            "1e309",
            "NaN",
            "\u00e9t\u00e9",
            "\x00",
            "../../etc",
            "a/b/../c",
            "q?x=1",
            "%ZZ",
            "[1]",
            '{"a": ' * 50,
            "running+queued",
            "failed",
            "cancel",
            "retrigger",
            "matching",
            "waiting",
            "counts",
            "process",
            "2026-11-29",
            "2026-11-29T14:30+02:00",
            "0001-01-01",
            "0001-01-01T00:00+05:00",
            "9999-12-31T23:59:59.999999",
            "9999-12-31T23:00-05:00",
            "x" * 5000,
        ]
    ),
)
params = st.dictionaries(st.sampled_from(QUERY_FIELDS), odd_text, max_size=5)
form = st.dictionaries(st.sampled_from(FORM_FIELDS), odd_text, max_size=6)
segment = st.one_of(odd_text.filter(lambda s: s and "/" not in s), st.just("process"))


@pytest.fixture(params=("memory", "sqlite"))
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A running scheduler with some runs, its dashboard, and a loop to call it from."""
    storage = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'f.db'}"
    with asyncio.Runner() as runner:
        kf = keyflow.Keyflow(storage=storage, clock=keyflow.testing.VirtualClock(), seed=1)
        gate = Gate()
        gate.open()
        kf.job("process")(gate.handler)

        async def start() -> str:
            await kf.start()
            await kf.trigger("process", {"n": 1}, concurrency_key="k", labels={"a": "b"})
            await kf.trigger("process", {"fail": "x"}, concurrency_key="k")
            run = await kf.trigger("process", {}, concurrency_key="later", delay=60)
            await kf.run_until_idle(timeout=10)
            return run.run_id

        run_id = runner.run(start())
        yield runner, kf, run_id
        runner.run(kf.stop(grace=0))


@pytest.mark.parametrize("authorized", [False, True], ids=["open", "token"])
def test_no_route_answers_5xx_to_odd_parameters(served: Any, authorized: bool) -> None:
    runner, kf, run_id = served
    app = create_app(kf, authorize=token_authorizer("s3cret") if authorized else None)
    http = client(app)
    if authorized:
        http.cookies.set("keyflow_token", "s3cret")
    token = runner.run(csrf_of(http))

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        path=st.sampled_from([*GET_PATHS, *POST_PATHS]),
        query=params,
        fields=form,
        run=st.one_of(st.just(run_id), segment),
        name=segment,
        header_token=st.one_of(st.just(token), odd_text),
    )
    def check(
        path: str,
        query: dict[str, str],
        fields: dict[str, str],
        run: str,
        name: str,
        header_token: str,
    ) -> None:
        run, name = quote(run, safe=""), quote(name, safe="")  # as a browser sends them
        url = path.format(run=run, job=name, key=name, widget=name)

        async def call() -> httpx.Response:
            if path in POST_PATHS:
                headers = {"X-CSRF-Token": header_token} if header_token.isascii() else {}
                return await http.post(url, params=query, data=fields, headers=headers)
            return await http.get(url, params=query)

        response = runner.run(call())
        assert response.status_code < 500, (url, query, fields, response.text[:300])

    check()
    runner.run(http.aclose())
