"""keyflow in one screen: parallel crawls feeding one serial `process` per organisation.

Run it with `python examples/quickstart.py` (`make demo` runs the bigger simulation).
Three crawls of one organisation run side by side; each ends by triggering `process`
with coalesce="queue". While the first `process` run aggregates,
the other crawls finish: their triggers queue exactly one follow-up, which picks up
everything. Then the same story with coalesce="skip" shows what gets left behind.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any, Literal

import keyflow


async def story(strategy: Literal["queue", "skip"]) -> tuple[int, int, Counter[str]]:
    kf = keyflow.Keyflow(workers=8, seed=1)
    rng = random.Random(7)
    fetched: set[str] = set()
    processed: set[str] = set()
    dispositions: Counter[str] = Counter()

    @kf.job()
    async def crawl(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
        await asyncio.sleep(input["seconds"])  # talking to GitHub
        prs = {f"{input['repo']}#{n}" for n in range(rng.randint(1, 5))}
        fetched.update(prs)
        result = await ctx.trigger(
            "process",
            {"org": input["org"]},
            concurrency_key=f"process:{input['org']}",
            coalesce=strategy,
        )
        dispositions[result.disposition.value] += 1
        return len(prs)

    @kf.job()
    async def process(ctx: keyflow.RunContext, input: dict[str, Any]) -> int:
        batch = fetched - processed  # what has been fetched when this run starts
        await asyncio.sleep(0.2)  # aggregating
        processed.update(batch)
        return len(batch)

    async with kf:
        for repo, seconds in (("api", 0.05), ("web", 0.1), ("cli", 0.15)):
            await crawl.trigger(
                {"org": "acme", "repo": repo, "seconds": seconds},
                concurrency_key=f"crawl:acme:{repo}",
            )
        await kf.run_until_idle()
        return len(fetched), len(fetched - processed), dispositions


async def main() -> None:
    print("keyflow quickstart: three parallel crawls, one `process` per organisation\n")
    strategies: tuple[Literal["queue", "skip"], ...] = ("queue", "skip")
    for strategy in strategies:
        fetched, left, seen = await story(strategy)
        print(
            f'coalesce="{strategy}": {fetched} PRs fetched, {left} left unprocessed; '
            f"process triggers: {seen['created']} created, {seen['queued']} queued, "
            f"{seen['coalesced']} coalesced"
        )
    print('\n"queue" leaves nothing behind; "skip" drops the triggers of crawls that end')
    print("while `process` runs.")


if __name__ == "__main__":
    asyncio.run(main())
