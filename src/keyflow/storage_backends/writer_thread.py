"""A thread of its own for a backend's writes: one hop from the event loop per call.

``loop.run_in_executor`` on a one-thread pool does the same job with more machinery
(a work item, a concurrent future chained to an asyncio one, a callback per side): for a
sequential producer, whose every trigger waits for its commit, that machinery cost as
much as a third of a one-row commit. Here a call is a tuple put on a queue; the thread
answers the call's asyncio future with one ``call_soon_threadsafe``.

Calls run one at a time, in order. A caller cancelled meanwhile leaves its call to finish
on the thread (a transaction, an append, is never cut in half); :meth:`WriterThread.stop`
ends the thread after every call queued before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[Callable[[], Any], asyncio.Future[Any]] | None


class WriterThread:
    """One thread, serving :meth:`call` in order (see the module).

    Args:
        name: the thread's name (seen in debuggers and ``py-spy``).
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        # A daemon: a backend never closed must not hang the interpreter's exit (what a
        # write cut short there leaves behind is what a crash would: storage copes).
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._stopping = False
        self._ended: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Start the thread, answering on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._ended = self._loop.create_future()
        self._thread.start()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._loop is not None and not self._stopping

    def call(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``work`` on the thread; a future of its result (or its exception).

        Raises:
            RuntimeError: the thread is not running.
        """
        loop = self._loop
        if loop is None or self._stopping:
            raise RuntimeError("the writer thread is not running")
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((work, future))
        return future

    def stop(self) -> None:
        """End the thread once the calls queued before are done (without waiting for them).

        Idempotent; :meth:`call` is refused from now on.
        """
        if self._loop is None or self._stopping:
            return
        self._stopping = True
        self._calls.put(None)

    async def end(
        self, last: Callable[[], object], ignored: tuple[type[BaseException], ...] = ()
    ) -> None:
        """Run ``last`` (its ``ignored`` errors suppressed), then stop; return once ended."""
        if self.running:
            with contextlib.suppress(*ignored):
                await self.call(last)
        self.stop()
        await self.stopped()

    async def stopped(self) -> None:
        """Return once the thread has ended (call :meth:`stop` first)."""
        ended = self._ended
        if ended is None:
            return
        await asyncio.shield(ended)
        self._thread.join(1.0)  # (it is returning: its last act was to tell ``ended``)

    def _serve(self) -> None:
        loop, ended = self._loop, self._ended
        assert loop is not None
        assert ended is not None
        while (call := self._calls.get()) is not None:
            work, future = call
            try:
                result = work()
            except BaseException as exc:  # the caller's to hear, whatever it is
                _answer(loop, future, None, exc)
            else:
                _answer(loop, future, result, None)
        _answer(loop, ended, None, None)


def _answer(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody is left to hear
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled; the work was done regardless
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
