"""The writer thread of the SQLite and JSON backends: calls in order, on one thread, each
finished whole even when its caller is cancelled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from keyflow.storage_backends.writer_thread import WriterThread


async def test_calls_run_in_order_on_one_thread_of_their_own() -> None:
    thread = WriterThread("test-writer")
    thread.start()
    ran: list[tuple[int, str]] = []

    def work(n: int) -> Callable[[], int]:
        def run() -> int:
            ran.append((n, threading.current_thread().name))
            return n * 10

        return run

    results = await asyncio.gather(*(thread.call(work(n)) for n in range(50)))
    thread.stop()
    assert results == [n * 10 for n in range(50)]
    assert ran == [(n, "test-writer") for n in range(50)]


async def test_an_exception_reaches_its_caller_and_the_thread_goes_on() -> None:
    thread = WriterThread("test-writer")
    thread.start()

    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await thread.call(fail)
    assert await thread.call(lambda: "still serving") == "still serving"
    thread.stop()


async def test_a_cancelled_caller_leaves_its_call_to_finish_before_the_next() -> None:
    thread = WriterThread("test-writer")
    thread.start()
    release = threading.Event()
    finished: list[str] = []

    def slow() -> None:
        release.wait(10)
        finished.append("slow")

    caller = asyncio.ensure_future(thread.call(slow))
    nxt = thread.call(lambda: finished.append("next"))
    caller.cancel()
    release.set()
    await nxt
    assert finished == ["slow", "next"]
    thread.stop()


async def test_a_stop_ends_after_the_calls_queued_before_it_and_refuses_later_ones() -> None:
    thread = WriterThread("test-writer")
    assert not thread.running
    with pytest.raises(RuntimeError, match="not running"):
        thread.call(lambda: None)
    thread.start()
    assert thread.running
    queued = thread.call(lambda: "queued before the stop")
    thread.stop()
    thread.stop()  # idempotent
    assert not thread.running
    assert await queued == "queued before the stop"
    with pytest.raises(RuntimeError, match="not running"):
        thread.call(lambda: None)


async def test_stopped_returns_once_the_thread_has_ended() -> None:
    thread = WriterThread("test-writer-ends")
    thread.start()
    queued = thread.call(lambda: "done")
    thread.stop()
    await thread.stopped()
    assert await queued == "done"
    assert "test-writer-ends" not in {t.name for t in threading.enumerate()}
