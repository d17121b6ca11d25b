"""What a store holds, summed up: per key, per job, and since when.

A dashboard over a storage file (``keyflow dashboard --storage``) lists every key with
stored runs, idle ones too, with the triggers coalesced into them, the jobs that ran,
and each job's timings; reading every run at every look would cost too much at 100k
runs. Backends answer these from their indexes (SQLite) or their memory (memory, JSON);
:func:`summarize` is the one definition they share when they scan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..runs import RunStatus

if TYPE_CHECKING:
    from ..records import RunRecord
    from ..runs import Run

PauseKind = str
"""``"job"`` or ``"key"``: what a pause holds (see ``Keyflow.pause``)."""


@dataclass(frozen=True, slots=True)
class KeySummary:
    """One concurrency key's stored runs."""

    key: str
    """The concurrency key."""
    runs: int
    """Stored runs of the key (retention prunes finished ones)."""
    unfinished: int
    """Of those, not finished yet."""
    coalesced: int
    """Triggers coalesced into them (``trigger_count - 1``, summed)."""
    newest: float
    """When the newest of them was created (epoch seconds)."""


@dataclass(frozen=True, slots=True)
class RunTiming:
    """When a run was created, due, started and finished: what job statistics need."""

    id: str
    status: RunStatus
    created_at: float
    due_at: float
    started_at: float | None
    finished_at: float | None
    attempt: int
    trigger_count: int

    @classmethod
    def of(cls, run: Run | RunRecord) -> RunTiming:
        """The times of ``run`` (a snapshot, or a backend's own record)."""
        return cls(
            run.id,
            run.status,
            run.created_at,
            run.due_at,
            run.started_at,
            run.finished_at,
            run.attempt,
            run.trigger_count,
        )


@dataclass(frozen=True, slots=True)
class RunFacts:
    """The fields :func:`summarize` reads of a stored run."""

    key: str | None
    job: str
    status: str
    trigger_count: int
    created_at: float


@dataclass(frozen=True, slots=True)
class StoreSummary:
    """Keys, jobs and coalesced triggers of a whole store."""

    keys: dict[str, KeySummary]
    jobs: list[str]
    coalesced: int


_TERMINAL = frozenset({"completed", "failed", "cancelled"})


def summarize(runs: Iterable[RunFacts]) -> StoreSummary:
    """Sum ``runs`` up (any order)."""
    counts: dict[str, list[float]] = {}  # key -> [runs, unfinished, coalesced, newest]
    jobs: set[str] = set()
    coalesced = 0
    for run in runs:
        jobs.add(run.job)
        joined = max(0, run.trigger_count - 1)
        coalesced += joined
        if run.key is None:
            continue
        entry = counts.get(run.key)
        if entry is None:
            entry = counts[run.key] = [0, 0, 0, run.created_at]
        entry[0] += 1
        entry[1] += run.status not in _TERMINAL
        entry[2] += joined
        entry[3] = max(entry[3], run.created_at)
    keys = {
        key: KeySummary(key, int(n), int(unfinished), int(joined), newest)
        for key, (n, unfinished, joined, newest) in counts.items()
    }
    return StoreSummary(keys, sorted(jobs), coalesced)
