"""What a ``Job`` handle and a ``RunContext`` need of the scheduler: a narrow port.

They trigger runs and report on the run they execute; they do not reach into
``Keyflow``. Today's coordinator, :class:`keyflow.core.Core`, implements the port; a
coordinator over a shared database implements the same verbs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .options_types import TriggerOptions
    from .records import RunRecord
    from .runs import JSONObject, LogEntry, Progress, TriggerResult
    from .triggers import PreparedTrigger
    from .txn import Txn


class TriggerPort(Protocol):
    """Triggers runs: check and (when storage allows) decide at once, else commit."""

    def accept(
        self,
        job: object,
        input: object,
        concurrency_key: object,
        coalesce: object,
        idempotency_key: object,
        labels: object,
        delay: object,
        parent_run_id: object,
        chained: bool = False,
    ) -> TriggerResult | PreparedTrigger:
        """Check one trigger; return its result, or the prepared trigger to commit."""
        ...

    def accept_options(
        self,
        caller: str,
        job: str,
        input: JSONObject | None,
        options: TriggerOptions,
        *,
        chained: bool = False,
    ) -> TriggerResult | PreparedTrigger:
        """:meth:`accept` of a trigger whose options came as ``**options``."""
        ...

    async def commit(
        self, prepared: list[PreparedTrigger], *, wait: bool = False, chained: bool = False
    ) -> Txn:
        """Decide the prepared triggers in one transaction; return it once durable."""
        ...


class RemoteTriggers(Protocol):
    """Where triggers are decided when that is not in memory (shared storage)."""

    async def commit(self, prepared: list[PreparedTrigger], wait: bool) -> Txn:
        """Decide ``prepared`` in one transaction; return it once durable."""
        ...


class RunPort(TriggerPort, Protocol):
    """A running handler's port: triggers, plus reports on its own run."""

    def now(self) -> float:
        """The scheduler clock's time."""
        ...

    def report_progress(self, record: RunRecord, progress: Progress) -> None:
        """A handler reported progress."""
        ...

    def report_log(self, record: RunRecord, entry: LogEntry) -> None:
        """A handler logged a line."""
        ...
