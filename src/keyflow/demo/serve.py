"""Serving a web app from the command line: bind first, so a taken port is one clear error.

Binding the socket before anything else starts (the scheduler, its storage) lets the
command say "port 8000 is in use" and exit, with nothing started and nothing to undo.
uvicorn then serves on that socket.
"""

from __future__ import annotations

import asyncio
import errno
import socket

import uvicorn
from starlette.types import ASGIApp

from ..errors import KeyflowError


class PortInUseError(KeyflowError):
    """The address to serve on is taken (another demo or dashboard?): pick another --port."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    Raises:
        PortInUseError: the port is taken, or the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is in use (another keyflow demo or dashboard?): "
                "pass --port with another number, or --port 0 for any free port"
            ) from None
        raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket (the real port when 0 was asked)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: ASGIApp, sock: socket.socket) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Serve ``app`` on ``sock``: set ``server.should_exit`` to stop, then await the task."""
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    return server, asyncio.ensure_future(server.serve(sockets=[sock]))
