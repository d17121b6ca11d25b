"""Short run ids on screen tell runs apart across restarts (issue 11: "process 8" twice)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keyflow.testing import VirtualClock
from keyflow.web import create_app
from keyflow.web.filters import short

from .conftest import MakeKeyflow
from .webkit import Gate, client

KEY = "process:acme"


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"  # one store, written by two processes in turn


def test_the_short_form_keeps_the_prefix_start_and_the_counter() -> None:
    assert short("6ab318108b6f-0000002b") == "6ab3-2b"
    assert short("6ab318108b6f-00000000") == "6ab3-0"
    assert short("6ab318108b6f-1000000000") == "6ab3-1000000000"  # past 8 hex digits
    assert short("imported") == "imported"  # another shape: shown whole


async def test_the_first_runs_of_two_processes_on_one_store_read_apart(
    make_keyflow: MakeKeyflow, clock: VirtualClock
) -> None:
    gate = Gate()
    gate.open()
    first_ids: list[str] = []
    for _ in range(2):  # a restart: a new scheduler on the same storage file
        kf = make_keyflow()
        kf.job("process")(gate.handler)
        await kf.start()
        first_ids.append((await kf.trigger("process", {}, concurrency_key=KEY)).run_id)
        await kf.run_until_idle()
        await kf.stop()
        clock.advance(60)  # the restart comes a minute later: the timeline's order
    before, after = first_ids
    assert before.rsplit("-")[-1] == after.rsplit("-")[-1]  # the counter starts again

    kf = make_keyflow()
    kf.job("process")(gate.handler)
    await kf.start()
    async with client(create_app(kf)) as http:
        key_page = (await http.get("/key", params={"name": KEY})).text
        before_page = (await http.get(f"/runs/{before}")).text
    labels = re.findall(r'class="bar-label"[^>]*>([^<]+)<', key_page)
    assert labels == [f"process {short(before)}", f"process {short(after)}"]
    assert short(before) != short(after)
    assert f"process <code>{before}</code>" in before_page  # the run page: the whole id
