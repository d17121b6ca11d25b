"""Job definitions: the handler and its defaults, and the handle ``@kf.job`` returns."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeAlias

from .coalesce import Coalesce, CoalesceOption
from .errors import ConfigurationError
from .runs import JSONObject, Run, TriggerResult

if TYPE_CHECKING:
    from .context import RunContext
    from .scheduler import Keyflow

Handler: TypeAlias = Callable[["RunContext", JSONObject], Awaitable[Any]]
"""``async def handler(ctx, input) -> output``; the output is any JSON value."""

KeyOption: TypeAlias = str | Callable[[JSONObject], str] | None
"""A concurrency key, or a function computing it from the input."""


class Default(Enum):
    """Marks an option left to the job's default."""

    DEFAULT = "default"


DEFAULT = Default.DEFAULT


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
        if self.initial < 0 or self.factor < 1 or self.maximum < 0:
            raise ConfigurationError("backoff needs initial >= 0, factor >= 1, maximum >= 0")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("backoff jitter must be between 0 and 1")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, retry - 1))
        if self.jitter:
            base *= 1 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, base)


BackoffOption: TypeAlias = Backoff | float | Callable[[int], float]
"""A :class:`Backoff`, a constant delay in seconds, or ``delay(retry_number)``."""


def backoff_delay(option: BackoffOption, retry: int, rng: random.Random) -> float:
    """The delay before retry ``retry`` under ``option``."""
    if isinstance(option, Backoff):
        return option.delay(retry, rng)
    if isinstance(option, int | float):
        return float(option)
    return max(0.0, float(option(retry)))


class Job:
    """A registered job: call ``.trigger()`` on it, or call it like its handler."""

    def __init__(
        self,
        keyflow: Keyflow,
        name: str,
        handler: Handler,
        *,
        retries: int,
        backoff: BackoffOption,
        timeout: float | None,
        concurrency_key: KeyOption,
        coalesce: Coalesce | None,
    ) -> None:
        self._keyflow = keyflow
        self.name = name
        self.handler = handler
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.concurrency_key = concurrency_key
        self.coalesce = coalesce
        self.__doc__ = handler.__doc__
        self.__wrapped__ = handler

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
        kf = self._keyflow
        accepted = kf._core.accept(
            kf._jobs,
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
        return (await kf._commit([accepted]))[0]

    async def trigger_and_wait(
        self, input: JSONObject | None = None, *, timeout: float | None = None, **options: Any
    ) -> Run:
        """Trigger this job and wait for the run that covers the trigger to finish."""
        return await self._keyflow.trigger_and_wait(self.name, input, timeout=timeout, **options)
