"""Where the live demo keeps its state, and how ``keyflow demo --reset`` removes it.

Two files, side by side: the scheduler's storage (``keyflow-demo.db``: runs, lanes,
coalesced triggers) and the simulated world (``keyflow-demo.world.db``: organisations,
repositories, PRs, what each pipeline fetched and processed, the simulated clock and
the story's settings). Both are needed to continue a story after a restart.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigurationError
from ..storage_backends.lockfile import WriterLock

_COMPANIONS = ("-wal", "-shm", ".journal", ".lock", ".starts")
"""Files a storage file may have beside it (SQLite's WAL, the JSON journal, the lock)."""


def storage_path(storage: str) -> Path | None:
    """The file behind a ``sqlite://`` or ``json://`` URL (None for ``memory://``)."""
    scheme, sep, rest = storage.partition("://")
    if scheme == "memory":
        return None
    if not sep or not rest.startswith("/") or len(rest) < 2:
        raise ConfigurationError(f"the demo needs a storage file URL, got {storage!r}")
    return Path(rest[1:].partition("?")[0])


def world_path(storage: str) -> str:
    """Where the live demo keeps its world: beside the scheduler's storage file."""
    path = storage_path(storage)
    if path is None:
        return ":memory:"
    return str(path.with_suffix("")) + ".world.db"


def reset(storage: str) -> list[Path]:
    """Remove the demo's storage file, its companions and its world file.

    Returns:
        The data files removed (not the lock or the start marks).

    Raises:
        StorageLockedError: a running demo (another process) writes the storage.
    """
    path = storage_path(storage)
    if path is None:
        return []
    lock = WriterLock(path)
    lock.acquire()  # refuses while another demo runs on these files
    removed: list[Path] = []
    try:
        world = Path(world_path(storage))
        for candidate in (path, *(path.with_name(path.name + s) for s in _COMPANIONS), world):
            if candidate.exists():
                candidate.unlink()
                removed.append(candidate)
    finally:
        lock.release()
    # The lock and the start marks are bookkeeping: only the data files are reported.
    return [p for p in removed if p.resolve() != lock.path and p.suffix != ".starts"]
