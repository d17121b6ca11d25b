"""A trigger transaction: the in-memory effects of one trigger, pending durability.

The core records in a :class:`Txn` what a trigger (or a ``batch_trigger``) changed, so
the commit pipeline (:mod:`keyflow.commit`) can settle it once durable, or roll it back
when storage fails or refuses one of its runs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeAlias

from .errors import StorageError, TriggerError

if TYPE_CHECKING:
    from .records import Coalescence, RunRecord
    from .runs import JSONObject, Run, TriggerResult

__all__ = ["Join", "Txn"]


Join: TypeAlias = "tuple[RunRecord, JSONObject, float, Coalescence | None, Coalescence]"
"""A trigger joined a run: ``(run, old_input, old_due_at, evicted, entry)``, what to
restore if it is rolled back (a plain tuple: one is made per coalesced trigger)."""


class Txn:
    """The in-memory effects of one trigger (or one batch_trigger), pending durability.

    Args:
        wait: the caller will wait for the covering runs to end (``trigger_and_wait``):
            waiters are registered when the transaction settles, before any of its runs
            can start, so none can finish (and be pruned) unheard.
    """

    __slots__ = (
        "covered",
        "created",
        "error",
        "idempotency",
        "joined",
        "results",
        "victims",
        "waiters",
    )

    def __init__(self, *, wait: bool = False) -> None:
        self.created: list[RunRecord] = []
        self.joined: list[Join] = []
        self.idempotency: list[tuple[str, str, RunRecord]] = []
        self.victims: list[RunRecord] = []
        """Runs to cancel once the transaction is durable (``coalesce="cancel"``)."""
        self.results: list[TriggerResult] = []
        self.covered: list[RunRecord | None] | None = [] if wait else None
        """With ``wait``: the run covering each result (None: known only to storage)."""
        self.waiters: list[asyncio.Future[Run] | None] = []
        """With ``wait``: a waiter per result, made when the transaction settled."""
        self.error: StorageError | TriggerError | None = None
        """Set when storage refused a run of this transaction (it was rolled back)."""

    def leant_on(self) -> list[str]:
        """The runs this transaction's outcome depends on: those it made or joined.

        (A run it found by idempotency key was durable before it was found; a run it
        replaces and that storage refused needs no cancel.)
        """
        return [*(record.id for record in self.created), *(join[0].id for join in self.joined)]

    @property
    def touched(self) -> list[RunRecord]:
        """The runs this transaction created or joined."""
        return self.created + [join[0] for join in self.joined]
