"""The request object of :meth:`keyflow.Keyflow.batch_trigger`.

Its own module, outside the compiled hot path (see hatch_build.py), so it stays a plain
Python dataclass whatever the build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .coalesce import CoalesceOption
from .jobs import DEFAULT, Default
from .runs import JSONObject


@dataclass(frozen=True, slots=True)
class TriggerRequest:
    """One trigger of a :meth:`keyflow.Keyflow.batch_trigger`; fields as in ``trigger()``."""

    job: str
    input: JSONObject | None = None
    concurrency_key: str | Default | None = DEFAULT
    coalesce: CoalesceOption | Default = DEFAULT
    idempotency_key: str | None = None
    labels: Mapping[str, str] | None = None
    delay: float = 0.0
