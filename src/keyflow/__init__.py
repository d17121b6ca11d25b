"""keyflow: an asyncio job scheduler with per-key trigger coalescing.

``coalesce="queue"`` queues exactly one follow-up run behind a running one and lets
every later trigger join it: fan-out producers, barrier consumer, nothing left behind.
"""

from __future__ import annotations

from .clock import Clock as Clock
from .clock import SystemClock as SystemClock
from .clock import TimerHandle as TimerHandle
from .coalesce import Coalesce as Coalesce
from .coalesce import CoalesceOption as CoalesceOption
from .coalesce import InputPolicy as InputPolicy
from .coalesce import MergeFunction as MergeFunction
from .coalesce import Strategy as Strategy
from .context import RunContext as RunContext
from .context import RunLogger as RunLogger
from .errors import ConfigurationError as ConfigurationError
from .errors import IllegalTransitionError as IllegalTransitionError
from .errors import InvalidCoalesceError as InvalidCoalesceError
from .errors import InvalidInputError as InvalidInputError
from .errors import InvalidTriggerError as InvalidTriggerError
from .errors import KeyflowError as KeyflowError
from .errors import ReadOnlyError as ReadOnlyError
from .errors import Retry as Retry
from .errors import RunNotFoundError as RunNotFoundError
from .errors import SchedulerNotRunningError as SchedulerNotRunningError
from .errors import StorageCorruptError as StorageCorruptError
from .errors import StorageError as StorageError
from .errors import StorageLockedError as StorageLockedError
from .errors import TriggerError as TriggerError
from .errors import UnknownJobError as UnknownJobError
from .errors import WaitTimeoutError as WaitTimeoutError
from .events import Event as Event
from .events import RunChanged as RunChanged
from .events import RunLogged as RunLogged
from .events import RunProgressed as RunProgressed
from .events import Subscription as Subscription
from .events import TriggerCoalesced as TriggerCoalesced
from .jobs import Backoff as Backoff
from .jobs import BackoffOption as BackoffOption
from .jobs import Default as Default
from .jobs import Handler as Handler
from .jobs import Job as Job
from .jobs import KeyOption as KeyOption
from .options_types import TriggerOptions as TriggerOptions
from .queries import RunFilters as RunFilters
from .runs import AttemptError as AttemptError
from .runs import CoalescedTrigger as CoalescedTrigger
from .runs import Disposition as Disposition
from .runs import JSONObject as JSONObject
from .runs import LogEntry as LogEntry
from .runs import Progress as Progress
from .runs import Run as Run
from .runs import RunStatus as RunStatus
from .runs import TriggerResult as TriggerResult
from .scheduler import Keyflow as Keyflow
from .state import LaneState as LaneState
from .stats import LaneSnapshot as LaneSnapshot
from .stats import Paused as Paused
from .stats import Statistics as Statistics
from .stats import TriggerCounts as TriggerCounts
from .storage_backends.base import StorageBackend as StorageBackend
from .storage_backends.summaries import RunTiming as RunTiming
from .trigger_request import TriggerRequest as TriggerRequest
from .watch import Changes as Changes
from .watch import ChangeWatch as ChangeWatch

__version__ = "0.1.0"

__all__ = [
    "AttemptError",
    "Backoff",
    "BackoffOption",
    "Changes",
    "ChangeWatch",
    "Clock",
    "Coalesce",
    "CoalescedTrigger",
    "CoalesceOption",
    "ConfigurationError",
    "Default",
    "Disposition",
    "Event",
    "Handler",
    "IllegalTransitionError",
    "InputPolicy",
    "InvalidCoalesceError",
    "InvalidInputError",
    "InvalidTriggerError",
    "Job",
    "JSONObject",
    "Keyflow",
    "KeyflowError",
    "KeyOption",
    "LaneSnapshot",
    "LaneState",
    "LogEntry",
    "MergeFunction",
    "Paused",
    "Progress",
    "ReadOnlyError",
    "Retry",
    "Run",
    "RunChanged",
    "RunContext",
    "RunFilters",
    "RunLogged",
    "RunLogger",
    "RunNotFoundError",
    "RunProgressed",
    "RunStatus",
    "RunTiming",
    "SchedulerNotRunningError",
    "Statistics",
    "StorageBackend",
    "StorageCorruptError",
    "StorageError",
    "StorageLockedError",
    "Strategy",
    "Subscription",
    "SystemClock",
    "TimerHandle",
    "TriggerCoalesced",
    "TriggerCounts",
    "TriggerError",
    "TriggerOptions",
    "TriggerRequest",
    "TriggerResult",
    "UnknownJobError",
    "WaitTimeoutError",
    "__version__",
]
