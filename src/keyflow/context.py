"""What a handler receives besides its input: :class:`RunContext`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Unpack

from .jsonvalue import (
    MAX_TEXT,
    NotJSONError,
    copy_json_dict,
    dumps_text,
    is_finite_number,
    may_be_large,
    safe_repr,
    safe_str,
    storable_text,
)
from .options_types import TriggerOptions
from .runs import JSONObject, LogEntry, Progress, TriggerResult

if TYPE_CHECKING:
    from .port import RunPort
    from .records import RunRecord
    from .scheduler import Keyflow


class RunLogger:
    """``ctx.log``: log lines recorded on the run (the newest 200 are kept)."""

    def __init__(self, port: RunPort, record: RunRecord, attempt: int) -> None:
        self._port = port
        self._record = record
        self._attempt = attempt

    def _emit(self, level: str, message: object, data: dict[str, Any]) -> None:
        # Whatever the handler logs is stored as safe text: a log line never fails a run.
        fields: JSONObject
        try:
            fields = copy_json_dict(data)
            if fields and may_be_large(fields):
                size = len(dumps_text(fields))
                if size > MAX_TEXT:
                    fields = {"data": f"<{size:,} characters of data, too many to keep>"}
        except NotJSONError:
            if len(data) > 100:
                fields = {"data": f"<{len(data):,} fields, too many to keep>"}
            else:
                fields = {
                    storable_text(name, 200): storable_text(safe_repr(value))
                    for name, value in data.items()
                }
        entry = LogEntry(self._port.now(), level, safe_str(message), fields, self._attempt)
        self._port.report_log(self._record, entry)

    def info(self, message: str, **data: Any) -> None:
        """Record an informational line with structured ``data``."""
        self._emit("info", message, data)

    def warning(self, message: str, **data: Any) -> None:
        """Record a warning."""
        self._emit("warning", message, data)

    def error(self, message: str, **data: Any) -> None:
        """Record an error (the run goes on; raise to fail it)."""
        self._emit("error", message, data)


class RunContext:
    """The handler's view of its run, and of the scheduler.

    Attributes:
        attempt: this attempt's number (1 for the first).
        input: the input (a copy; changing it changes nothing stored).
    """

    __slots__ = ("_keyflow", "_log", "_port", "_record", "attempt", "input")

    def __init__(
        self, keyflow: Keyflow, port: RunPort, record: RunRecord, input: JSONObject
    ) -> None:
        self._keyflow = keyflow
        self._port = port
        self._record = record
        self.attempt = record.attempt
        self.input = input
        self._log: RunLogger | None = None

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._record.id

    @property
    def job(self) -> str:
        """The job's name."""
        return self._record.job

    @property
    def concurrency_key(self) -> str | None:
        """The run's lane, if any."""
        return self._record.key

    @property
    def log(self) -> RunLogger:
        """Records log lines on the run."""
        if self._log is None:
            self._log = RunLogger(self._port, self._record, self.attempt)
        return self._log

    @property
    def keyflow(self) -> Keyflow:
        """The scheduler running this handler."""
        return self._keyflow

    @property
    def trigger_count(self) -> int:
        """1 + the triggers coalesced into this run so far."""
        return self._record.trigger_count

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress (shown on the dashboard, kept on the run).

        Raises:
            ValueError: ``current`` or ``total`` is not a finite number.
        """
        for name, value in (("current", current), ("total", total)):
            if value is None and name == "total":
                continue
            if not is_finite_number(value):
                raise ValueError(
                    f"progress {name} must be a finite number, got {safe_repr(value)[:100]}"
                )
        note = None if message is None else safe_str(message)
        self._port.report_progress(
            self._record, Progress(float(current), None if total is None else float(total), note)
        )

    async def trigger(
        self, job: str, input: JSONObject | None = None, **options: Unpack[TriggerOptions]
    ) -> TriggerResult:
        """Trigger another job from this handler (the new run records this one as parent).

        Takes the same options as :meth:`keyflow.Keyflow.trigger`. A trigger from a
        running handler is taken during a stop's grace too: it is part of the run's work.
        """
        options.setdefault("parent_run_id", self.run_id)
        # Taken during a stop's grace too (chained): it is part of this run's work.
        port = self._port
        accepted = port.accept_options("trigger", job, input, options, chained=True)
        if isinstance(accepted, TriggerResult):
            return accepted
        return (await port.commit([accepted], chained=True)).results[0]
