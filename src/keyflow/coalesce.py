"""The ``coalesce`` option of a trigger: strategy, bound and input policy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeAlias, get_args

from .errors import InvalidCoalesceError
from .runs import JSONObject

Strategy: TypeAlias = Literal["skip", "queue", "cancel"]
"""How a trigger treats the unfinished runs of its job in its lane."""

MergeFunction: TypeAlias = Callable[[JSONObject, JSONObject], JSONObject]
"""``merge(old, new) -> input`` for a run that a trigger joins."""

InputPolicy: TypeAlias = Literal["latest", "first"] | MergeFunction
"""What a joined, not-yet-started run's input becomes."""

STRATEGIES: tuple[str, ...] = get_args(Strategy)


@dataclass(frozen=True, slots=True)
class Coalesce:
    """A coalesce strategy with its options.

    Args:
        strategy: ``"skip"`` joins the newest unfinished run of the job in the lane;
            ``"queue"`` joins the newest run that has never started, or creates one that
            waits; ``"cancel"`` cancels the job's runs in the lane and creates a new one.
        max_queued: for ``"queue"``, how many not-started runs of the job a lane may hold
            before triggers join the newest of them (default 1).
        input: the input of a joined run that has not started: ``"latest"`` (the newest
            trigger's input, the default), ``"first"`` (keep it), or ``merge(old, new)``.
            A run that has started keeps its input.

    Raises:
        InvalidCoalesceError: an unknown strategy, ``max_queued < 1``, or a merge that is
            not callable.
    """

    strategy: Strategy
    max_queued: int = 1
    input: InputPolicy = "latest"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InvalidCoalesceError(
                f"unknown coalesce strategy {self.strategy!r}; expected one of "
                f"{', '.join(repr(s) for s in STRATEGIES)} or None"
            )
        if (
            isinstance(self.max_queued, bool)
            or not isinstance(self.max_queued, int)
            or not 1 <= self.max_queued <= 1_000_000
        ):
            raise InvalidCoalesceError(
                f"max_queued must be an integer >= 1 (and at most 1,000,000), "
                f"got {self.max_queued!r}"
            )
        if self.input not in ("latest", "first") and not callable(self.input):
            raise InvalidCoalesceError(
                f"coalesce input must be 'latest', 'first' or a callable merge(old, new), "
                f"got {self.input!r}"
            )


CoalesceOption: TypeAlias = Strategy | Coalesce | None
"""What ``trigger(coalesce=...)`` accepts."""


NAMED_STRATEGIES: Mapping[str, Coalesce] = MappingProxyType(
    {name: Coalesce(name) for name in STRATEGIES}  # type: ignore[arg-type]
)
"""A strategy given by name maps to one shared, frozen :class:`Coalesce`."""


def parse_coalesce(value: object) -> Coalesce | None:
    """Turn a ``coalesce=`` argument into a :class:`Coalesce` (or None).

    Raises:
        InvalidCoalesceError: the value is neither None, a strategy name nor a Coalesce.
    """
    if value is None or isinstance(value, Coalesce):
        return value
    if isinstance(value, str):
        known = NAMED_STRATEGIES.get(value)
        return known if known is not None else Coalesce(value)  # type: ignore[arg-type]
    raise InvalidCoalesceError(
        f"coalesce must be None, a strategy name or keyflow.Coalesce, got {value!r}"
    )
