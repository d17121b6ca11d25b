"""The live stream: throttled widget updates, and SSE over a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from keyflow.watch import Changes
from keyflow.web import create_app
from keyflow.web.live import widget_updates
from keyflow.web.source import KeyflowSource

from .conftest import MakeKeyflow
from .webkit import Gate, serving


class Feed:
    """A change feed the test pushes into; records when its consumer let go."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Changes] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def changes(self) -> AsyncIterator[Changes]:
        try:
            while True:
                feed = await self.queue.get()
                yield feed
                self.queue.task_done()
        finally:
            self.closed.set()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def turns(n: int = 20) -> None:
    """Let the loop run other ready tasks (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
def storage_url() -> str:
    return "memory://"


async def test_a_burst_of_changes_renders_each_widget_once_per_interval() -> None:
    feed, clock = Feed(), Clock()
    renders: list[str] = []

    async def render(widget: str) -> str:
        renders.append(widget)
        return f"<p>{widget} {len(renders)}</p>"

    def wants(widget: str, change: Changes) -> bool:
        return widget == "lanes" or change.everything

    out: list[tuple[str, str]] = []

    async def consume() -> None:
        updates = widget_updates(
            feed.changes(), ["lanes", "feed"], render, wants, min_interval=0.25, clock=clock
        )
        async for update in updates:
            out.append(update)

    consumer = asyncio.ensure_future(consume())
    for _ in range(500):
        feed.queue.put_nowait(Changes())
    await feed.queue.join()
    await turns()
    assert renders == ["lanes"]  # 500 changes, one render; "feed" did not want them
    clock.now += 0.1
    feed.queue.put_nowait(Changes())
    await feed.queue.join()
    await turns()
    assert renders == ["lanes"]  # still within the interval: held back, not dropped
    clock.now += 0.2
    feed.queue.put_nowait(Changes(everything=True))
    await feed.queue.join()
    await turns()
    assert renders == ["lanes", "lanes", "feed"]
    assert out[-1] == ("feed", "<p>feed 3</p>")
    consumer.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await asyncio.wait_for(feed.closed.wait(), 5)  # the feed was let go at once


async def test_a_held_back_change_is_rendered_when_its_interval_ends() -> None:
    feed = Feed()
    renders: list[float] = []
    loop = asyncio.get_running_loop()

    async def render(widget: str) -> str:
        renders.append(loop.time())
        return widget

    updates = widget_updates(
        feed.changes(), ["lanes"], render, lambda w, c: True, min_interval=0.05
    )
    feed.queue.put_nowait(Changes())
    assert await asyncio.wait_for(anext(updates), 5) == ("lanes", "lanes")
    feed.queue.put_nowait(Changes())  # inside the interval: waits for its end
    assert await asyncio.wait_for(anext(updates), 5) == ("lanes", "lanes")
    assert renders[1] - renders[0] >= 0.05
    await updates.aclose()
    assert feed.closed.is_set()


async def test_periodic_widgets_refresh_without_changes() -> None:
    feed = Feed()

    async def render(widget: str) -> str:
        return widget

    updates = widget_updates(
        feed.changes(), ["rates", "lanes"], render, lambda w, c: False,
        periodic=["rates"], period=0.01,
    )  # fmt: skip
    assert await asyncio.wait_for(anext(updates), 5) == ("rates", "rates")
    await updates.aclose()


async def test_sse_over_uvicorn_streams_named_widget_events_and_cleans_up(
    make_keyflow: MakeKeyflow,
) -> None:
    gate = Gate()
    kf = make_keyflow(workers=2)
    kf.job("process")(gate.handler)
    await kf.start()
    let_go = asyncio.Event()

    class Watched(KeyflowSource):
        async def changes(self) -> AsyncIterator[Changes]:
            try:
                async for feed in super().changes():
                    yield feed
            finally:
                let_go.set()

    app = create_app(Watched(kf), min_interval=0.05)
    async with serving(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as http:
        seen: list[str] = []
        async with http.stream("GET", "/live", params={"w": "lanes,counts"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = await kf.trigger("process", {}, concurrency_key="process:acme")
            lines = stream.aiter_lines()
            while "lanes" not in seen or "counts" not in seen:
                line = await asyncio.wait_for(anext(lines), 10)
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                if line.startswith("data: ") and "process:acme" in line:
                    data_line: Any = line
            assert "process:acme" in data_line
        await asyncio.wait_for(let_go.wait(), 10)  # the client left: its stream stopped
    gate.release(first.run_id)
    await kf.run_until_idle()


async def test_every_stream_of_a_dashboard_hears_the_changes_and_ends_with_the_scheduler(
    make_keyflow: MakeKeyflow,
) -> None:
    gate = Gate()
    kf = make_keyflow(workers=2)
    kf.job("process")(gate.handler)
    await kf.start()
    source = KeyflowSource(kf)
    streams = [source.changes(), source.changes()]
    first = [asyncio.ensure_future(anext(stream)) for stream in streams]
    run = await kf.trigger("process", {}, concurrency_key="k")
    await gate.any_started.wait()  # the streams' first reads were ready before the handler
    gate.release(run.run_id)
    await kf.run_until_idle()
    for heard in first:
        assert "k" in (await asyncio.wait_for(heard, 5)).keys
    left, stays = streams
    await left.aclose()  # type: ignore[attr-defined]  # a page closed: the other goes on
    gate.open()
    await kf.trigger("process", {}, concurrency_key="j")
    await kf.run_until_idle()
    assert "j" in (await asyncio.wait_for(anext(stays), 5)).keys
    await kf.stop()
    rest = [c async for c in stays]  # the scheduler stopped: the stream ends
    assert all(c.keys == {"j"} for c in rest)  # (after the last of what it kept, if any)
    assert [c async for c in source.changes()] == []  # and one opened afterwards at once
