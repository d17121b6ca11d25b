"""The ``keyflow`` command.

``keyflow demo`` tells the crawl → process story (see :mod:`keyflow.demo`);
``keyflow dashboard --storage URL`` serves the dashboard over a storage file that
another process writes: read-only, live by re-reading the storage every second.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import KeyflowError
from .storage_backends import open_backend

LOOPBACK_NAMES = frozenset({"localhost"})
TOKEN_VARIABLE = "KEYFLOW_DASHBOARD_TOKEN"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


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


def dashboard_token(
    token: str | None, token_file: str | None, environ: Mapping[str, str]
) -> str | None:
    """The dashboard's token, from the first of its three sources that has one.

    ``--token-file``, then ``$KEYFLOW_DASHBOARD_TOKEN``, then ``--token`` (a command
    line is visible to other users in ``ps``: the other two are better).

    Raises:
        KeyflowError: the token file cannot be read or is empty.
    """
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyflowError(f"cannot read the token file {token_file}: {exc}") from None
        if not text:
            raise KeyflowError(f"the token file {token_file} is empty")
        return text
    return environ.get(TOKEN_VARIABLE) or token or None


def allowed_hosts(host: str) -> list[str] | None:
    """The Host names the dashboard answers when bound to ``host``.

    Loopback binds keep the dashboard's default (loopback names only, against DNS
    rebinding). A named address adds itself; a wildcard bind (0.0.0.0, ::) answers any
    name, since a token is required there and a rebinding page never holds its cookie.
    """
    if _is_loopback(host):
        return None
    if host in WILDCARD_HOSTS:
        return ["*"]
    name = f"[{host}]" if ":" in host else host
    return [name, "localhost", "127.0.0.1", "[::1]"]


async def serve_dashboard(url: str, host: str, port: int, token: str | None) -> None:
    """Serve the read-only dashboard of ``url`` until interrupted."""
    import uvicorn

    from .web import create_app, token_authorizer
    from .web.storage_source import opened

    backend = open_backend(read_only_url(url), retention=10**9)
    async with opened(backend) as source:
        app = create_app(
            source,
            read_only=True,
            authorize=token_authorizer(token) if token else None,
            allowed_hosts=allowed_hosts(host),
        )
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        where = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
        print(f"keyflow dashboard for {url} on {where}", flush=True)
        await uvicorn.Server(config).serve()


def _demo_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="the crawl -> process simulator",
        description="Simulated GitHub orgs whose crawls feed one serial `process` per org.",
    )
    demo.add_argument(
        "--scenario",
        choices=("A", "B"),
        default="A",
        help="A: per-repository crawl keys; B: one crawl key per org",
    )
    demo.add_argument(
        "--strategy",
        choices=("queue", "skip"),
        default="queue",
        help="coalesce= of the process trigger (and of B's crawls)",
    )
    demo.add_argument(
        "--compare",
        action="store_true",
        help="run A/B x skip/queue in simulated time and print them side by side",
    )
    demo.add_argument("--hours", type=float, default=24.0, help="simulated hours (--compare)")
    demo.add_argument(
        "--svg", default="keyflow-demo-staleness.svg", help="where --compare writes its chart"
    )
    demo.add_argument("--duration", type=float, help="real seconds to run (default: Ctrl-C)")
    demo.add_argument(
        "--speed",
        type=float,
        default=600.0,
        help="simulated seconds per real second (600: an hour in 6 s)",
    )
    demo.add_argument("--storage", default="sqlite:///keyflow-demo.db")
    demo.add_argument("--no-dashboard", action="store_true")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument(
        "--prs-per-hour",
        type=float,
        default=6.0,
        help="mean PRs opened per repository per simulated hour",
    )
    demo.add_argument(
        "--adds-per-hour",
        type=float,
        default=0.5,
        help="mean repositories added per org per simulated hour",
    )
    demo.add_argument(
        "--crawl-minutes",
        type=float,
        nargs=2,
        default=(2.0, 7.0),
        metavar=("MIN", "MAX"),
        help="an org-wide crawl's duration range",
    )
    demo.add_argument("--orgs", type=int, default=3)
    demo.add_argument("--repos", type=int, default=4, help="repositories per org at start")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=_demo)  # fmt: skip


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from .demo.report import staleness_svg, table
    from .demo.runner import DemoOptions, compare, live
    from .demo.sim import SimConfig
    from .demo.world import WorldConfig

    world = WorldConfig(
        orgs=args.orgs, repos=args.repos, prs_per_hour=args.prs_per_hour, seed=args.seed
    )
    low, high = args.crawl_minutes
    sim = SimConfig(
        repos_added_per_hour=args.adds_per_hour,
        crawl_seconds=(low * 60, high * 60),
        seed=args.seed,
    )
    if args.compare:
        svg = Path(args.svg)
        reports = asyncio.run(compare(args.hours, world, sim))
        svg.write_text(staleness_svg(reports))
        print(f"{args.hours:g} simulated hours, seed {args.seed}, same world for each column\n")
        print(table(reports))
        print(f"\nchart: {svg}")
        return 0
    options = DemoOptions(
        scenario=args.scenario,
        strategy=args.strategy,
        seconds=args.duration,
        speed=args.speed,
        storage=args.storage,
        dashboard=not args.no_dashboard,
        host=args.host,
        port=args.port,
        world=world,
        sim=replace(sim, scenario=args.scenario, strategy=args.strategy),
    )
    report = asyncio.run(live(options))
    print("\n" + table([report]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keyflow`` command."""
    parser = argparse.ArgumentParser(prog="keyflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _demo_parser(commands)
    dash = commands.add_parser("dashboard", help="serve the dashboard of a storage file")
    dash.add_argument("--storage", required=True, help="sqlite:///runs.db or json:///runs.json")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=int, default=8000)
    dash.add_argument(
        "--token",
        help=f"required to bind anything but a loopback address; prefer ${TOKEN_VARIABLE}"
        " or --token-file (a command line is visible to other users)",
    )
    dash.add_argument("--token-file", help="a file holding the token (first line)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not _is_loopback(args.host):
            parser.error(f"--host {args.host} is reachable by others: the demo binds loopback only")
        try:
            return _demo(args)
        except KeyflowError as exc:
            print(f"keyflow: {exc}", file=sys.stderr)
            return 2
    if args.command == "dashboard":
        try:
            token = dashboard_token(args.token, args.token_file, os.environ)
        except KeyflowError as exc:
            parser.error(str(exc))
        if not _is_loopback(args.host) and not token:
            parser.error(
                f"--host {args.host} is reachable by others: set ${TOKEN_VARIABLE}"
                " (or --token-file) too"
            )
        try:
            asyncio.run(serve_dashboard(args.storage, args.host, args.port, token))
        except KeyflowError as exc:
            print(f"keyflow: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
