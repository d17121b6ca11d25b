"""A producer process: ``python -m tests.shared.producer URL SEED COUNT OUT``.

Triggers ``COUNT`` random jobs of ``tests.shared.app`` on 50 keys through its own
``Keyflow`` (no workers), one after another, and writes each acknowledged trigger as a
JSON line to ``OUT``: the time just before the call, the run id and the disposition.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

from tests.shared import app

JOBS = ("queue1", "queue3", "skip", "cancel", "plain")


async def main(url: str, seed: int, count: int) -> list[str]:
    """The triggers, as JSON lines."""
    rng = random.Random(seed)
    kf = app.kf
    kf.use(url, workers=0)
    lines: list[str] = []
    async with kf:
        for n in range(count):
            job = rng.choice(JOBS)
            key = f"k{rng.randrange(50)}"
            before = time.time()
            result = await kf.trigger(job, {"key": key, "n": n, "seed": seed})
            lines.append(
                json.dumps(
                    {
                        "at": before,
                        "job": job,
                        "key": key,
                        "run_id": result.run_id,
                        "disposition": result.disposition.value,
                    }
                )
            )
    return lines


if __name__ == "__main__":
    made = asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    Path(sys.argv[4]).write_text("".join(line + "\n" for line in made), encoding="utf-8")
