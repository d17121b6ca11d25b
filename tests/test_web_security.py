"""The dashboard is safe by default: Host check, signed CSRF tokens, origin checks,
security headers, tokens kept out of URLs, and no 5xx on odd input."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import keyflow
from keyflow.web import create_app, token_authorizer

from .conftest import MakeKeyflow
from .webkit import Gate, client, csrf_of

FORM = {"job": "process", "input": '{"org": "acme"}', "key": "process:acme"}


@pytest.fixture
def storage_url() -> str:
    return "memory://"


@pytest.fixture
async def kf(make_keyflow: MakeKeyflow) -> keyflow.Keyflow:
    kf = make_keyflow(workers=2)
    gate = Gate()
    gate.open()
    kf.job("process")(gate.handler)
    await kf.start()
    return kf


# -- 1. DNS rebinding: only allowed Host names ---------------------------------------


async def test_a_foreign_host_is_refused_by_default(kf: keyflow.Keyflow) -> None:
    async with client(create_app(kf), base_url="http://rebind.attacker.test") as http:
        page = await http.get("/")
        assert page.status_code == 400
        assert "csrf" not in page.text.lower()
        posted = await http.post("/trigger", data=FORM, headers={"X-CSRF-Token": "x"})
        assert posted.status_code == 400
    assert await kf.count_runs() == 0
    for base in ("http://localhost:8000", "http://127.0.0.1:8123", "http://[::1]:8000"):
        async with client(create_app(kf), base_url=base) as http:
            assert (await http.get("/")).status_code == 200, base


async def test_allowed_hosts_are_configurable(kf: keyflow.Keyflow) -> None:
    app = create_app(kf, allowed_hosts=["dash.example.com"])
    async with client(app, base_url="https://dash.example.com") as http:
        assert (await http.get("/lanes")).status_code == 200
    async with client(app, base_url="http://127.0.0.1") as http:
        assert (await http.get("/lanes")).status_code == 400


async def test_the_trailing_slash_redirect_trusts_no_foreign_host(kf: keyflow.Keyflow) -> None:
    async with client(create_app(kf), base_url="http://evil.test") as http:
        response = await http.get("/lanes/")
        assert response.status_code == 400
        assert "evil.test" not in response.headers.get("location", "")
    app = create_app(kf, allowed_hosts=["*"])
    async with client(app, base_url="http://evil.test") as http:
        response = await http.get("/lanes/?prefix=a")
        assert response.status_code in (301, 307, 308)
        assert response.headers["location"] == "/lanes?prefix=a"  # a path, never a host
    outer = Starlette(routes=[Mount("/ops", create_app(kf))])
    async with client(outer) as http:
        response = await http.get("/ops/runs/")
        assert response.headers["location"] == "/ops/runs"


# -- 2. CSRF: server-issued, signed, same origin only --------------------------------


async def test_a_forged_cookie_and_header_pair_is_refused(kf: keyflow.Keyflow) -> None:
    async with client(create_app(kf)) as http:
        for cookie in ("keyflow_csrf", "keyflow_session"):
            http.cookies.set(cookie, "x" * 64)
        forged = await http.post("/trigger", data=FORM, headers={"X-CSRF-Token": "x" * 64})
        assert forged.status_code == 403
        in_form = await http.post("/trigger", data={**FORM, "csrf_token": "x" * 64})
        assert in_form.status_code == 403
        run = await kf.trigger("process", {}, concurrency_key="k", delay=60)
        cancel = await http.post(f"/runs/{run.run_id}/cancel", headers={"X-CSRF-Token": "x" * 64})
        assert cancel.status_code == 403
    assert await kf.count_runs() == 1  # only the one this test made itself
    stored = await kf.get_run(run.run_id)
    assert stored is not None
    assert stored.status is keyflow.RunStatus.SCHEDULED


async def test_a_cross_origin_post_is_refused_even_with_a_valid_token(
    kf: keyflow.Keyflow,
) -> None:
    async with client(create_app(kf)) as http:
        token = await csrf_of(http)
        for headers in (
            {"Origin": "http://127.0.0.1:9999"},  # another port: another origin
            {"Origin": "http://rebind.attacker.test"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
        ):
            refused = await http.post(
                "/trigger", data=FORM, headers={"X-CSRF-Token": token, **headers}
            )
            assert refused.status_code == 403, headers
        assert await kf.count_runs() == 0
        same = await http.post(
            "/trigger",
            data=FORM,
            headers={
                "X-CSRF-Token": token,
                "Origin": "http://127.0.0.1",
                "Sec-Fetch-Site": "same-origin",
            },
        )
        assert same.status_code == 200
    assert await kf.count_runs() == 1


async def test_a_cookie_tossed_from_another_port_gains_nothing(kf: keyflow.Keyflow) -> None:
    app = create_app(kf)
    async with client(app) as attacker:
        attacker_token = await csrf_of(attacker)  # the attacker's own session and token
        attacker_session = attacker.cookies["keyflow_session"]
    async with client(app) as victim:
        # A page on 127.0.0.1:<other port> can set cookies for 127.0.0.1 (ports do not
        # isolate cookies): it plants the attacker's session, then posts the token it knows.
        victim.cookies.set("keyflow_session", attacker_session)
        tossed = await victim.post(
            "/trigger",
            data={**FORM, "csrf_token": attacker_token},
            headers={"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"},
        )
        assert tossed.status_code == 403
        own = await csrf_of(victim)
        assert own == attacker_token  # the same session signs the same token...
        victim.cookies.set("keyflow_session", "attacker-chosen")
        guessed = await victim.post("/trigger", data={**FORM, "csrf_token": own})
        assert guessed.status_code == 403  # ...and a chosen session has no token to match
    other_app = create_app(kf)
    async with client(other_app) as http:
        http.cookies.set("keyflow_session", attacker_session)
        foreign = await http.post("/trigger", data={**FORM, "csrf_token": attacker_token})
        assert foreign.status_code == 403  # another app's secret: its tokens mean nothing
    assert await kf.count_runs() == 0


# -- 3. headers -----------------------------------------------------------------------


async def test_pages_and_partials_carry_the_security_headers(kf: keyflow.Keyflow) -> None:
    run = await kf.trigger("process", {}, concurrency_key="k")
    await kf.run_until_idle()
    async with client(create_app(kf)) as http:
        for path in (
            "/",
            "/lanes",
            "/runs",
            f"/runs/{run.run_id}",
            "/key?name=k",
            "/partials/lanes",
            "/runs/nope",
        ):
            response = await http.get(path)
            headers = response.headers
            csp = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp, path
            assert "script-src 'self'" in csp, path
            assert "unsafe-inline" not in csp, path
            assert "unsafe-eval" not in csp, path
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "no-referrer", path
            assert headers["cache-control"] == "no-store", path
            if response.status_code == 200 and path != "/partials/lanes":
                html = response.text
                assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
                assert not re.search(r"\son[a-z]+\s*=", html), path
                assert not re.search(r"\sstyle\s*=", html), path
                assert "hx-on" not in html, path


# -- 4. tokens --------------------------------------------------------------------------


async def test_a_token_in_the_url_moves_into_a_cookie_and_out_of_the_url(
    kf: keyflow.Keyflow,
) -> None:
    app = create_app(kf, authorize=token_authorizer("s3cret"))
    async with client(app) as http:
        moved = await http.get("/lanes?prefix=a&token=s3cret")
        assert moved.status_code == 303
        assert moved.headers["location"] == "/lanes?prefix=a"
        cookie = moved.headers["set-cookie"]
        assert "keyflow_token=s3cret" in cookie
        assert "Path=/;" in cookie or cookie.endswith("Path=/")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Secure" not in cookie
        assert (await http.get("/lanes")).status_code == 200  # the cookie carries it now
        wrong = await http.get("/lanes?token=wrong")  # does not override a valid cookie
        assert wrong.status_code == 303
        assert "set-cookie" not in wrong.headers
        assert (await http.get("/lanes")).status_code == 200
    outer = Starlette(routes=[Mount("/ops/keyflow", app)])
    async with client(outer, base_url="https://127.0.0.1") as http:
        moved = await http.get("/ops/keyflow/?token=s3cret")
        assert moved.headers["location"] == "/ops/keyflow/"
        cookie = moved.headers["set-cookie"]
        assert "Path=/ops/keyflow" in cookie
        assert "Secure" in cookie


async def test_only_a_bearer_authorization_counts_and_the_403_says_how(
    kf: keyflow.Keyflow,
) -> None:
    app = create_app(kf, authorize=token_authorizer("s3cret"))
    async with client(app) as http:
        bare = await http.get("/", headers={"Authorization": "s3cret"})
        assert bare.status_code == 403
        assert "Authorization: Bearer" in bare.text
        assert "?token=" in bare.text
        basic = await http.get("/", headers={"Authorization": "Basic s3cret"})
        assert basic.status_code == 403
        bearer = await http.get("/", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200
        assert (await http.get("/?token=wrong")).status_code == 403


# -- 5. odd input -------------------------------------------------------------------------


async def test_non_ascii_tokens_and_csrf_values_are_refused_not_crashed(
    kf: keyflow.Keyflow,
) -> None:
    app = create_app(kf, authorize=token_authorizer("s3cret"))
    async with client(app) as http:
        assert (await http.get("/?token=\u00e9t\u00e9")).status_code == 403
        http.cookies.set("keyflow_token", "%C3%A9")
        assert (await http.get("/")).status_code == 403
        raw_auth = httpx.Headers([(b"authorization", "Bearer \u00e9".encode())])
        assert (await http.get("/", headers=raw_auth)).status_code == 403
    async with client(create_app(kf)) as http:
        await csrf_of(http)
        raw = httpx.Headers([(b"x-csrf-token", "\u00e9\u00e9".encode())])
        posted = await http.post("/trigger", data=FORM, headers=raw)
        assert posted.status_code == 403
        in_form = await http.post("/trigger", data={**FORM, "csrf_token": "\u00e9t\u00e9"})
        assert in_form.status_code == 403


async def test_a_huge_page_number_is_not_a_crash(make_keyflow: MakeKeyflow, tmp_path: Path) -> None:
    kf = make_keyflow(storage=f"sqlite:///{tmp_path / 'runs.db'}")
    kf.job("process")(Gate().handler)
    await kf.start()
    await kf.trigger("process", {}, concurrency_key="k", delay=60)
    async with client(create_app(kf)) as http:
        for path in ("/runs", "/lanes", "/partials/runs", "/partials/lanes"):
            response = await http.get(path, params={"page": "99999999999999999999"})
            assert response.status_code == 200, path
