"""Start marks: which run each worker started last, written before its handler runs.

A run must be known as started before its handler's first instruction, so that a
handler that kills its process (an OOM kill, a segfault) is counted as a crash and,
the third time, failed as a poison pill. Waiting for a commit before every handler
would put the storage's latency on every run's path; instead each worker owns a fixed
slot in ``<storage file>.starts`` and overwrites it with ``(run id, start count)``
before each handler: one ``pwrite`` to the page cache, which survives the process
dying (not a power loss, which no handler causes). The run's row says ``running``
with the next commit, as before.

At the next start, a slot whose start count is ahead of its run's stored row tells
that the run was executing when the process died. The file's size is bounded by the
number of workers ever started; it is emptied once recovery is written.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import zlib
from pathlib import Path

logger = logging.getLogger("keyflow.storage")

SLOT = 128
"""Bytes per worker slot: ``<run id>\\t<starts>\\t<crc32>\\n``, padded with spaces."""


class StartMarks:
    """The slots file of one storage file (opened by its single writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> dict[str, int]:
        """Open the file and read the marks a previous process left: run id → starts.

        The file is never followed through a symbolic link and must be a regular file:
        keyflow overwrites it, and must not overwrite whatever a link points to.

        Raises:
            OSError: the file cannot be opened, or is a link or not a regular file.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)  # (NONBLOCK: a FIFO must not hang us)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(
                    f"{self.path} is a symbolic link: keyflow overwrites this file and "
                    "never follows a link (remove it; keyflow makes a new one)"
                ) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{self.path} is not a regular file")
            os.set_blocking(fd, True)
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        marks: dict[str, int] = {}
        damaged = 1 if len(data) % SLOT else 0  # a part-slot at the end
        for offset in range(0, len(data) - SLOT + 1, SLOT):
            raw = data[offset : offset + SLOT]
            entry = _decode(raw)
            if entry is not None:
                run_id, starts = entry
                marks[run_id] = max(starts, marks.get(run_id, 0))
            elif raw.strip(b" \n\0"):  # (a slot never written reads as NULs)
                damaged += 1
        if damaged:
            logger.warning(
                "%s: %d start marks are damaged (a crash mid-write, or the file was "
                "changed by something else); a process that died just as those runs "
                "started is not counted as their crash",
                self.path,
                damaged,
            )
        return marks

    def mark(self, slot: int, run_id: str, starts: int) -> bool:
        """Write ``slot``: its worker starts ``run_id`` for the ``starts``-th time.

        False when it could not be written (the caller then waits for a commit).
        """
        if self._fd is None:
            return False
        body = f"{run_id}\t{starts}\t"
        line = f"{body}{zlib.crc32(body.encode()):08x}\n".encode()
        if len(line) > SLOT:
            return False
        try:
            os.pwrite(self._fd, line.ljust(SLOT, b" "), slot * SLOT)
        except OSError:
            return False
        return True

    def clear(self) -> None:
        """Forget every mark (recovery has written what they said)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)

    def close(self) -> None:
        """Close the file (the marks stay, for the next start to read). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _decode(raw: bytes) -> tuple[str, int] | None:
    # A slot cut short by a crash mid-write (or never written) reads as nothing.
    try:
        text = raw.rstrip(b" ").decode()
        run_id, starts, crc = text.rstrip("\n").split("\t")
        if int(crc, 16) != zlib.crc32(f"{run_id}\t{starts}\t".encode()):
            return None
        return run_id, int(starts)
    except (UnicodeDecodeError, ValueError):
        return None
