"""The dashboard's actions: trigger, cancel, retrigger, the same in bulk, pause, resume.

Every action is a POST that passes :func:`_guard` (access, origin, CSRF token) and
answers with a flash message: success in 200, failure in 4xx with the reason (the
page swaps both in, so nothing fails silently).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ..errors import KeyflowError, RunNotFoundError
from ..runs import Run, TriggerResult
from .dashboard import STRATEGIES, can_act, dashboard, flash
from .source import DashboardSource, PauseKind, RunFilters
from .widgets import Params

BULK_LIMIT = 10_000
"""Runs one bulk action may touch; a wider selection is refused (narrow the filter)."""
BULK_ACTIONS = ("cancel", "retrigger")


async def _guard(request: Request) -> Response | None:
    if not can_act(request):
        return flash(request, False, "this dashboard is read-only", status=403)
    refusal = await dashboard(request).csrf.refusal(request)
    if refusal is not None:
        return flash(request, False, refusal, status=403)
    return None


def _field(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value if isinstance(value, str) else default


async def trigger(request: Request) -> Response:
    """The trigger form: job, JSON input, key, strategy."""
    refused = await _guard(request)
    if refused is not None:
        return refused
    form = await request.form()
    job = _field(form, "job")
    raw = _field(form, "input") or "{}"
    key = _field(form, "key").strip() or None
    strategy = _field(form, "coalesce")
    if strategy not in STRATEGIES:
        return flash(request, False, f"unknown strategy {strategy!r}")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        return flash(request, False, f"the input is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return flash(request, False, "the input must be a JSON object, like {}")
    try:
        result = await dashboard(request).source.trigger(job, data, key, strategy or None)
    except KeyflowError as exc:
        return flash(request, False, str(exc))
    return flash(request, True, result.disposition.value, result=result)


async def cancel(request: Request) -> Response:
    """Cancel a run (a finished one is an error: there is nothing to cancel)."""
    refused = await _guard(request)
    if refused is not None:
        return refused
    source = dashboard(request).source
    run_id = request.path_params["run_id"]
    before = await source.run(run_id)
    if before is None:
        return flash(request, False, f"no run {run_id}", status=404)
    if before.is_terminal:
        return flash(request, False, f"run {run_id} had already {before.status.value}", status=409)
    try:
        run = await source.cancel(run_id)
    except KeyflowError as exc:
        return flash(request, False, str(exc))
    return flash(request, True, f"run {run.id} is {run.status.value}", run=run)


async def retrigger(request: Request) -> Response:
    """Trigger a run's job again."""
    refused = await _guard(request)
    if refused is not None:
        return refused
    try:
        result = await dashboard(request).source.retrigger(request.path_params["run_id"])
    except RunNotFoundError as exc:
        return flash(request, False, str(exc), status=404)
    except KeyflowError as exc:
        return flash(request, False, str(exc))
    return flash(request, True, result.disposition.value, result=result)


async def bulk(request: Request) -> Response:
    """Cancel or retrigger many runs at once.

    ``scope`` says which: ``selected`` (the ``run`` fields), ``matching`` (every run
    matching the filter fields) or ``waiting`` (the waiting runs of lane ``key``).
    """
    refused = await _guard(request)
    if refused is not None:
        return refused
    form = await request.form()
    action = _field(form, "action")
    if action not in BULK_ACTIONS:
        return flash(request, False, f"unknown bulk action {action!r}")
    source = dashboard(request).source
    try:
        runs = await _selection(source, form)
    except ValueError as exc:
        return flash(request, False, str(exc))
    if not runs:
        return flash(request, False, "no runs selected")
    if action == "cancel":
        return await _cancel_all(request, source, runs)
    return await _retrigger_all(request, source, runs)


async def _selection(source: DashboardSource, form: FormData) -> list[Run]:
    """The runs a bulk form designates.

    Raises:
        ValueError: an unknown scope, or more than :data:`BULK_LIMIT` runs.
    """
    scope = _field(form, "scope", "selected")
    if scope == "selected":
        ids = list(dict.fromkeys(v for v in form.getlist("run") if isinstance(v, str)))
        if len(ids) > BULK_LIMIT:
            raise ValueError(f"{len(ids):,} runs selected; at most {BULK_LIMIT:,} at once")
        found = [await source.run(run_id) for run_id in ids]
        return [run for run in found if run is not None]
    if scope == "waiting":
        key = _field(form, "key")
        lane = await source.lane(key)
        found = [await source.run(run_id) for run_id in (*lane.waiting, *lane.scheduled)]
        return [run for run in found if run is not None]
    if scope == "matching":
        params = Params.parse({k: v for k, v in form.items() if isinstance(v, str)})
        if params.problems:  # acting on a wider selection than the one asked for: never
            raise ValueError(params.problems[0].message)
        filters = params.filters
        if filters == RunFilters():
            raise ValueError("choose a filter first: a bulk action never takes every run")
        total = await source.count_runs(filters)
        if total > BULK_LIMIT:
            raise ValueError(f"{total:,} runs match; at most {BULK_LIMIT:,} at once")
        return await source.find_runs(filters, 0, BULK_LIMIT)
    raise ValueError(f"unknown selection {scope!r}")


async def _each(
    ids: Sequence[str], act: Callable[[str], Awaitable[object]]
) -> tuple[int, list[str]]:
    results = await asyncio.gather(*(act(i) for i in ids), return_exceptions=True)
    errors = [f"{i}: {r}" for i, r in zip(ids, results, strict=True) if isinstance(r, Exception)]
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
    return len(ids) - len(errors), errors


async def _cancel_all(request: Request, source: DashboardSource, runs: list[Run]) -> Response:
    waiting = [run.id for run in runs if not run.is_terminal]
    skipped = len(runs) - len(waiting)
    done, errors = await _each(waiting, source.cancel)
    message = f"cancelled {done:,} run{'s' * (done != 1)}"
    if skipped:
        message += f" ({skipped:,} had already finished)"
    return _summary(request, message, done, errors)


async def _retrigger_all(request: Request, source: DashboardSource, runs: list[Run]) -> Response:
    results: list[TriggerResult] = []

    async def again(run_id: str) -> None:
        results.append(await source.retrigger(run_id))

    done, errors = await _each([run.id for run in runs], again)
    message = f"retriggered {done:,} run{'s' * (done != 1)}"
    return _summary(request, message, done, errors)


def _summary(request: Request, message: str, done: int, errors: list[str]) -> Response:
    if errors:
        shown = "; ".join(errors[:3]) + (" …" if len(errors) > 3 else "")
        return flash(request, False, f"{message}, {len(errors):,} failed: {shown}")
    return flash(request, done > 0, message)


async def pause(request: Request) -> Response:
    """Pause a job (form field ``job``) or a lane (``key``): none of its runs starts."""
    return await _set_paused(request, paused=True)


async def resume(request: Request) -> Response:
    """Resume a job (form field ``job``) or a lane (``key``) paused before."""
    return await _set_paused(request, paused=False)


async def _set_paused(request: Request, *, paused: bool) -> Response:
    refused = await _guard(request)
    if refused is not None:
        return refused
    form = await request.form()
    job, key = _field(form, "job"), _field(form, "key")
    if bool(job) == bool(key):
        return flash(request, False, "give exactly one of job and key (a job or a lane)")
    kind: PauseKind = "job" if job else "key"
    name = job or key
    what = f"job {name}" if kind == "job" else f"lane {name}"
    source = dashboard(request).source
    try:
        now = await source.paused()
        was = name in (now.jobs if kind == "job" else now.keys)
        if was == paused:
            state = "already paused" if paused else "not paused"
            return flash(request, True, f"{what} was {state}")
        if kind == "job" and paused and not await _known_job(source, name):
            return flash(request, False, f"no job {name}", status=404)
        await source.set_paused(kind, name, paused)
    except KeyflowError as exc:
        return flash(request, False, str(exc))
    return flash(request, True, f"{what} is {'paused' if paused else 'resumed'}")


async def _known_job(source: DashboardSource, job: str) -> bool:
    """Registered here, or with runs in storage (a typo is not paused for ever)."""
    return job in source.jobs() or bool(await source.find_runs(RunFilters(job=job), 0, 1))
