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

from ..errors import StorageError, StorageLockedError


class WriterLock:
    """An exclusive, non-blocking lock on ``<path>.lock``.

    The lock file is named after the storage file's real path (symlinks resolved), so
    another name for the same file (a symlinked ``shared/runs.db``) meets the same lock.
    """

    def __init__(self, path: Path) -> None:
        real = path.resolve()
        self.path = real.with_name(real.name + ".lock")
        self._fd: int | None = None
        self._held: list[int] = []  # more files locked beside it (see hold())
        self._held_paths: list[Path] = []

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            StorageLockedError: another process (or another backend in this one) holds it.
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot create the lock file {self.path} (keyflow needs to write beside "
                f"{self.path.with_suffix('')}; open it read-only to only read): {exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            own = ": another Keyflow instance of this one" if holder == str(os.getpid()) else ""
            raise StorageLockedError(
                f"{self.path.with_suffix('')} is in use by another keyflow process "
                f"(pid {holder}{own}); only one may write it (open it read-only to watch)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {self.path}: {exc}") from exc
        with contextlib.suppress(OSError):  # the pid only makes a refusal's message nicer
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def check(self) -> None:
        """Make sure the lock still guards the storage: its file is the one we locked.

        Deleting ``<file>.lock`` (or replacing it) under a running writer would let a
        second writer in; this is checked before every write batch.

        Raises:
            StorageError: the lock file was deleted or replaced.
        """
        if self._fd is None:
            raise StorageError(f"{self.path} is not locked")
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        held = os.fstat(self._fd)
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise StorageError(
                f"the lock file {self.path} was deleted or replaced while keyflow held it: "
                "another process could now write the same storage, so keyflow refuses to "
                "write; stop the other writer and restart keyflow"
            )

    def hold(self, path: Path) -> None:
        """Also lock ``path`` itself, so a hard link to it cannot get in either.

        Raises:
            StorageLockedError: another process locked that file.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot open {path} to lock it: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageLockedError(
                f"{path} is in use by another keyflow process (through another name for "
                "the same file); only one may write it (open it read-only to watch)"
            ) from None
        self._held.append(fd)
        self._held_paths.append(path)

    def holds(self, path: Path) -> bool:
        """True when :meth:`hold` took ``path``."""
        return path in self._held_paths

    def release(self) -> None:
        """Let go of the lock (the file stays; it is reused)."""
        while self._held:
            os.close(self._held.pop())
        self._held_paths.clear()
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock
