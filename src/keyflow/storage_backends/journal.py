"""The files of the JSON backend at the level of bytes: the journal, atomic replaces.

The journal is written through a bare file descriptor opened ``O_APPEND``: an append is
``write`` + ``fsync`` with no buffer in between, so a failed append leaves nothing behind
to be flushed later (a buffered writer would write the refused line at close), and
cutting the file back to its last good line is one ``ftruncate``.

These calls block; the backend runs them in a thread.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path


class JournalFile:
    """The journal, open for appending (one writer).

    Raises:
        OSError: from every method, as the operating system reports it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def _descriptor(self) -> int:
        if self._fd is None:
            raise OSError(f"{self.path} is closed")
        return self._fd

    def append(self, data: bytes) -> None:
        """Write ``data`` at the end and make it durable (fsync)."""
        fd = self._descriptor()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)

    def truncate(self, size: int) -> None:
        """Cut the file back to ``size`` bytes, durably."""
        fd = self._descriptor()
        os.ftruncate(fd, size)
        os.fsync(fd)

    def identity(self) -> tuple[int, int]:
        """``(device, inode)`` of the open file."""
        stat = os.fstat(self._descriptor())
        return (stat.st_dev, stat.st_ino)

    def size(self) -> int:
        """The open file's size now."""
        return os.fstat(self._descriptor()).st_size

    def close(self) -> None:
        """Close the descriptor. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def identity(path: Path) -> tuple[int, int, int] | None:
    """``(device, inode, size)`` of the file at ``path`` now, or None if there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size)


def replace_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one.

    :func:`replace_file`, then :func:`sync_directory`.
    """
    replace_file(path, data)
    sync_directory(path)


def replace_file(
    path: Path,
    data: bytes,
    lock: threading.Lock | None = None,
    replaced: Callable[[], None] | None = None,
) -> None:
    """Temporary file in the same directory, fsync, ``os.replace``.

    The new name is durable once the directory is synced (:func:`sync_directory`). With
    ``lock``, the rename and ``replaced`` (which notes the new file) happen under it, so
    that a thread checking the file under the same lock never sees one without the other.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        with lock if lock is not None else contextlib.nullcontext():
            os.replace(temporary, path)
            if replaced is not None:
                replaced()
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def sync_directory(path: Path) -> None:
    """Fsync the directory holding ``path``: its renames are durable after this."""
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
