"""The geometry behind the SVG charts: rates over 10 minutes, and key timelines."""

from __future__ import annotations

from keyflow.runs import CoalescedTrigger, Run, RunStatus
from keyflow.web.charts import BUCKETS, WINDOW_SECONDS, RateHistory, timeline


def run(run_id: str, created: float, started: float | None, finished: float | None) -> Run:
    return Run(
        id=run_id, job="process", input={}, status=RunStatus.COMPLETED, concurrency_key="k",
        labels={}, idempotency_key=None, parent_run_id=None, attempt=1, max_attempts=1,
        trigger_count=3, created_at=created, due_at=created, started_at=started,
        finished_at=finished, output=None, error=None, errors=(), progress=None, logs=(),
        coalesced=tuple(CoalescedTrigger(created + n, {}, None) for n in (1, 2)),
        interruptions=0,
    )  # fmt: skip


def test_rates_are_differences_of_counters_per_bucket() -> None:
    history = RateHistory("finished", "coalesced")
    now = 10_000.0
    history.sample(now - 100, 0, 0)
    history.sample(now - 99.5, 50, 0)  # within a second of the last: ignored
    history.sample(now - 90, 100, 10)  # +100 finished over the bucket ending ~90 s ago
    history.sample(now - 1, 100, 40)
    rates = history.rates("finished", now)
    assert len(rates) == BUCKETS
    size = WINDOW_SECONDS / BUCKETS
    assert sum(rates) * size == 100
    assert rates[-1] == 0
    assert history.rates("coalesced", now)[-1] * size == 30
    line = history.sparkline("coalesced", now, width=120, height=40)
    points = [tuple(map(float, p.split(","))) for p in line.points.split()]
    assert len(points) == BUCKETS
    assert points[-1] == (120.0, 2.0)  # the peak, at the top (2 px margin)
    assert min(y for _, y in points[:-1]) >= 2.0
    assert line.peak == line.latest == 30 / size
    later = now + WINDOW_SECONDS + 100
    history.sample(later, 200, 40)  # nobody looked for 10 minutes: it lands in one bucket
    assert history.rates("finished", later)[-1] * size == 100
    assert sum(history.rates("finished", later)) * size == 100  # the older ones left


def test_a_timeline_places_waiting_running_and_coalesced_ticks() -> None:
    now = 1_000.0
    runs = [run("b", 960, 980, None), run("a", 900, 900, 960)]
    chart = timeline(runs, now, width=620, row=20)
    first, second = chart.bars
    assert first.run.id == "a"  # oldest first, whatever the input order
    assert (first.wait_x, first.start_x, first.end_x) == (10.0, 10.0, 370.0)
    assert (second.wait_x, second.start_x, second.end_x) == (370.0, 490.0, 610.0)
    assert second.ticks == (376.0, 382.0)  # the two coalesced triggers, 1 s and 2 s in
    assert chart.axis[-1] == (610.0, "now")
    assert chart.axis[0][1] == "-1.7m"
