"""One worker process of the PostgreSQL benchmark (started by ``bench.pg_common.Workers``).

``python -m bench.pg_worker {bare,procrastinate,keyflow} --dsn … --schema … --concurrency C``
prints ``ready`` once it takes work (or ``error: <why>`` and exits 1), and stops when its
stdin closes: the benchmark's process ending, however it ends, stops it too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def stdin_closed() -> None:
    """Return once stdin reaches end of file."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def ready() -> None:
    """Tell the benchmark this process takes work."""
    print("ready", flush=True)


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.ensure_future(stdin_closed())
    if args.system == "bare":
        from bench import pg_bare

        await pg_bare.serve(args.dsn, args.schema, args.concurrency, ready, stop)
    elif args.system == "procrastinate":
        from bench import pg_procrastinate

        await pg_procrastinate.serve(args.dsn, args.schema, args.concurrency, ready, stop)
    else:
        from bench import pg_keyflow

        await pg_keyflow.serve(args.dsn, args.schema, args.concurrency, args.jobs, ready, stop)


def cli() -> None:
    """Parse arguments and serve until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=["bare", "procrastinate", "keyflow"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=5_000)
    args = parser.parse_args()
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        message = f"error: {type(exc).__name__}: {exc}".replace("\n", " ")
        print(message, flush=True)
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    cli()
