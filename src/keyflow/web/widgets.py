"""The dashboard's widgets: what each one shows, and which changes concern it.

A widget is a partial template (``partials/<name>.html``) plus the context built here.
Pages include their widgets' partials when first rendered; the live stream and the
polling fallback render the same partials again with the same parameters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from ..runs import RunStatus
from ..watch import Changes
from .charts import RateHistory, timeline
from .source import DashboardSource, RunFilters

LANES_PER_PAGE = 50
RUNS_PER_PAGE = 50
FEED_SIZE = 30

WIDGETS = ("counts", "rates", "feed", "lanes", "lane", "timeline", "runs", "run")
PERIODIC = frozenset({"rates"})


@dataclass(frozen=True, slots=True)
class Params:
    """What a page shows: filters, paging, the key or run it is about."""

    prefix: str = ""
    page: int = 1
    key: str | None = None
    run_id: str | None = None
    filters: RunFilters = field(default_factory=RunFilters)

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Params:
        """From a query string (unknown or malformed values fall back to defaults)."""
        try:
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            page = 1
        status = query.get("status") or None
        if status is not None and status not in {s.value for s in RunStatus}:
            status = None
        return cls(
            prefix=query.get("prefix", ""),
            page=page,
            key=query.get("key") or None,
            run_id=query.get("run") or None,
            filters=RunFilters(
                job=query.get("job") or None,
                status=status,
                key=query.get("key") or None,
                text=query.get("q") or None,
            ),
        )

    def page_query(self, page: int) -> str:
        """The query string of page ``page`` with the same filters."""
        query = {k: v for k, v in self.as_query().items() if k != "page"}
        if page > 1:
            query["page"] = str(page)
        return urlencode(query)

    def as_query(self) -> dict[str, str]:
        """The parameters that are set, for URLs."""
        out = dict(self.filters.as_query())
        if self.prefix:
            out["prefix"] = self.prefix
        if self.page > 1:
            out["page"] = str(self.page)
        if self.key:
            out["key"] = self.key
        if self.run_id:
            out["run"] = self.run_id
        return out


def wants(widget: str, params: Params, changes: Changes) -> bool:
    """Do ``changes`` change what ``widget`` shows for ``params``?"""
    if changes.everything:
        return True
    if widget == "rates":
        return False  # refreshed on a period
    if widget == "feed":
        return changes.coalesced
    if widget in ("lane", "timeline"):
        return params.key in changes.keys
    return True  # counts, lanes, runs, run: any change may show (throttled anyway)


async def context(
    widget: str, source: DashboardSource, params: Params, history: RateHistory
) -> dict[str, Any]:
    """The template context of ``widget``.

    Raises:
        KeyError: an unknown widget.
    """
    now = time.time()
    if widget == "counts":
        counts = await source.counts()
        history.sample(now, counts.finished_total, counts.coalesced_total)
        return {"counts": counts, "statuses": [s.value for s in RunStatus]}
    if widget == "rates":
        counts = await source.counts()
        history.sample(now, counts.finished_total, counts.coalesced_total)
        return {
            "finished": history.sparkline("finished", now),
            "coalesced": history.sparkline("coalesced", now),
        }
    if widget == "feed":
        runs, _ = await source.runs(RunFilters(), 0, 100)
        joined = [(t, run) for run in runs for t in run.coalesced]
        joined.sort(key=lambda pair: pair[0].at, reverse=True)
        return {"feed": joined[:FEED_SIZE], "now": now}
    if widget == "lanes":
        offset = (params.page - 1) * LANES_PER_PAGE
        rows, total = await source.lane_rows(params.prefix, offset, LANES_PER_PAGE)
        return {"rows": rows, "total": total, "now": now, **_pages(params, total, LANES_PER_PAGE)}
    if widget in ("lane", "timeline"):
        key = params.key or ""
        lane = await source.lane(key)
        runs, total = await source.runs(RunFilters(key=key), 0, 40)
        return {"lane": lane, "chart": timeline(runs, now), "runs": runs, "total": total}
    if widget == "runs":
        offset = (params.page - 1) * RUNS_PER_PAGE
        runs, total = await source.runs(params.filters, offset, RUNS_PER_PAGE)
        return {"runs": runs, "total": total, "now": now, **_pages(params, total, RUNS_PER_PAGE)}
    if widget == "run":
        run = await source.run(params.run_id or "")
        return {"run": run, "now": now}
    raise KeyError(widget)


def _pages(params: Params, total: int, per_page: int) -> dict[str, Any]:
    last = max(1, -(-total // per_page))
    return {"page": min(params.page, last), "last_page": last, "per_page": per_page}
