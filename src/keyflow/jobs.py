"""Job definitions: the handler and its defaults, and the handle ``@kf.job`` returns."""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeAlias, Unpack

from .coalesce import Coalesce, CoalesceOption, parse_coalesce
from .errors import ConfigurationError
from .jsonvalue import NotJSONError, check_text, is_finite_number, safe_repr
from .options import count, optional_seconds, seconds
from .runs import JSONObject, Run, TriggerResult

if TYPE_CHECKING:
    from .context import RunContext
    from .options_types import TriggerOptions
    from .port import TriggerPort
    from .scheduler import Keyflow

Handler: TypeAlias = Callable[["RunContext", JSONObject], Awaitable[Any]]
"""``async def handler(ctx, input) -> output``; the output is any JSON value."""

KeyOption: TypeAlias = str | Callable[[JSONObject], str] | None
"""A concurrency key, or a function computing it from the input."""


class Default(Enum):
    """Marks an option left to the job's default."""

    DEFAULT = "default"


DEFAULT = Default.DEFAULT


def _not_number(value: object) -> bool:
    return not is_finite_number(value)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between retries.

    The n-th retry waits ``min(maximum, initial * factor ** (n - 1))``, scaled by a
    random factor in ``[1 - jitter, 1 + jitter]``.
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        seconds(self.initial, "Backoff initial")
        seconds(self.maximum, "Backoff maximum")
        if _not_number(self.factor) or self.factor < 1:
            raise ConfigurationError(
                f"Backoff factor must be a finite number >= 1, got {safe_repr(self.factor)}"
            )
        if _not_number(self.jitter) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(
                f"Backoff jitter must be a number between 0 and 1, got {safe_repr(self.jitter)}"
            )

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        try:
            growth = self.factor ** max(0, retry - 1)
        except OverflowError:
            growth = math.inf
        base = min(self.maximum, self.initial * growth) if self.initial else 0.0
        if self.jitter:
            base *= 1 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.maximum, base))


BackoffOption: TypeAlias = Backoff | float | Callable[[int], float]
"""A :class:`Backoff`, a constant delay in seconds, or ``delay(retry_number)``."""


def check_backoff(option: object) -> BackoffOption:
    """``option`` if it is a valid ``backoff=`` value.

    Raises:
        ConfigurationError: it is neither a Backoff, finite seconds >= 0, nor a callable.
    """
    if isinstance(option, Backoff) or callable(option):
        return option
    if isinstance(option, int | float) and not isinstance(option, bool):
        return seconds(option, "backoff")
    raise ConfigurationError(
        f"backoff must be a Backoff, seconds or a function of the retry number, "
        f"got {safe_repr(option)}"
    )


def backoff_delay(option: BackoffOption, retry: int, rng: random.Random) -> float:
    """The delay before retry ``retry`` under ``option``.

    Raises:
        ConfigurationError: a backoff function failed or returned something other than
            finite seconds >= 0.
    """
    if isinstance(option, Backoff):
        return option.delay(retry, rng)
    if isinstance(option, int | float):
        return float(option)
    try:
        value = option(retry)
    except Exception as exc:
        raise ConfigurationError(
            f"the backoff function failed for retry {retry}: {safe_repr(exc)}"
        ) from exc
    return seconds(value, f"the backoff function's result for retry {retry}")


def job_definer(
    keyflow: Keyflow,
    port: TriggerPort,
    jobs: dict[str, Job],
    *,
    name: str | None,
    retries: int,
    backoff: object,
    timeout: object,
    concurrency_key: object,
    coalesce: object,
) -> Callable[[Handler], Job]:
    """Check a job's options now; return the decorator that registers its handler.

    Raises:
        ConfigurationError: an option is not valid (the message names it).
    """
    if name is not None:
        check_name(name, "job name")
    count(retries, "retries", minimum=0, maximum=1_000_000)
    checked_timeout = optional_seconds(timeout, "timeout", positive=True)
    checked_backoff = check_backoff(backoff)
    key: KeyOption
    if concurrency_key is None or callable(concurrency_key):
        key = concurrency_key
    elif isinstance(concurrency_key, str) and concurrency_key:
        key = check_name(concurrency_key, "concurrency_key")
    else:
        raise ConfigurationError(
            f"concurrency_key must be a non-empty string or a function, "
            f"got {safe_repr(concurrency_key)}"
        )
    coalesce_spec = parse_coalesce(coalesce)
    if coalesce_spec is not None and key is None:
        raise ConfigurationError("a job-level coalesce needs a job-level concurrency_key")

    def register(handler: Handler) -> Job:
        if not inspect.iscoroutinefunction(handler):
            raise ConfigurationError(
                f"job handler {safe_repr(handler)} must be an async function (async def)"
            )
        job_name = check_name(name or handler.__name__, "job name")
        if job_name in jobs:
            raise ConfigurationError(f"a job named {job_name!r} is already registered")
        job = Job(
            keyflow,
            job_name,
            handler,
            port=port,
            retries=retries,
            backoff=checked_backoff,
            timeout=checked_timeout,
            concurrency_key=key,
            coalesce=coalesce_spec,
        )
        jobs[job_name] = job
        return job

    return register


def check_name(name: object, what: str) -> str:
    """``name`` if it is a non-empty string storage can write.

    Raises:
        ConfigurationError: naming ``what``.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{what} must be a non-empty string, got {safe_repr(name)}")
    try:
        check_text(name, what)
    except NotJSONError as exc:
        raise ConfigurationError(str(exc)) from None
    return name


class Job:
    """A registered job: call ``.trigger()`` on it, or call it like its handler."""

    def __init__(
        self,
        keyflow: Keyflow,
        name: str,
        handler: Handler,
        *,
        port: TriggerPort,
        retries: int,
        backoff: BackoffOption,
        timeout: float | None,
        concurrency_key: KeyOption,
        coalesce: Coalesce | None,
    ) -> None:
        self._keyflow = keyflow
        self._port = port
        self.name = name
        self.handler = handler
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.concurrency_key = concurrency_key
        self.coalesce = coalesce
        self.__doc__ = handler.__doc__
        self.__wrapped__ = handler

    def bind(self, port: TriggerPort) -> None:
        """Trigger through ``port`` from now on (see :meth:`keyflow.Keyflow.use`)."""
        self._port = port

    def __repr__(self) -> str:
        return f"<Job {self.name!r}>"

    async def __call__(self, ctx: RunContext, input: JSONObject) -> Any:
        """Run the handler directly (no scheduling), e.g. in a unit test."""
        return await self.handler(ctx, input)

    async def trigger(
        self,
        input: JSONObject | None = None,
        *,
        concurrency_key: str | Default | None = DEFAULT,
        coalesce: CoalesceOption | Default = DEFAULT,
        idempotency_key: str | None = None,
        labels: Mapping[str, str] | None = None,
        delay: float = 0.0,
        parent_run_id: str | None = None,
    ) -> TriggerResult:
        """Trigger this job; the options are those of :meth:`keyflow.Keyflow.trigger`."""
        port = self._port
        accepted = port.accept(
            self.name,
            input,
            concurrency_key,
            coalesce,
            idempotency_key,
            labels,
            delay,
            parent_run_id,
        )
        if isinstance(accepted, TriggerResult):
            return accepted
        return (await port.commit([accepted])).results[0]

    async def trigger_and_wait(
        self,
        input: JSONObject | None = None,
        *,
        timeout: float | None = None,
        **options: Unpack[TriggerOptions],
    ) -> Run:
        """Trigger this job and wait for the run that covers the trigger to finish."""
        return await self._keyflow.trigger_and_wait(self.name, input, timeout=timeout, **options)
