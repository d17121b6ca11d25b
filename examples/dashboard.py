"""The dashboard over a busy scheduler: crawls feeding one serial `process` per org.

    python examples/dashboard.py [--port 8000] [--storage sqlite:///dashboard-demo.db]

Open http://127.0.0.1:8000/ and watch lanes go running → running+queued → idle while
crawls coalesce their triggers into the one queued `process` run of each organisation.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import socket
from typing import Any

import uvicorn

import keyflow
from keyflow.web import create_app

ORGS = ("acme", "globex", "initech", "umbrella", "hooli")


def build(storage: str) -> keyflow.Keyflow:
    """A scheduler with the crawl → process jobs."""
    kf = keyflow.Keyflow(storage=storage, workers=16)
    rng = random.Random()

    @kf.job(retries=1)
    async def crawl(ctx: keyflow.RunContext, input: dict[str, Any]) -> dict[str, Any]:
        pages = rng.randint(3, 8)
        for page in range(pages):
            ctx.progress(page, pages, f"page {page + 1}")
            await asyncio.sleep(rng.uniform(0.2, 0.6))  # the simulated network
        org = input["org"]
        await ctx.trigger(
            "process", {"org": org}, concurrency_key=f"process:{org}", coalesce="queue"
        )
        return {"prs": pages}

    @kf.job(timeout=60)
    async def process(ctx: keyflow.RunContext, input: dict[str, Any]) -> dict[str, Any]:
        steps = 5
        for step in range(steps):
            ctx.progress(step, steps, "aggregating")
            await asyncio.sleep(rng.uniform(0.5, 1.2))  # the simulated work
        ctx.log.info("aggregated", org=input["org"])
        return {"org": input["org"]}

    return kf


async def produce(kf: keyflow.Keyflow) -> None:
    """Crawls of random repositories, forever."""
    rng = random.Random()
    while True:
        org = rng.choice(ORGS)
        repo = f"{org}/repo-{rng.randint(1, 30)}"
        await kf.trigger("crawl", {"org": org, "repo": repo}, concurrency_key=f"crawl:{repo}")
        await asyncio.sleep(rng.uniform(0.05, 0.4))


async def main(args: argparse.Namespace) -> None:
    """Run the scheduler, the producer and the dashboard together, until Ctrl-C."""
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((args.host, args.port))
    except OSError as exc:
        listening.close()
        print(f"cannot listen on {args.host}:{args.port} ({exc.strerror}): pass --port")
        raise SystemExit(2) from None
    kf = build(args.storage)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)  # a clean stop, not a cancelled task
    async with kf:  # leaving it stops the scheduler (running handlers get their grace)
        producer = asyncio.create_task(produce(kf))
        server = uvicorn.Server(
            uvicorn.Config(create_app(kf), host=args.host, port=args.port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        port = listening.getsockname()[1]  # (--port 0: the one the system chose)
        print(f"dashboard on http://{args.host}:{port}/ (Ctrl-C stops)", flush=True)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait((serving, stopping), return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        producer.cancel()
        stopping.cancel()
        await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--storage", default="memory://")
    asyncio.run(main(parser.parse_args()))
