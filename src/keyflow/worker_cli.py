"""``keyflow worker``: a process that executes the jobs of an application's ``Keyflow``.

``keyflow worker --app myapp.jobs:kf --storage postgresql://… --workers 8`` imports
``myapp.jobs``, takes its ``kf`` (a :class:`~keyflow.Keyflow`, or a function returning
one), moves it to the storage and worker count given (:meth:`Keyflow.use`), starts it,
and runs until SIGTERM or SIGINT: then it stops gracefully (running handlers get
``--grace`` seconds, then go back to their lanes for another process).

A worker is meant to run under a supervisor: while its storage cannot be reached at
start (the database is down or restarting), it tries again with a growing pause
(:data:`FIRST_RETRY_SECONDS` doubling up to :data:`MAX_RETRY_SECONDS`), logging each
failure, until it connects or is told to stop. What retrying cannot mend (a bad option,
URL, application, login, or a schema of a newer keyflow) ends it at once. Exit statuses:

* 0: stopped by SIGTERM or SIGINT (also while it waited for its storage);
* 1: its storage answered, then failed while it started (a connection cut, another
  writer holding a file or a ``mode=single`` schema): start it again (a supervisor
  does), as a ``Keyflow`` starts only once;
* 2: an error retrying cannot mend (the message says which).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import signal
import sys
from typing import Any

from .errors import ConfigurationError, KeyflowError, StorageCorruptError, StorageError
from .options import seconds
from .scheduler import Keyflow
from .storage_backends import StorageBackend

logger = logging.getLogger("keyflow.worker")

FIRST_RETRY_SECONDS = 1.0
"""The pause after the first failed try to reach the storage; it doubles at each failure."""

MAX_RETRY_SECONDS = 30.0
"""The longest pause between two tries to reach the storage."""

WORKER_DESCRIPTION = (
    "Execute the jobs of an application's Keyflow in this process, until SIGTERM or "
    "SIGINT (then stop gracefully, exit status 0). With shared storage (postgresql://…) "
    "run as many of these, on as many machines, as you like. While the database cannot "
    "be reached at start, it tries again (after 1 s, doubling up to 30 s). Exit status: "
    "1 if the storage failed while it started (start it again), 2 on an error retrying "
    "cannot mend."
)


def add_worker_parser(commands: Any) -> None:
    """Add ``keyflow worker`` to the command's subparsers."""
    worker = commands.add_parser(
        "worker",
        help="execute an application's jobs (many processes share postgresql:// storage)",
        description=WORKER_DESCRIPTION,
    )
    worker.add_argument(
        "--app",
        required=True,
        metavar="MODULE:NAME",
        help="where the Keyflow is: a module and the name of the Keyflow in it (or of a "
        "function returning one), e.g. myapp.jobs:kf (required)",
    )
    worker.add_argument(
        "--storage",
        help="the storage to use instead of the one the application gives, e.g. "
        "postgresql://user@host/db (default: the application's)",
    )
    worker.add_argument(
        "--workers",
        type=int,
        help="runs this process executes at once, at least 1 (default: the application's)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        help="seconds running handlers get at a stop before their runs go back to their "
        "lanes (default: the application's)",
    )
    worker.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="what keyflow logs to stderr (default: INFO)",
    )


def load_app(spec: str) -> Keyflow:
    """The ``Keyflow`` named by ``module:name`` (the current directory is importable).

    Raises:
        ConfigurationError: the module or the name cannot be found, or is no Keyflow.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"--app must be MODULE:NAME (e.g. myapp.jobs:kf), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r} for --app: {exc}") from exc
    except Exception as exc:  # the module's own code failed (a SyntaxError is one too)
        raise ConfigurationError(
            f"cannot import {module_name!r} for --app: it raised {_said(exc)}"
        ) from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"{module_name!r} has no {attribute!r} (--app {spec})"
            ) from None
    if not isinstance(found, Keyflow) and callable(found):
        try:
            found = found()
        except Exception as exc:
            raise ConfigurationError(f"--app {spec} raised {_said(exc)}") from exc
        if inspect.iscoroutine(found):
            found.close()  # never awaited: no warning about it
            raise ConfigurationError(
                f"--app {spec} is an async function: give a Keyflow or a plain function "
                "returning one"
            )
    if not isinstance(found, Keyflow):
        raise ConfigurationError(
            f"--app {spec} is a {type(found).__name__}, not a keyflow.Keyflow (nor a function "
            "returning one)"
        )
    return found


async def serve(kf: Keyflow, grace: float | None) -> None:
    """Run ``kf`` until SIGTERM or SIGINT, then stop it gracefully.

    Waits for its storage first (see the module): a signal during the wait ends it.

    Raises:
        KeyflowError: the storage refused us for good, or ``kf`` failed to start.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        if not await reach(kf.storage, stop):
            logger.info("keyflow worker %d: stopped before its storage answered", os.getpid())
            return
        await kf.start()
        logger.info(
            "keyflow worker %d: jobs %s; stop with SIGTERM or Ctrl-C",
            os.getpid(),
            ", ".join(sorted(kf.jobs)) or "(none)",
        )
        await stop.wait()
        logger.info("keyflow worker %d: stopping", os.getpid())
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await kf.stop(grace)


async def reach(storage: StorageBackend, stop: asyncio.Event) -> bool:
    """Probe ``storage`` until it answers (True) or ``stop`` is set (False).

    Each failure is logged once, with the pause before the next try.

    Raises:
        ConfigurationError: the storage refused us for good (retrying will not help).
    """
    delay = FIRST_RETRY_SECONDS
    attempt = 0
    while True:
        attempt += 1
        probe = asyncio.ensure_future(storage.probe())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({probe, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not probe.done():
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
            return False
        try:
            probe.result()
            return True
        except StorageError as exc:
            logger.warning(
                "keyflow worker %d: storage unreachable (try %d): %s; next try in %g s",
                os.getpid(),
                attempt,
                exc,
                delay,
            )
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return False
        except TimeoutError:
            delay = min(delay * 2, MAX_RETRY_SECONDS)


def check_worker(kf: Keyflow) -> None:
    """Refuse a Keyflow a worker process cannot serve; warn of one it serves alone.

    Raises:
        ConfigurationError: no workers, read-only storage, or storage in this process only.
    """
    storage = kf.storage
    if not storage.durable:
        raise ConfigurationError(
            "the storage is memory://, which lives inside this process: nothing else can "
            "trigger its runs. Give --storage postgresql://… (shared by every process)"
        )
    if storage.read_only:
        raise ConfigurationError(
            "the storage is read-only (mode=ro): a worker executes and writes runs"
        )
    if kf.statistics().workers < 1:
        raise ConfigurationError(
            "this worker would execute nothing (workers=0): give --workers N (N >= 1)"
        )
    if not kf.shared:
        logger.warning(
            "keyflow worker %d: %r has one writer, this process: no other process can "
            "trigger runs in it while it runs (postgresql:// storage is shared)",
            os.getpid(),
            storage,
        )


def _said(exc: BaseException) -> str:
    """``ValueError: what it said`` on one line."""
    words = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {words}" if words else type(exc).__name__


def is_shared(url: str) -> bool:
    """Is ``url`` shared PostgreSQL storage (where any process may act on runs)?"""
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgresql+asyncpg"):
        return False
    query = rest.partition("?")[2]
    return not any(option in ("mode=ro", "mode=single") for option in query.split("&"))


async def serve_shared_dashboard(
    url: str,
    host: str,
    port: int,
    token: str,
    app_spec: str | None,
    allowed_hosts: list[str] | None,
) -> None:
    """Serve the dashboard of shared storage with its actions, until interrupted.

    A scheduler without workers takes the actions (cancel, retrigger, trigger, pause);
    with ``app_spec`` (``MODULE:NAME``) it knows the application's jobs, so runs of them
    can be triggered and retriggered from the dashboard.

    Raises:
        KeyflowError: the port is taken, the storage cannot be opened, or the app is bad.
    """
    import uvicorn

    from .demo.serve import bind, url_of
    from .web import create_app, token_authorizer

    if app_spec is not None:
        kf = load_app(app_spec)
        kf.use(url, workers=0)
    else:
        kf = Keyflow(url, workers=0)
    sock = bind(host, port)
    with sock:
        async with kf:
            app = create_app(kf, authorize=token_authorizer(token), allowed_hosts=allowed_hosts)
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
            print(f"keyflow dashboard (with actions) for {url} on {url_of(sock)}?token={token}")
            await server.serve(sockets=[sock])


def run_worker(args: argparse.Namespace) -> int:
    """``keyflow worker``: returns the exit status."""
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        grace = None if args.grace is None else seconds(args.grace, "--grace")
        if args.workers is not None and args.workers < 1:
            raise ConfigurationError(f"--workers must be at least 1, got {args.workers}")
        kf = load_app(args.app)
        if args.storage is not None or args.workers is not None:
            kf.use(args.storage, workers=args.workers)
        check_worker(kf)
        asyncio.run(serve(kf, grace))
    except StorageError as exc:
        print(f"keyflow worker: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, StorageCorruptError) else 1
    except KeyflowError as exc:
        print(f"keyflow worker: {exc}", file=sys.stderr)
        return 2
    return 0
