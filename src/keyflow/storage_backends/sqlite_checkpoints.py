"""WAL checkpoints on a thread of their own, beside the SQLite writer.

In WAL mode a commit appends pages to ``<file>-wal``; a *checkpoint* copies them into the
database file and syncs it. SQLite's default makes the committing connection do it
every 1,000 pages, inside a commit: a commit every so often pays for the pages of many,
and as the table grows a batch touches more index pages, so checkpoints come more often
and cost more (measured: 12 → 20 µs per row from 20,000 to 100,000 rows, against a flat
10 to 11 µs without). Here a second connection checkpoints (``PASSIVE``: it never blocks
the writer, nor readers) after every :data:`EVERY_COMMITS` commits or
:data:`EVERY_ROWS` rows, one at a time, on its own thread; it is one call into SQLite,
which lets go of Python's GIL meanwhile. The writer keeps its own checkpoints, at
:data:`BACKSTOP_PAGES`: they bound the WAL, and cover for this thread should it lag or
fail.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from .writer_thread import WriterThread

logger = logging.getLogger("keyflow.storage")

EVERY_COMMITS = 100
"""Commits between two checkpoints (a sequential producer's: about 800 pages)."""

EVERY_ROWS = 2_000
"""Rows written between two checkpoints (concurrent producers' large batches)."""

BACKSTOP_PAGES = 4_000
"""The writer's own ``wal_autocheckpoint`` (pages), while this thread checkpoints.

The WAL starts again from its beginning only after a checkpoint that copied every frame,
which a checkpoint beside a busy writer never does: the writer's own, inside a commit,
does, copying what the thread left (little). So the WAL stays under about this many
pages (16 MiB), where a higher backstop let it grow to that backstop (the hostile tester
saw 42 MiB at 10,000 pages)."""

WAL_SIZE_LIMIT = 64 << 20
"""``journal_size_limit``: a WAL a long reader let grow is cut back to this at its restart."""


class Checkpointer:
    """Checkpoints ``path``'s WAL in the background (see the module)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: WriterThread | None = None
        self._conn: sqlite3.Connection | None = None
        self._commits = 0
        self._rows = 0
        self._running: asyncio.Future[None] | None = None
        self._failing = False

    async def open(self) -> None:
        """Start the thread and connect on it.

        Raises:
            sqlite3.Error, OSError: the file cannot be opened.
        """
        thread = self._thread = WriterThread("keyflow-sqlite-checkpoints")
        thread.start()
        await thread.call(self._connect)

    def _connect(self) -> None:
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )

    def wrote(self, rows: int) -> None:
        """A commit of ``rows`` rows is durable: checkpoint when enough piled up."""
        self._commits += 1
        self._rows += rows
        if self._commits < EVERY_COMMITS and self._rows < EVERY_ROWS:
            return
        thread = self._thread
        if self._running is not None or thread is None or not thread.running:
            return
        self._commits = self._rows = 0
        running = self._running = thread.call(self._checkpoint)
        running.add_done_callback(self._done)

    def _checkpoint(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _done(self, running: asyncio.Future[None]) -> None:
        self._running = None
        error = None if running.cancelled() else running.exception()
        if error is not None and not self._failing:
            logger.warning(
                "checkpointing %s failed (%r): the writer checkpoints by itself meanwhile",
                self.path,
                error,
            )
        self._failing = error is not None

    async def settled(self) -> None:
        """Return once the checkpoint in progress, if any, has ended (however it ended)."""
        running = self._running
        if running is not None:
            await asyncio.wait({running})

    async def close(self) -> None:
        """Let a checkpoint in progress finish, close the connection, end the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            await thread.end(self._disconnect, (sqlite3.Error, OSError))

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
