"""The hand-rolled baseline every core benchmark is measured against.

``asyncio.Queue`` + N worker tasks running no-op coroutines, with a per-key dict and a
small run record: the least a keyed job runner can do in pure asyncio.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def _noop() -> None:
    return None


async def baseline_jobs_per_second(jobs: int, keys: int, workers: int) -> float:
    """End-to-end no-op jobs/s: enqueue ``jobs`` over ``keys`` keys, run them all."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    per_key: dict[str, int] = {}

    async def worker() -> None:
        while True:
            record = await queue.get()
            record["status"] = "running"
            await _noop()
            record["status"] = "completed"
            per_key[record["key"]] -= 1
            queue.task_done()

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    start = time.perf_counter()
    for i in range(jobs):
        key = f"k{i % keys}"
        per_key[key] = per_key.get(key, 0) + 1
        queue.put_nowait({"id": i, "key": key, "status": "pending", "input": {"i": i}})
    await queue.join()
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return jobs / elapsed
