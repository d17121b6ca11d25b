"""huey's SQLite queue, a benchmark-only peer for one sequential producer (issue #15).

huey is not a keyflow dependency: ``make bench-storage`` installs it into ``.venv-bench``
(with ``python -m bench.storage`` elsewhere, the peer is skipped without it). One
producer enqueues no-op tasks one at a time (each an INSERT + COMMIT into huey's SQLite
file, WAL) while the consumer's worker threads run them, in this process; jobs/s from the
first enqueue to the last task's end. huey is measured at its own defaults
(``synchronous=OFF``: keyflow writes with ``NORMAL``), its workers polling every
millisecond (its default starts at 0.1 s), with the best of a few worker counts.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import signal
import threading
import time
from pathlib import Path
from typing import Any

WORKER_COUNTS = (1, 4, 16)
"""The consumer's thread counts tried; the best is reported."""


def available() -> bool:
    """Is huey installed here?"""
    return importlib.util.find_spec("huey") is not None


def jobs_per_second(path: Path, count: int, workers: int) -> float:
    """``count`` no-op tasks from one sequential producer, ``workers`` threads; jobs/s."""
    huey: Any = importlib.import_module("huey")  # (a peer: no keyflow dependency)
    queue = huey.SqliteHuey("bench", filename=str(path), results=False)
    finished = itertools.count(1)
    done = threading.Event()

    def run(n: int) -> None:
        if next(finished) == count:  # (itertools.count is atomic under the GIL)
            done.set()

    noop = queue.task()(run)

    consumer = queue.create_consumer(
        workers=workers,
        worker_type="thread",
        periodic=False,
        initial_delay=0.001,
        backoff=1.0,
        max_delay=0.001,
        check_worker_health=False,
    )
    handlers: dict[int, Any] = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    consumer.start()  # (sets its own signal handlers: put back below)
    try:
        start = time.perf_counter()
        for n in range(count):
            noop(n)
        if not done.wait(300):
            raise RuntimeError("huey did not run every task within 300 s")
        return count / (time.perf_counter() - start)
    finally:
        consumer.stop(graceful=True)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        queue.storage.close()


def best_jobs_per_second(directory: Path, count: int, rounds: int) -> tuple[float, int]:
    """The best rate over :data:`WORKER_COUNTS` and ``rounds``; with its worker count."""
    results = []
    for workers in WORKER_COUNTS:
        for round_ in range(rounds):
            path = directory / f"huey-{workers}-{round_}.db"
            results.append((jobs_per_second(path, count, workers), workers))
    return max(results)
