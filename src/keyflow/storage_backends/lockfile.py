"""The single-writer lock of a storage file: ``<file>.lock``, held with ``flock``.

The operating system releases the lock when its process dies, however it dies (SIGKILL
included), so a crash never leaves a stale lock behind; the pid written into the file
only makes the error message useful.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import StorageLockedError


class WriterLock:
    """An exclusive, non-blocking lock on ``<path>.lock``."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            StorageLockedError: another process (or another backend in this one) holds it.
        """
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageLockedError(
                f"{self.path.with_suffix('')} is in use by another keyflow process "
                f"(pid {holder}); only one process may write it (open it read-only to watch)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (the file stays; it is reused)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock
