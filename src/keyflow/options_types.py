"""The keyword options of a trigger, as one typed dictionary.

``trigger_and_wait()``, ``Job.trigger_and_wait()`` and ``RunContext.trigger()`` pass
their keyword arguments on as trigger options; :class:`TriggerOptions` types them, so a
type checker catches a misspelt or mistyped option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from .coalesce import CoalesceOption
from .jobs import Default


class TriggerOptions(TypedDict, total=False):
    """Keyword options of a trigger (see :meth:`keyflow.Keyflow.trigger`)."""

    concurrency_key: str | Default | None
    coalesce: CoalesceOption | Default
    idempotency_key: str | None
    labels: Mapping[str, str] | None
    delay: float
    parent_run_id: str | None


TRIGGER_OPTIONS = frozenset(TriggerOptions.__annotations__)
"""The names :class:`TriggerOptions` allows."""
