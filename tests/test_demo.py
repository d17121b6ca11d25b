"""The crawl → process simulator: the seed's story, told by the simulator's ground truth."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import keyflow
from keyflow.demo.report import make_report
from keyflow.demo.runner import START, compare
from keyflow.demo.sim import HOUR, Scenario, SimConfig, Simulation, Strategy
from keyflow.demo.simtime import VirtualTime
from keyflow.demo.world import World, WorldConfig

HOURS = 24.0
WORLD = WorldConfig(seed=7)


async def play(scenario: Scenario, strategy: Strategy) -> tuple[World, keyflow.Keyflow]:
    """One combination in virtual time; the world and the scheduler stay open to inspect."""
    world = World(WORLD)
    time = VirtualTime(START)
    kf = keyflow.Keyflow(workers=16, clock=time.clock, seed=7, retention=1_000_000)
    sim = Simulation(kf, world, time, SimConfig(scenario, strategy, seed=7))
    world.create(START)
    await kf.start()
    await sim.run(START + HOURS * HOUR, asyncio.Event())
    return world, kf


async def processing_started_after_fetch(world: World, kf: keyflow.Keyflow) -> list[str]:
    """PRs whose processing run started before they were fetched (must be none)."""
    started: dict[str, float] = {}
    wrong = []
    for pr, fetched_at, run_id in world.db.execute(
        "SELECT id, fetched_at, processed_by FROM prs WHERE processed_by IS NOT NULL"
    ):
        if run_id not in started:
            run = await kf.get_run(run_id)
            assert run is not None
            assert run.status is keyflow.RunStatus.COMPLETED
            assert run.started_at is not None
            started[run_id] = run.started_at
        if started[run_id] < fetched_at:
            wrong.append(pr)
    return wrong


@pytest.mark.parametrize("scenario", ["A", "B"])
async def test_queue_processes_every_fetched_pr_after_its_crawl(scenario: Scenario) -> None:
    world, kf = await play(scenario, "queue")
    try:
        fetched, unprocessed, late = world.db.execute(
            "SELECT count(fetched_at), count(fetched_at) - count(processed_at),"
            " sum(processed_at - fetched_at > 1800) FROM prs"
        ).fetchone()
        assert fetched > 1000
        assert unprocessed == 0  # every PR a crawl fetched was processed
        assert late == 0  # and none waited for a later cycle
        assert await processing_started_after_fetch(world, kf) == []
        report = make_report(world, "q", 0, 0, kf.statistics().triggers.coalesced)
        assert report.new_repos > 0
        assert report.new_repos_delayed == 0  # every added repo's own crawl delivered
    finally:
        await kf.stop(grace=0)
        world.close()


async def test_skip_in_a_leaves_prs_until_the_next_cycle() -> None:
    world, kf = await play("A", "skip")
    try:
        rows = world.db.execute(
            "SELECT processed_at - fetched_at FROM prs WHERE processed_at IS NOT NULL"
        ).fetchall()
        late = [wait for (wait,) in rows if wait > 1800]
        assert late, "a crawl that ended while process ran had its PRs wait a cycle"
        assert max(late) > 0.75 * HOUR
        assert kf.statistics().triggers.coalesced > 0  # the skipped triggers
    finally:
        await kf.stop(grace=0)
        world.close()


async def test_skip_in_b_delays_a_new_repositorys_first_crawl() -> None:
    world, kf = await play("B", "skip")
    try:
        report = make_report(world, "B/skip", 0, 0, 0)
        assert report.new_repos_delayed > 0  # their initial crawl was dropped
        assert report.first_data_max > 45  # minutes: until the next hourly crawl
    finally:
        await kf.stop(grace=0)
        world.close()


async def test_compare_is_reproducible_and_tells_the_story() -> None:
    first = await compare(12, WORLD)
    again = await compare(12, WORLD)
    assert first == again  # same seed, same story
    by_label = {r.label: r for r in first}
    assert by_label["A/queue"].left_behind == by_label["B/queue"].left_behind == 0
    assert by_label["A/queue"].waited_a_cycle == 0
    assert by_label["A/skip"].staleness_max > by_label["A/queue"].staleness_max


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyflow.cli", "demo", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_demo_command_runs_reports_and_continues_after_a_restart(tmp_path: Path) -> None:
    options = ("--duration", "2", "--speed", "3600", "--no-dashboard")
    first = run_cli(*options, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "PRs processed" in first.stdout
    assert (tmp_path / "keyflow-demo.db").exists()
    assert (tmp_path / "keyflow-demo.world.db").exists()
    again = run_cli(*options, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "continuing from the stored state" in again.stdout


def test_the_compare_command_prints_the_table_and_writes_the_chart(tmp_path: Path) -> None:
    done = run_cli("--compare", "--hours", "6", "--svg", "chart.svg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "A/skip" in line)
    assert header.split() == ["A/skip", "A/queue", "B/skip", "B/queue"]
    chart = (tmp_path / "chart.svg").read_text()
    assert chart.startswith("<svg")
    assert "A/queue" in chart


def test_ctrl_c_stops_the_live_demo_gracefully(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "keyflow.cli", "demo", "--no-dashboard", "--speed", "3600"]
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # a status line a second, once the story runs
            if line.startswith("sim "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "PRs processed" in out
    again = run_cli("--duration", "1", "--speed", "3600", "--no-dashboard", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "continuing from the stored state" in again.stdout
