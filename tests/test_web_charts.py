"""The geometry behind the SVG charts and the numbers behind the stats page."""

from __future__ import annotations

import asyncio

import pytest

from keyflow.runs import CoalescedTrigger, Run, RunStatus
from keyflow.web.charts import BUCKETS, WINDOW_SECONDS, RateHistory, timeline
from keyflow.web.filters import num
from keyflow.web.jobstats import percentile, throughput_chart, window_stats
from keyflow.web.natural import NaturalOrder, natural_key
from keyflow.web.sampler import RateSampler

SIZE = WINDOW_SECONDS / BUCKETS


def run(
    run_id: str,
    created: float,
    started: float | None,
    finished: float | None,
    status: RunStatus = RunStatus.COMPLETED,
    triggers: int = 3,
) -> Run:
    return Run(
        id=run_id, job="process", input={}, status=status, concurrency_key="k",
        labels={}, idempotency_key=None, parent_run_id=None, attempt=1, max_attempts=1,
        trigger_count=triggers, created_at=created, due_at=created, started_at=started,
        finished_at=finished, output=None, error=None, errors=(), progress=None, logs=(),
        coalesced=tuple(CoalescedTrigger(created + n, {}, None) for n in range(1, triggers)),
        interruptions=0,
    )  # fmt: skip


def test_rates_are_differences_of_counters_per_bucket() -> None:
    history = RateHistory("finished", "coalesced")
    now = 10_000.0
    history.sample(now - 100, 0, 0)
    history.sample(now - 99.5, 50, 0)  # within a second of the last: ignored
    history.sample(now - 90, 100, 10)  # +100 finished within one bucket
    history.sample(now - 1, 100, 40)
    rates = history.rates("finished", now)
    assert len(rates) == BUCKETS
    assert sum(rates) * SIZE == pytest.approx(100)
    assert rates[-1] == 0
    assert rates[-10] * SIZE == pytest.approx(100)  # the bucket [-100 s, -90 s)
    coalesced = history.rates("coalesced", now)
    assert sum(coalesced) * SIZE == pytest.approx(40)
    line = history.sparkline("coalesced", now, width=120, height=40)
    points = [tuple(map(float, p.split(","))) for p in line.points.split()]
    assert len(points) == BUCKETS
    assert min(y for _, y in points) == 2.0  # the peak, at the top (2 px margin)
    assert line.peak == pytest.approx(max(coalesced))


def test_a_stretch_nobody_sampled_is_spread_not_piled_into_one_bucket() -> None:
    history = RateHistory("finished", "coalesced")
    now = 10_000.0
    history.sample(now - 300, 0, 0)
    history.sample(now, 300, 0)  # 5 minutes unsampled: 1 run/s on average
    rates = history.rates("finished", now)
    assert rates[-1] == pytest.approx(1.0)  # not a 30/s spike in the last bucket
    assert rates[-30] == pytest.approx(1.0)
    assert rates[-31] == 0
    assert sum(rates) * SIZE == pytest.approx(300)
    later = now + WINDOW_SECONDS + 100
    history.sample(later, 300, 0)
    assert sum(history.rates("finished", later)) == 0  # that stretch left the window


async def test_the_sampler_samples_in_the_background_until_its_source_stops() -> None:
    ticks: asyncio.Queue[None] = asyncio.Queue()
    samples: asyncio.Queue[int] = asyncio.Queue()
    slept: list[float] = []
    taken = 0
    alive = True

    async def sample() -> bool:
        nonlocal taken
        taken += 1
        samples.put_nowait(taken)
        return alive

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await ticks.get()  # the test decides when a period has passed

    sampler = RateSampler(sample, period=10.0, sleep=sleep)
    sampler.ensure_running()
    sampler.ensure_running()  # one task, however many requests
    assert await asyncio.wait_for(samples.get(), 5) == 1  # at once, nobody watching
    ticks.put_nowait(None)
    assert await asyncio.wait_for(samples.get(), 5) == 2  # again after a period
    alive = False
    ticks.put_nowait(None)
    assert await asyncio.wait_for(samples.get(), 5) == 3
    task = sampler.task
    assert task is not None
    await asyncio.wait_for(task, 5)  # the source stopped: so did the task
    assert slept == [10.0, 10.0]
    assert taken == 3
    alive = True
    sampler.ensure_running()  # the source came back: a new task
    assert sampler.task is not task
    assert await asyncio.wait_for(samples.get(), 5) == 4
    await sampler.stop()
    assert sampler.task is None


def test_a_timeline_places_waiting_running_and_coalesced_ticks() -> None:
    now = 1_000.0
    runs = [run("b", 960, 980, None), run("a", 900, 900, 960)]
    chart = timeline(runs, now, width=620, row=20)
    first, second = chart.bars
    assert first.run.id == "a"  # oldest first, whatever the input order
    assert (first.wait_x, first.start_x, first.end_x) == (10.0, 10.0, 370.0)
    assert (second.wait_x, second.start_x, second.end_x) == (370.0, 490.0, 610.0)
    assert second.ticks == (376.0, 382.0)  # the two coalesced triggers, 1 s and 2 s in
    assert (chart.axis[-1].x, chart.axis[-1].label, chart.axis[-1].anchor) == (610.0, "now", "end")
    assert (chart.axis[0].label, chart.axis[0].anchor) == ("-1.7m", "start")  # inside the box
    assert first.label_anchor == "start"


def test_the_newest_bar_near_the_right_edge_is_labelled_to_its_left() -> None:
    now = 1_000.0
    runs = [run("a", 100, 100, 200), run("b", 990, 995, None)]
    chart = timeline(runs, now, width=900)
    newest = chart.bars[-1]
    assert newest.label_anchor == "end"
    assert newest.label_x <= 900
    assert chart.bars[0].label_anchor == "start"


def test_numbers_print_as_a_person_writes_them() -> None:
    assert num(8.0) == "8"
    assert num(9) == "9"
    assert num(2.5) == "2.5"
    assert num(12345) == "12,345"
    assert num(None) == "\u2013"


def test_keys_sort_naturally() -> None:
    keys = ["repo10", "repo4", "repo1", "a07", "a7", "b", "repo4x"]
    assert sorted(keys, key=natural_key) == ["a07", "a7", "b", "repo1", "repo4", "repo4x", "repo10"]
    order = NaturalOrder(remember=2)
    assert order.sorted(["x10", "x9", "x100"]) == ["x9", "x10", "x100"]


def test_window_stats_percentiles_failures_and_coalescing() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0, 1.0, 3.0], 0.5) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 0.95) == 95.0
    runs = [
        run("a", 0, 1, 3),  # waited 1 s, ran 2 s
        run("b", 0, 2, 6, status=RunStatus.FAILED, triggers=1),  # waited 2, ran 4
        run("c", 0, 4, None, status=RunStatus.RUNNING, triggers=1),  # waited 4
    ]
    stats = window_stats("1h", 3600, runs, capped=False)
    assert (stats.runs, stats.finished, stats.completed, stats.failed) == (3, 2, 1, 1)
    assert stats.failure_rate == 0.5
    assert (stats.wait_p50, stats.wait_p95) == (2.0, 4.0)
    assert (stats.run_p50, stats.run_p95) == (2.0, 4.0)
    assert stats.triggers == 5
    assert stats.coalesced_ratio == pytest.approx(2 / 5)
    assert stats.per_minute == pytest.approx(2 / 60)


def test_the_throughput_chart_stacks_failed_on_completed() -> None:
    now = 3600.0
    runs = [
        run("a", 0, 1, now - 10),
        run("b", 0, 1, now - 20, status=RunStatus.FAILED),
        run("c", 0, 1, now - 3599),
    ]
    columns, peak = throughput_chart(runs, now, 3600, width=600, height=120)
    assert peak == 2
    last = columns[-1]
    assert (last.completed, last.failed) == (1, 1)
    assert last.completed_height == last.failed_height == 58.0
    assert last.failed_y == 120 - 116.0
    assert (columns[0].completed, columns[0].failed) == (1, 0)
