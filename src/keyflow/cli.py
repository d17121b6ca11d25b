"""The ``keyflow`` command.

``keyflow dashboard --storage URL`` serves the dashboard over a storage file that
another process writes: read-only, live by re-reading the storage every second.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from collections.abc import Sequence

from .errors import KeyflowError
from .storage_backends import open_backend

LOOPBACK_NAMES = frozenset({"localhost"})


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_only_url(url: str) -> str:
    """``url`` with ``mode=ro`` (a dashboard never writes)."""
    if url.startswith("memory:"):
        raise KeyflowError("memory:// lives inside its process: give a sqlite:// or json:// URL")
    if "mode=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "mode=ro"


async def serve_dashboard(url: str, host: str, port: int, token: str | None) -> None:
    """Serve the read-only dashboard of ``url`` until interrupted."""
    import uvicorn

    from .web import create_app, token_authorizer
    from .web.source import opened

    backend = open_backend(read_only_url(url), retention=10**9)
    async with opened(backend) as source:
        app = create_app(
            source, read_only=True, authorize=token_authorizer(token) if token else None
        )
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        where = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
        print(f"keyflow dashboard for {url} on {where}", flush=True)
        await uvicorn.Server(config).serve()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keyflow`` command."""
    parser = argparse.ArgumentParser(prog="keyflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    dash = commands.add_parser("dashboard", help="serve the dashboard of a storage file")
    dash.add_argument("--storage", required=True, help="sqlite:///runs.db or json:///runs.json")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8000)
    dash.add_argument("--token", help="required to bind anything but a loopback address")
    args = parser.parse_args(argv)
    if args.command == "dashboard":
        if not _is_loopback(args.host) and not args.token:
            parser.error(f"--host {args.host} is reachable by others: give a --token too")
        try:
            asyncio.run(serve_dashboard(args.storage, args.host, args.port, args.token))
        except KeyflowError as exc:
            print(f"keyflow: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
