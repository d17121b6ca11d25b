"""``keyflow demo`` and ``keyflow --help`` as a user runs them: in a subprocess."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

FAST = ("--speed", "3600", "--no-dashboard")


def keyflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keyflow.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [run_id for (run_id,) in db.execute("SELECT id FROM keyflow_runs")]


def test_the_demo_runs_reports_and_continues_with_its_stored_settings(tmp_path: Path) -> None:
    first = keyflow("demo", "--duration", "2", *FAST, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "pipelines skip and queue" in first.stdout
    assert "keyflow-demo.world.db (the simulated world)" in first.stdout
    assert "PRs that waited a cycle: skip " in first.stdout  # the console's lines
    assert "A/skip" in first.stdout
    assert "A/queue" in first.stdout
    assert (tmp_path / "keyflow-demo.db").exists()
    assert (tmp_path / "keyflow-demo.world.db").exists()
    before = run_ids(tmp_path / "keyflow-demo.db")

    again = keyflow("demo", "--duration", "1", "--orgs", "5", *FAST, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "continuing the story in keyflow-demo.world.db" in again.stdout
    assert "3 orgs x 4 repos" in again.stdout  # the stored settings, kept
    assert "ignored: --orgs 5 (the story has 3)" in again.stdout
    after = run_ids(tmp_path / "keyflow-demo.db")
    assert len(after) > len(before)
    assert len(set(after)) == len(after)  # run ids stay unique across restarts


def test_reset_starts_a_new_story_with_new_settings(tmp_path: Path) -> None:
    assert keyflow("demo", "--duration", "1", *FAST, cwd=tmp_path).returncode == 0
    fresh = keyflow("demo", "--reset", "--orgs", "2", "--duration", "1", *FAST, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert "reset (keyflow-demo.db, keyflow-demo.world.db)" in fresh.stdout
    assert "continuing" not in fresh.stdout
    assert "2 orgs x 4 repos" in fresh.stdout
    with sqlite3.connect(tmp_path / "keyflow-demo.world.db") as db:
        orgs = db.execute("SELECT count(DISTINCT org) FROM repos").fetchone()[0]
    assert orgs == 2


def test_a_taken_port_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        demo = keyflow("demo", "--port", port, "--duration", "1", cwd=tmp_path)
        dashboard = keyflow(
            "dashboard", "--storage", "sqlite:///x.db", "--port", port, cwd=tmp_path
        )
    for done in (demo, dashboard):
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
        assert f"port {port} on 127.0.0.1 is in use" in done.stderr
        assert "storage" not in done.stderr
    assert not (tmp_path / "keyflow-demo.db").exists()  # nothing was started


def test_help_is_plain_and_says_every_default(tmp_path: Path) -> None:
    top = keyflow("--help", cwd=tmp_path)
    demo = keyflow("demo", "--help", cwd=tmp_path)
    assert top.returncode == demo.returncode == 0
    for text in (top.stdout, demo.stdout):
        assert "``" not in text
        assert ":mod:" not in text
    options = [line.split()[0] for line in demo.stdout.splitlines() if line.startswith("  --")]
    assert "--reset" in options
    assert "--orgs" in options
    paragraphs = demo.stdout.split("\n  --")[1:]
    for paragraph in paragraphs:
        if paragraph.startswith("help"):
            continue
        assert "(default:" in " ".join(paragraph.split()), paragraph
    assert "keyflow-demo.world.db" in demo.stdout


def test_the_compare_command_prints_the_table_and_writes_the_chart(tmp_path: Path) -> None:
    done = keyflow("demo", "--compare", "--hours", "6", "--svg", "chart.svg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "A/skip" in line)
    assert header.split() == ["A/skip", "A/queue", "B/skip", "B/queue"]
    chart = (tmp_path / "chart.svg").read_text()
    assert chart.startswith("<svg")
    assert "A/queue" in chart


def test_ctrl_c_stops_the_live_demo_gracefully(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "keyflow.cli", "demo", *FAST]
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # a line per simulated ten minutes, once the story runs
            if " | lanes at peak: " in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "PRs processed" in out
    again = keyflow("demo", "--duration", "1", *FAST, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "continuing the story" in again.stdout


@pytest.mark.parametrize("storage", ["sqlite:///nested/runs.db", "json:///runs.json"])
def test_reset_removes_only_the_demos_files(tmp_path: Path, storage: str) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "keep.txt").write_text("mine")
    first = keyflow("demo", "--storage", storage, "--duration", "1", *FAST, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    done = keyflow("demo", "--storage", storage, "--reset", "--duration", "0", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert "world.db" in done.stdout.splitlines()[0]
