"""The dashboard's widgets: what each one shows, and which changes concern it.

A widget is a partial template (``partials/<name>.html``) plus the context built here.
Pages include their widgets' partials when first rendered; the live stream and the
polling fallback render the same partials again with the same parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlencode

from ..runs import RunStatus
from ..stats import LaneSnapshot
from ..watch import Changes
from .charts import RateHistory, timeline
from .instants import NotAnInstantError, parse_instant
from .jobstats import WINDOWS, StatsCache
from .source import (
    LANE_SORTS,
    LANE_STATES,
    TIME_FILTERS,
    DashboardSource,
    LaneFilters,
    RunFilters,
)

LANES_PER_PAGE = 50
RUNS_PER_PAGE = 50
FEED_SIZE = 30
MAX_PAGE = 1_000_000
"""Pages beyond this are not asked for (an offset storage could not even represent)."""
MAX_FIELD = 1_000
COUNT_CAP = 1_000
"""Matches of a free-text or label filter counted at most ("1,000+")."""
"""Longer filter values are cut: nobody types them, and storage need not scan for them."""

WIDGETS = (
    *("counts", "rates", "feed", "paused", "lanes", "lane", "timeline", "runs", "run"),
    *("stats", "pause"),
)
"""``paused``: the overview's list of pauses; ``pause``: a job page's pause state and button."""
PERIODIC = frozenset({"rates", "stats"})


def _text(query: Mapping[str, str], name: str) -> str:
    return query.get(name, "")[:MAX_FIELD]


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """``"org=acme, env=prod"`` as sorted pairs.

    Raises:
        ValueError: a part is not ``name=value`` (a filter must never silently widen).
    """
    pairs = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(
                f"{part.strip()[:40]!r} is not a label: write name=value, "
                "separated by commas (org=acme, env=prod)"
            )
        pairs[name.strip()] = value.strip()
    return tuple(sorted(pairs.items()))


TEXT_FILTERS = ("job", "key", "q", "labels", "key_prefix")
"""The filters given as text (the time filters are read by :func:`parse_times`)."""


def read_texts(query: Mapping[str, str]) -> tuple[dict[str, str], list[Problem]]:
    """The text filters of ``query``, and those too long to be a filter.

    A value is never cut short: a shorter prefix, key or date would select more runs
    than the one typed (and a bulk action act on them).
    """
    texts: dict[str, str] = {}
    problems: list[Problem] = []
    for name in (*TEXT_FILTERS, *TIME_FILTERS):
        text = query.get(name, "")
        if len(text) > MAX_FIELD:
            problems.append(
                Problem(name, text[:MAX_FIELD], f"{name} is longer than {MAX_FIELD:,} characters")
            )
        else:
            texts[name] = text
    return texts, problems


class Problem(NamedTuple):
    """A filter value that could not be read: shown on the page, the filter not applied."""

    field: str
    """The query parameter (``created_after``)."""
    value: str
    """What was given."""
    message: str
    """What is wrong, and what to write instead."""


def parse_times(query: Mapping[str, str]) -> tuple[dict[str, float], tuple[Problem, ...]]:
    """The time range filters given in ``query``, and the values that are not moments."""
    times: dict[str, float] = {}
    problems: list[Problem] = []
    for name in TIME_FILTERS:
        text = query.get(name, "")
        if not text.strip():
            continue
        if len(text) > MAX_FIELD:
            continue  # (reported by read_texts)
        try:
            times[name] = parse_instant(text, name.replace("_", " "))
        except NotAnInstantError as exc:
            problems.append(Problem(name, text, str(exc)))
    return times, tuple(problems)


@dataclass(frozen=True, slots=True)
class Params:
    """What a page shows: filters, paging, the key, run or job it is about."""

    page: int = 1
    key: str | None = None
    run_id: str | None = None
    filters: RunFilters = field(default_factory=RunFilters)
    lanes: LaneFilters = field(default_factory=LaneFilters)
    window: str = "1h"
    """The stats page's window (one of :data:`~.jobstats.WINDOWS`)."""
    problems: tuple[Problem, ...] = ()
    """Filter values that could not be read (those filters are not applied)."""

    @property
    def prefix(self) -> str:
        """The lanes' key prefix filter."""
        return self.lanes.prefix

    def field_value(self, name: str) -> str:
        """What a filter control shows: the value given, even one that could not be read."""
        for problem in self.problems:
            if problem.field == name:
                return problem.value
        return self.filters.as_query().get(name, "")

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Params:
        """From a query string: unknown or malformed values fall back to defaults.

        A time filter that is not a date or date-time is a :class:`Problem` instead.
        """
        raw_page = query.get("page", "1")
        page = int(raw_page) if raw_page.isascii() and raw_page.isdigit() else 1
        texts, problems = read_texts(query)
        status = query.get("status") or None
        if status is not None and status not in {s.value for s in RunStatus}:
            statuses = ", ".join(s.value for s in RunStatus)
            problems.append(Problem("status", status[:MAX_FIELD], f"status is one of {statuses}"))
            status = None
        try:
            labels = parse_labels(texts.get("labels", ""))
        except ValueError as exc:
            problems.append(Problem("labels", texts.get("labels", ""), str(exc)))
            labels = ()
        state = query.get("state") or None
        sort = query.get("sort", "key")
        window = query.get("window", "1h")
        times, time_problems = parse_times(query)
        return cls(
            page=min(MAX_PAGE, max(1, page)),
            key=_text(query, "key") or None,
            run_id=_text(query, "run") or None,
            filters=RunFilters(
                job=texts.get("job") or None,
                status=status,
                key=texts.get("key") or None,
                text=texts.get("q") or None,
                labels=labels,
                key_prefix=texts.get("key_prefix") or None,
                **times,
            ),
            lanes=LaneFilters(
                prefix=_text(query, "prefix"),
                state=state if state in LANE_STATES else None,
                sort=next((s for s in LANE_SORTS if s == sort), "key"),
            ),
            window=window if window in WINDOWS else "1h",
            problems=(*problems, *time_problems),
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
        lanes = self.lanes
        if lanes.prefix:
            out["prefix"] = lanes.prefix
        if lanes.state:
            out["state"] = lanes.state
        if lanes.sort != "key":
            out["sort"] = lanes.sort
        if self.page > 1:
            out["page"] = str(self.page)
        if self.key:
            out["key"] = self.key
        if self.run_id:
            out["run"] = self.run_id
        if self.window != "1h":
            out["window"] = self.window
        return out


def wants(widget: str, params: Params, changes: Changes) -> bool:
    """Do ``changes`` change what ``widget`` shows for ``params``?"""
    if changes.everything:
        return True
    if widget in PERIODIC:
        return False  # refreshed on a period
    if widget == "feed":
        return changes.coalesced
    if widget in ("lane", "timeline"):
        return params.key in changes.keys
    if widget == "pause":
        return False  # a job's pause changes "everything"
    if widget == "runs" and params.filters.key is not None:
        return params.filters.key in changes.keys
    return True  # counts, lanes, runs, run: any change may show (throttled anyway)


async def context(
    widget: str,
    source: DashboardSource,
    params: Params,
    history: RateHistory,
    stats: StatsCache | None = None,
) -> dict[str, Any]:
    """The template context of ``widget`` (``stats``: the app's cache of job statistics).

    Raises:
        KeyError: an unknown widget.
    """
    now = source.now()
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
        runs = await source.find_runs(RunFilters(), 0, 100)
        joined = [(t, run) for run in runs for t in run.coalesced]
        joined.sort(key=lambda pair: pair[0].at, reverse=True)
        return {"feed": joined[:FEED_SIZE], "now": now}
    if widget == "lanes":
        offset = (params.page - 1) * LANES_PER_PAGE
        rows, total = await source.lane_rows(params.lanes, offset, LANES_PER_PAGE)
        pages = _pages(params, total, LANES_PER_PAGE)
        if pages["page"] != params.page:  # past the end: show the last page
            offset = (pages["page"] - 1) * LANES_PER_PAGE
            rows, total = await source.lane_rows(params.lanes, offset, LANES_PER_PAGE)
        return {"rows": rows, "total": total, "now": now, "paused": await source.paused(), **pages}
    if widget in ("lane", "timeline"):
        key = params.key or ""
        lane = await source.lane(key)
        runs, total = await source.runs(RunFilters(key=key), 0, 40)
        return {
            "lane": lane,
            "chart": timeline(runs, now),
            "runs": runs,
            "total": total,
            "paused": await source.paused(),
            "jobs": await _lane_jobs(source, lane),
        }
    if widget == "paused":
        return {"paused": await source.paused()}
    if widget == "pause":
        return {"job": params.filters.job or "", "paused": await source.paused()}
    if widget == "runs":
        return {**await _runs_page(source, params), "now": now}
    if widget == "run":
        run = await source.run(params.run_id or "")
        return {"run": run, "now": now}
    if widget == "stats":
        job = params.filters.job or ""
        cache = stats or StatsCache(seconds=0)
        return {"stats": await cache.get(source, job, now, params.window), "now": now}
    raise KeyError(widget)


async def _lane_jobs(source: DashboardSource, lane: LaneSnapshot) -> frozenset[str]:
    """The jobs of the runs holding ``lane``'s slots and of the one starting next."""
    ids = (*lane.running, *lane.waiting[:1])
    return frozenset(run.job for run in [await source.run(i) for i in ids] if run is not None)


async def _runs_page(source: DashboardSource, params: Params) -> dict[str, Any]:
    """A page of runs and how many match, with as few storage scans as it takes.

    A first page shorter than a page is the whole answer: no count needed. Otherwise the
    count stops at :data:`COUNT_CAP` for filters storage must scan for.
    """
    filters, per_page = params.filters, RUNS_PER_PAGE
    offset = (params.page - 1) * per_page
    runs = await source.find_runs(filters, offset, per_page) if params.page == 1 else []
    if params.page == 1 and len(runs) < per_page:
        total, capped = len(runs), False
    else:
        total, capped = await source.count_runs_capped(filters, COUNT_CAP)
    if capped:
        # "1,000+": pages go on while they are full.
        if params.page > 1:
            runs = await source.find_runs(filters, offset, per_page)
        last = params.page + 1 if len(runs) == per_page else params.page
        return {"runs": runs, "total": total, "capped": True, "page": params.page,
                "last_page": last, "per_page": per_page}  # fmt: skip
    pages = _pages(params, total, per_page)
    if params.page > 1 or pages["page"] != params.page:
        runs = await source.find_runs(filters, (pages["page"] - 1) * per_page, per_page)
    return {"runs": runs, "total": total, "capped": False, **pages}


def _pages(params: Params, total: int, per_page: int) -> dict[str, Any]:
    last = max(1, -(-total // per_page))
    return {"page": min(params.page, last), "last_page": last, "per_page": per_page}
