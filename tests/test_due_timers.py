"""The scheduled runs' timers: one heap, one clock timer (keyflow.due_timers)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from keyflow.clock import TimerHandle, VirtualClock
from keyflow.due_timers import DueTimers

START = 1_000.0


class CountingClock(VirtualClock):
    """A virtual clock that counts the timers set with it and not yet cancelled or fired."""

    def __init__(self) -> None:
        super().__init__(START)
        self.live: set[Counted] = set()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        counted = Counted(self.live)

        def fire() -> None:
            self.live.discard(counted)
            callback()

        counted.inner = super().call_at(when, fire)
        self.live.add(counted)
        return counted


class Counted:
    """A timer of :class:`CountingClock`."""

    def __init__(self, live: set[Counted]) -> None:
        self.live = live
        self.inner: TimerHandle | None = None

    def cancel(self) -> None:
        self.live.discard(self)
        if self.inner is not None:
            self.inner.cancel()


def timers_on(clock: VirtualClock) -> tuple[DueTimers, list[tuple[float, str]]]:
    fired: list[tuple[float, str]] = []
    return DueTimers(clock, lambda run_id: fired.append((clock.now(), run_id))), fired


def test_runs_fire_at_their_times_in_order_and_ties_in_the_order_armed() -> None:
    clock = VirtualClock(START)
    timers, fired = timers_on(clock)
    timers.arm("late", START + 30)
    timers.arm("tie-1", START + 10)
    timers.arm("early", START + 5)
    timers.arm("tie-2", START + 10)
    clock.advance(4.999)
    assert fired == []
    clock.advance(100)
    assert fired == [
        (START + 5, "early"),
        (START + 10, "tie-1"),
        (START + 10, "tie-2"),
        (START + 30, "late"),
    ]
    assert len(timers) == 0


def test_a_rearmed_run_fires_once_at_its_new_time_earlier_or_later() -> None:
    clock = VirtualClock(START)
    timers, fired = timers_on(clock)
    timers.arm("later", START + 10)
    timers.arm("earlier", START + 10)
    timers.arm("later", START + 20)
    timers.arm("earlier", START + 3)
    assert timers.due_at("later") == START + 20
    clock.advance(60)
    assert fired == [(START + 3, "earlier"), (START + 20, "later")]


def test_a_disarmed_run_never_fires() -> None:
    clock = VirtualClock(START)
    timers, fired = timers_on(clock)
    timers.arm("kept", START + 2)
    timers.arm("gone", START + 1)
    assert "gone" in timers
    timers.disarm("gone")
    timers.disarm("never-armed")  # nothing
    assert "gone" not in timers
    assert len(timers) == 1
    clock.advance(10)
    assert fired == [(START + 2, "kept")]


def test_a_run_armed_while_others_fire_does_not_hold_back_the_next_one() -> None:
    clock = VirtualClock(START)
    fired: list[tuple[float, str]] = []

    def fire(run_id: str) -> None:
        fired.append((clock.now(), run_id))
        if run_id == "a":
            timers.arm("far", START + 1_000)

    timers = DueTimers(clock, fire)
    timers.arm("a", START + 10)
    timers.arm("b", START + 11)
    clock.advance(10.5)
    clock.advance(0.5)
    assert fired == [(START + 10, "a"), (START + 11, "b")]


def test_one_clock_timer_however_many_runs_wait() -> None:
    clock = CountingClock()
    timers, fired = timers_on(clock)
    for n in range(1_000):
        timers.arm(f"r{n}", START + 1_000 - n)  # each earlier than the last
    assert len(clock.live) == 1
    clock.advance(500.5)
    assert len(fired) == 500
    assert len(clock.live) == 1
    timers.clear()
    assert len(clock.live) == 0
    clock.advance(1_000)
    assert len(fired) == 500


def test_disarmed_entries_do_not_pile_up() -> None:
    clock = VirtualClock(START)
    timers, _ = timers_on(clock)
    for n in range(10_000):
        timers.arm(f"r{n}", START + 60)
        timers.disarm(f"r{n}")
        timers.arm("moving", START + 60 + n)
    assert len(timers) == 1
    assert len(timers._heap) <= 2 * 64 + 2  # (the entries left behind are cleared out)


def test_a_failing_fire_leaves_the_rest_armed() -> None:
    clock = VirtualClock(START)
    fired: list[str] = []

    def fire(run_id: str) -> None:
        fired.append(run_id)
        if run_id == "bad":
            raise RuntimeError("boom")

    timers = DueTimers(clock, fire)
    timers.arm("bad", START + 1)
    timers.arm("next", START + 1)
    timers.arm("later", START + 5)
    with contextlib.suppress(RuntimeError):
        clock.advance(1)
    clock.advance(10)
    assert fired == ["bad", "next", "later"]


_run_ids = st.sampled_from([f"r{n}" for n in range(6)])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("arm"), _run_ids, st.integers(0, 40)),
        st.tuples(st.just("disarm"), _run_ids, st.just(0)),
        st.tuples(st.just("advance"), st.just(""), st.integers(0, 15)),
    ),
    max_size=60,
)


@given(_ops)
def test_fires_what_a_timer_per_run_would(ops: list[tuple[str, str, int]]) -> None:
    """Against a model: each armed run fires once, at its latest time, in time order."""
    clock = CountingClock()
    timers, fired = timers_on(clock)
    model: dict[str, tuple[float, int]] = {}  # run → (due, when armed)
    expected: list[tuple[float, str]] = []
    for n, (op, run_id, value) in enumerate(ops):
        if op == "arm":
            when = clock.now() + value
            timers.arm(run_id, when)
            model[run_id] = (when, n)
        elif op == "disarm":
            timers.disarm(run_id)
            model.pop(run_id, None)
        else:
            target = clock.now() + value
            due = sorted((w, order, r) for r, (w, order) in model.items() if w <= target)
            for w, _, r in due:
                expected.append((w, r))
                del model[r]
            clock.advance(value)
        assert fired == expected
        assert len(timers) == len(model)
        assert len(clock.live) <= 1
        if model:
            assert len(clock.live) == 1
