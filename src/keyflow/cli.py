"""The keyflow command: ``keyflow demo`` and ``keyflow dashboard``."""

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
from .worker_cli import add_worker_parser, is_shared, run_worker, serve_shared_dashboard

LOOPBACK_NAMES = frozenset({"localhost"})
TOKEN_VARIABLE = "KEYFLOW_DASHBOARD_TOKEN"
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})

DESCRIPTION = """\
keyflow: an asyncio job scheduler with per-key trigger coalescing that never loses a
trailing trigger.

  keyflow demo        the crawl -> process story, live, with its dashboard
  keyflow worker      execute an application's jobs (many share postgresql:// storage)
  keyflow dashboard   a dashboard over storage other processes write (read-only; on
                      shared postgresql:// storage with a token, with actions)

Run "keyflow demo --help", "keyflow worker --help" or "keyflow dashboard --help".
"""

DEMO_DESCRIPTION = """\
Simulated GitHub organisations whose repositories get pull requests at random times.
Every hour each organisation is crawled; every crawl ends by triggering "process" for
its organisation, which must never run twice at once. The same world runs through two
pipelines at once: one triggers process with coalesce="skip" (a crawl that ends while
process runs has its trigger dropped: its PRs wait for the next hourly cycle), the
other with coalesce="queue" (that trigger queues one follow-up run; later ones join
it). The console prints one line per simulated 10 minutes; the dashboard shows the
lanes, runs and coalesced triggers, and /story the two pipelines side by side.
"""

DEMO_EPILOG = """\
state: the demo keeps its runs in the --storage file (keyflow-demo.db) and the
simulated world beside it, in keyflow-demo.world.db (organisations, repositories,
PRs, what each pipeline fetched and processed, the simulated clock, and the story's
settings). Run the demo again and it continues the story with its stored settings
(options that differ are reported as ignored); --reset removes both files first.

examples:
  keyflow demo                          the story, live; Ctrl-C stops it
  keyflow demo --port 0                 the same, on any free port
  keyflow demo --reset --orgs 5         start over with five organisations
  keyflow demo --compare --hours 24     A/B x skip/queue side by side, in a second
"""


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
        raise KeyflowError(
            "memory:// lives inside its process: give a sqlite://, json:// or postgresql:// URL"
        )
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise KeyflowError(f"storage URL {url!r} has no scheme: sqlite:///{url} or json:///{url}?")
    if scheme in ("sqlite", "json") and not rest.startswith("/"):
        raise KeyflowError(
            f"storage URL {url!r} needs a path after {scheme}:// (three slashes, e.g. "
            f"{scheme}:///runs.{'db' if scheme == 'sqlite' else 'json'} or {scheme}:////abs/path)"
        )
    path, _, query = rest.partition("?")
    # A reader takes no lease and no pool (shared mode's): a shared URL reads as it is.
    dropped = ("mode=", "lease=", "pool=") if scheme.startswith("postgresql") else ("mode=",)
    options = [o for o in query.split("&") if o and not o.startswith(dropped)]
    # Read-only whatever mode the URL asked for: a dashboard must never take the
    # writer's lock, create the file or write to it.
    return f"{scheme}://{path}?" + "&".join([*options, "mode=ro"])


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


async def serve_dashboard(
    url: str, host: str, port: int, token: str | None, *, stored_clock: bool = False
) -> None:
    """Serve the read-only dashboard of ``url`` until interrupted.

    With ``stored_clock``, pages measure ages against the newest time in storage
    instead of the wall clock (a store written on a simulated clock, as the demo's).

    Raises:
        KeyflowError: the port is taken, or the storage cannot be opened.
    """
    from .demo.serve import bind, url_of
    from .web import create_app, token_authorizer
    from .web.storage_source import opened

    backend = open_backend(read_only_url(url), retention=10**9)
    sock = bind(host, port)  # a taken port: one clear error, nothing opened yet
    with sock:
        async with opened(backend, stored_clock=stored_clock) as source:
            app = create_app(
                source,
                read_only=True,
                authorize=token_authorizer(token) if token else None,
                allowed_hosts=allowed_hosts(host),
            )
            import uvicorn

            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
            where = url_of(sock) + (f"?token={token}" if token else "")
            print(f"keyflow dashboard for {url} on {where}", flush=True)
            await server.serve(sockets=[sock])


def _with_default(text: str, value: object) -> str:
    if isinstance(value, tuple):
        value = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{text} (default: {value})"


def _demo_parser(commands: Any) -> None:
    from .demo.settings import StorySettings

    story = StorySettings()
    demo = commands.add_parser(
        "demo",
        help="the crawl -> process story, live, with its dashboard",
        description=DEMO_DESCRIPTION,
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    live = demo.add_argument_group("running the live demo")
    live.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help=_with_default("simulated seconds per real second; 60 plays an hour a minute", 60),
    )
    live.add_argument(
        "--duration",
        type=float,
        help="real seconds to run (default: until Ctrl-C)",
    )
    live.add_argument(
        "--storage",
        default="sqlite:///keyflow-demo.db",
        help=_with_default(
            "where the runs are kept (sqlite:///file.db, json:///file.json or memory://); "
            "the world goes beside it in <file>.world.db",
            "sqlite:///keyflow-demo.db",
        ),
    )
    live.add_argument(
        "--reset",
        action="store_true",
        help="remove the stored story (runs and world) and start a new one (default: continue)",
    )
    live.add_argument(
        "--no-dashboard",
        action="store_true",
        help="do not serve the dashboard (default: serve it)",
    )
    live.add_argument(
        "--host",
        default="127.0.0.1",
        help=_with_default("the dashboard's address, a loopback one", "127.0.0.1"),
    )
    live.add_argument(
        "--port",
        type=int,
        default=8000,
        help=_with_default("the dashboard's port; 0 takes any free port", 8000),
    )
    settings = demo.add_argument_group(
        "the story (a continued story keeps the settings it was started with)"
    )
    settings.add_argument(
        "--scenario",
        choices=("A", "B"),
        help=_with_default(
            "A: each crawl on its repository's key (the hourly crawl fans out); "
            "B: one crawl key per organisation",
            story.scenario,
        ),
    )
    settings.add_argument(
        "--strategy",
        choices=("both", "skip", "queue"),
        help=_with_default(
            "the pipelines: skip and queue side by side, or one of them", story.strategy
        ),
    )
    settings.add_argument("--orgs", type=int, help=_with_default("organisations", story.orgs))
    settings.add_argument(
        "--repos",
        type=int,
        help=_with_default("repositories per organisation at the start", story.repos),
    )
    settings.add_argument(
        "--prs-per-hour",
        type=float,
        help=_with_default("mean PRs opened per repository per simulated hour", story.prs_per_hour),
    )
    settings.add_argument(
        "--adds-per-hour",
        type=float,
        help=_with_default(
            "mean repositories users add per organisation per simulated hour",
            story.adds_per_hour,
        ),
    )
    settings.add_argument(
        "--crawl-minutes",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help=_with_default(
            "duration range of an organisation-wide crawl (one repository's takes a third)",
            story.crawl_minutes,
        ),
    )
    settings.add_argument(
        "--seed", type=int, help=_with_default("random seed of the world", story.seed)
    )
    compare = demo.add_argument_group("comparing, in virtual time")
    compare.add_argument(
        "--compare",
        action="store_true",
        help="play A/skip, A/queue, B/skip, B/queue on the same world and print a table "
        "(default: run live)",
    )
    compare.add_argument(
        "--hours", type=float, default=24.0, help=_with_default("simulated hours", 24)
    )
    compare.add_argument(
        "--svg",
        default="keyflow-demo-staleness.svg",
        help=_with_default("where the chart goes", "keyflow-demo-staleness.svg"),
    )
    demo.set_defaults(handler=_demo)


STORY_OPTIONS = (
    "scenario",
    "strategy",
    "orgs",
    "repos",
    "prs_per_hour",
    "adds_per_hour",
    "crawl_minutes",
    "seed",
)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo.report import staleness_svg, table
    from .demo.runner import DemoOptions, compare, live
    from .demo.settings import StorySettings
    from .demo.store import reset

    given = {name: getattr(args, name) for name in STORY_OPTIONS}
    given = {name: value for name, value in given.items() if value is not None}
    if "crawl_minutes" in given:
        given["crawl_minutes"] = tuple(given["crawl_minutes"])
    if args.compare:
        svg = Path(args.svg)
        reports = asyncio.run(compare(args.hours, StorySettings(**given)))
        svg.write_text(staleness_svg(reports))
        seed = given.get("seed", StorySettings().seed)
        print(f"{args.hours:g} simulated hours, seed {seed}, same world for each column\n")
        print(table(reports))
        print(f"\nchart: {svg}")
        return 0
    if args.reset:
        removed = reset(args.storage)
        gone = ", ".join(str(p) for p in removed) or "nothing was stored"
        print(f"keyflow demo: reset ({gone})")
    options = DemoOptions(
        settings=given,
        seconds=args.duration,
        speed=args.speed,
        storage=args.storage,
        dashboard=not args.no_dashboard,
        host=args.host,
        port=args.port,
    )
    try:
        reports = asyncio.run(live(options, out=lambda line: print(line, flush=True)))
    except KeyboardInterrupt:  # before the demo could catch it (it was still starting)
        print("keyflow demo: interrupted while starting; nothing was lost", file=sys.stderr)
        return 130
    print("\n" + table(reports))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keyflow`` command."""
    parser = argparse.ArgumentParser(
        prog="keyflow",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(commands)
    add_worker_parser(commands)
    dash = commands.add_parser(
        "dashboard",
        help="a dashboard over storage other processes write",
        description="Serve the dashboard of storage (a file or a database) that other "
        "keyflow processes write: read-only, live by re-reading it. On shared PostgreSQL "
        "storage (postgresql://, not mode=ro or mode=single) with a token, it acts too: "
        "cancel, retrigger, trigger (with --app), pause and resume, live through the "
        "database's notices.",
    )
    dash.add_argument(
        "--storage",
        required=True,
        help="sqlite:///runs.db, json:///runs.json or postgresql://… (required)",
    )
    dash.add_argument("--host", default="127.0.0.1", help=_with_default("address", "127.0.0.1"))
    dash.add_argument(
        "--port", type=int, default=8000, help=_with_default("port; 0 takes any free port", 8000)
    )
    dash.add_argument(
        "--token",
        help="a secret the browser must show; required to bind anything but a loopback "
        f"address; prefer ${TOKEN_VARIABLE} or --token-file, since a command line is "
        "visible to other users (default: none)",
    )
    dash.add_argument("--token-file", help="a file whose first line is the token (default: none)")
    dash.add_argument(
        "--app",
        metavar="MODULE:NAME",
        help="shared PostgreSQL storage with a token: the application's Keyflow, whose "
        "jobs the dashboard's actions may trigger (default: none; cancels and pauses work "
        "without it)",
    )
    dash.add_argument(
        "--clock",
        choices=("wall", "stored"),
        default="wall",
        help="what ages are measured against: the wall clock, or the newest time in the "
        "storage, for a store written on a simulated clock such as keyflow demo's "
        "(default: wall)",
    )
    args = parser.parse_args(argv)
    if args.command == "worker":
        return run_worker(args)
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
        if args.app is not None and not (token and is_shared(args.storage)):
            parser.error(  # it would be ignored: a read-only dashboard triggers nothing
                "--app names the jobs the dashboard's actions trigger: it needs shared "
                "postgresql:// storage (not mode=ro or mode=single) and a token"
            )
        try:
            stored = args.clock == "stored"
            if token and is_shared(args.storage):  # any process may act: with actions
                asyncio.run(
                    serve_shared_dashboard(
                        args.storage,
                        args.host,
                        args.port,
                        token,
                        args.app,
                        allowed_hosts(args.host),
                    )
                )
                return 0
            asyncio.run(
                serve_dashboard(args.storage, args.host, args.port, token, stored_clock=stored)
            )
        except KeyflowError as exc:
            print(f"keyflow: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
