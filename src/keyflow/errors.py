"""Exceptions raised by keyflow.

Every error keyflow raises on purpose derives from :class:`KeyflowError`, so one
``except keyflow.KeyflowError`` catches them all::

    KeyflowError
    ├── TriggerError                  refused at trigger(); nothing was stored
    │   ├── UnknownJobError
    │   ├── InvalidInputError
    │   ├── InvalidCoalesceError
    │   └── InvalidTriggerError
    ├── ConfigurationError            an option or argument is not valid (also a ValueError)
    ├── SchedulerNotRunningError      used before start() or after stop()
    ├── ReadOnlyError                 the storage is open read-only: nothing can change
    ├── RunNotFoundError
    ├── WaitTimeoutError              also a builtin TimeoutError
    ├── IllegalTransitionError        a bug: the state machine refused a change
    └── StorageError                  the storage backend failed; the change was rolled back

:class:`Retry` is not an error: a handler raises it to ask for another attempt.
"""

from __future__ import annotations

import math


class KeyflowError(Exception):
    """Something went wrong in keyflow."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class TriggerError(KeyflowError):
    """The trigger was refused; nothing was stored."""


class UnknownJobError(TriggerError):
    """No job is registered under that name."""


class InvalidInputError(TriggerError):
    """A value of the trigger cannot be stored.

    Its input is not a JSON object, or its input, key or labels hold text or numbers
    that storage cannot write.
    """


class InvalidCoalesceError(TriggerError):
    """The coalesce option is not valid."""


class InvalidTriggerError(TriggerError):
    """An option of the trigger is not valid."""


class ConfigurationError(KeyflowError, ValueError):
    """An option or argument is not valid; nothing was changed.

    Raised for the options of the scheduler and of jobs, and for the arguments of calls
    such as ``wait()`` or ``list_runs()``.
    """


class SchedulerNotRunningError(KeyflowError):
    """The scheduler is not running: call start() (or use ``async with``) first."""


class ReadOnlyError(KeyflowError):
    """The storage is open read-only: this scheduler reads runs, nothing more.

    It cannot trigger, execute, cancel or change anything.
    """


class RunNotFoundError(KeyflowError):
    """No run exists with that id."""


class WaitTimeoutError(KeyflowError, TimeoutError):
    """The run did not finish within the timeout."""


class IllegalTransitionError(KeyflowError):
    """The state machine refused a transition; nothing was changed."""


class StorageError(KeyflowError):
    """The storage failed: a write (the change was rolled back), or opening or reading it."""


class StorageLockedError(StorageError):
    """Another process writes this storage; only one may (read-only opens are allowed)."""


class StorageCorruptError(StorageError):
    """The storage holds something keyflow cannot read; the message names where."""


class Retry(Exception):
    """Raised by a handler to ask for another attempt.

    Args:
        delay: seconds to wait before the next attempt; ``None`` uses the job's backoff.

    The attempt counts against the job's ``retries``; when they are used up the run fails.
    """

    def __init__(self, delay: float | None = None) -> None:
        if delay is not None and not _seconds(delay):
            raise ConfigurationError(
                f"Retry delay must be a finite number of seconds >= 0, got {repr(delay)[:100]}"
            )
        self.delay = delay
        super().__init__(f"retry requested (delay={delay})")


def _seconds(value: object) -> bool:
    # (here, not in options.py, which imports this module)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and 0 <= value <= 315_360_000
    except OverflowError:
        return False
