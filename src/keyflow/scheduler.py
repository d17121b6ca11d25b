"""``keyflow.Keyflow``: the scheduler users create, register jobs on and trigger.

``Keyflow`` is the public face; its verbs live in layers, one concept per module:

* :mod:`keyflow.lifecycle` — start, stop, ``run_until_idle``, and the shared state;
* :mod:`keyflow.run_ops` — ``get_run``, ``list_runs``, ``count_runs``, ``wait``,
  ``cancel``;
* :mod:`keyflow.triggering` — ``trigger``, ``batch_trigger``, ``trigger_and_wait``,
  ``retrigger``;
* :mod:`keyflow.observing` — lanes, statistics, pauses, events, change watches.

The decisions themselves are the core's (:mod:`keyflow.core`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import overload

from .clock import Clock, SystemClock
from .coalesce import CoalesceOption
from .context import RunContext
from .core import Core
from .errors import ConfigurationError, SchedulerNotRunningError
from .hub import EventHub
from .jobs import Backoff, BackoffOption, Handler, Job, KeyOption, job_definer
from .jsonvalue import safe_repr
from .lifecycle import STOP_FLUSH_SECONDS
from .observing import Observing
from .options import count, seconds
from .run_ops import READ_ONLY_POLL_SECONDS
from .storage_backends import StorageBackend, open_backend
from .worker import WorkerPool

__all__ = ["READ_ONLY_POLL_SECONDS", "STOP_FLUSH_SECONDS", "Keyflow"]


class Keyflow(Observing):
    """An embedded job scheduler with per-key trigger coalescing.

    Args:
        storage: a storage URL (``"memory://"``, the default) or a backend instance.
        workers: how many runs may execute at once in this process; 0: it only
            triggers (on shared storage, other processes execute the runs).
        retention: how many finished runs to keep (oldest dropped first).
        lane_limit: how many runs of one concurrency key may execute at once: a number
            for every key, or a function of the key.
        clock: the time source (a :class:`keyflow.testing.VirtualClock` in tests).
        event_buffer: default buffer size of each ``events()`` subscription.
        seed: seeds the jitter of retry backoffs, for reproducible runs.
        grace: default seconds ``stop()`` gives running handlers before interrupting them.
        cancel_grace: seconds a handler has to stop once cancelled (by ``cancel()``, its
            timeout or the end of a stop's grace) before keyflow stops waiting for it:
            its worker is replaced (the run keeps its lane slot until the handler
            returns) or, at a stop, the run goes back to its lane.

    Use ``async with Keyflow(...) as kf:`` (or ``start()``/``stop()``).

    A storage opened read-only (``"sqlite:///runs.db?mode=ro"``) gives a scheduler that
    only reads: it executes, recovers and writes nothing, and ``trigger()``,
    ``cancel()`` and friends raise :class:`~keyflow.ReadOnlyError`.

    Raises:
        ConfigurationError: an option is not valid (the message names it).
    """

    def __init__(
        self,
        storage: str | StorageBackend = "memory://",
        *,
        workers: int = 16,
        retention: int = 10_000,
        lane_limit: int | Callable[[str], int] = 1,
        clock: Clock | None = None,
        event_buffer: int = 1000,
        seed: int | None = None,
        grace: float = 10.0,
        cancel_grace: float = 5.0,
    ) -> None:
        count(workers, "workers", minimum=0, maximum=100_000)
        count(retention, "retention", minimum=0)
        count(event_buffer, "event_buffer", minimum=1, maximum=10_000_000)
        self._grace = seconds(grace, "grace")
        cancel_grace = seconds(cancel_grace, "cancel_grace")
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(f"clock must be a keyflow.Clock, got {safe_repr(clock)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | str)):
            raise ConfigurationError(f"seed must be an integer or None, got {safe_repr(seed)}")
        self._limit_of = _lane_limit(lane_limit)
        self._retention = retention
        self._cancel_grace = cancel_grace
        self._clock = clock or SystemClock()
        self._rng = random.Random(seed)
        self._jobs: dict[str, Job] = {}
        self._hub = EventHub(event_buffer)
        self._assemble(storage, workers)
        self._phase = "new"
        self._stopping: asyncio.Task[None] | None = None
        self._storage_closing: asyncio.Task[None] | None = None

    def _assemble(self, storage: str | StorageBackend, workers: int) -> None:
        """Open ``storage`` (not connected yet) and build the core and the workers on it."""
        self._backend = open_backend(storage, retention=self._retention)
        self._read_only = self._backend.read_only
        self._core = Core(
            backend=self._backend,
            jobs=self._jobs,
            clock=self._clock,
            hub=self._hub,
            lane_limit=self._limit_of,
            on_cancel_running=self._cancel_task,
            refuse=self._refuse_trigger,
        )
        coordinator = getattr(self._backend, "coordinator", None)
        self._pool = WorkerPool(
            self._core,
            self._jobs,
            workers,
            new_context=partial(RunContext, self, self._core),
            rng=self._rng,
            cancel_grace=self._cancel_grace,
            # On shared storage the claim itself writes the start (see keyflow.shared).
            durable_start=self._backend.durable and coordinator is None,
            mark_start=self._backend.mark_start,
        )
        self._shared = None
        if coordinator is not None:
            from .shared.service import SharedService

            prune = getattr(self._backend, "prune", None)
            self._shared = SharedService(
                coordinator, self._core, self._jobs, workers, prune, lambda: self._pool.busy
            )
            self._core.remote = self._shared
            self._backend.limit_of = self._shared.limit_of  # type: ignore[attr-defined]
        for job in self._jobs.values():
            job.bind(self._core)

    def use(
        self, storage: str | StorageBackend | None = None, *, workers: int | None = None
    ) -> None:
        """Change the storage or the number of workers, before :meth:`start`.

        For a program that builds its ``Keyflow`` (and registers its jobs) at import and
        runs it elsewhere with other settings: ``keyflow worker --app module:kf
        --storage URL --workers N`` calls this. Jobs stay registered.

        Raises:
            SchedulerNotRunningError: it was started already.
            ConfigurationError: a bad storage URL or worker count.
        """
        if self._phase != "new":
            raise SchedulerNotRunningError("use() changes a Keyflow before its start only")
        if workers is not None:
            count(workers, "workers", minimum=0, maximum=100_000)
        if self._shared is not None:
            self._shared.detach()  # the new one (maybe on the same storage) listens
        self._assemble(
            self._backend if storage is None else storage,
            self._pool.size if workers is None else workers,
        )

    # -- jobs --------------------------------------------------------------------

    @overload
    def job(self, handler: Handler, /) -> Job: ...

    @overload
    def job(
        self,
        name: str | None = None,
        *,
        retries: int = 0,
        backoff: BackoffOption = ...,
        timeout: float | None = None,
        concurrency_key: KeyOption = None,
        coalesce: CoalesceOption = None,
    ) -> Callable[[Handler], Job]: ...

    def job(
        self,
        name: str | Handler | None = None,
        *,
        retries: int = 0,
        backoff: BackoffOption = Backoff(),  # noqa: B008 - immutable
        timeout: float | None = None,
        concurrency_key: KeyOption = None,
        coalesce: CoalesceOption = None,
    ) -> Job | Callable[[Handler], Job]:
        """Register ``async def handler(ctx, input)`` as a job.

        Use it bare (``@kf.job``) or with options (``@kf.job(retries=3)``,
        ``@kf.job("name")``); it returns the :class:`Job`, which can be triggered and
        still be called like the handler.

        Args:
            name: the job's name (default: the function's name).
            retries: extra attempts after a failure.
            backoff: delay before each retry (:class:`Backoff`, seconds, or a function).
            timeout: seconds an attempt may take before it fails with TimeoutError.
            concurrency_key: default key, or a function of the input returning it.
            coalesce: default coalesce strategy for triggers of this job.

        Raises:
            ConfigurationError: a duplicate name or an invalid option.
        """
        if callable(name):  # bare @kf.job
            return self.job()(name)
        return job_definer(
            self,
            self._core,
            self._jobs,
            name=name,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            concurrency_key=concurrency_key,
            coalesce=coalesce,
        )

    @property
    def jobs(self) -> Mapping[str, Job]:
        """The registered jobs by name (read-only)."""
        return MappingProxyType(self._jobs)


def _lane_limit(option: int | Callable[[str], int]) -> Callable[[str], int]:
    if callable(option):
        function = option

        def checked(key: str) -> int:
            try:
                value = function(key)
            except Exception as exc:
                raise ConfigurationError(
                    f"the lane_limit function failed for key {key!r}: {safe_repr(exc)}"
                ) from exc
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"lane_limit({key!r}) returned {safe_repr(value)}; need an integer >= 1"
                )
            return value

        return checked
    if isinstance(option, bool) or not isinstance(option, int) or option < 1:
        raise ConfigurationError(f"lane_limit must be an integer >= 1, got {option!r}")
    limit = option
    return lambda _key: limit
