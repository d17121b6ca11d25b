"""CPU seconds a PostgreSQL benchmark row spends: its producer, its workers, the server.

Read from ``/proc`` (Linux; elsewhere nothing is measured): this process's own time, the
worker processes' by pid, and every process named ``postgres`` on the machine (the
server's backends, including those of anything else using it meanwhile).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _seconds(pid: int | str) -> float:
    """A process's user + system CPU seconds; 0 if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _server() -> float:
    total = 0.0
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm == "postgres":
                total += _seconds(entry.name)
    return total


@dataclass(frozen=True)
class Cpu:
    """CPU seconds so far: this process, the workers, the server."""

    producer: float
    workers: float
    server: float

    @classmethod
    def now(cls, workers: Iterable[int]) -> Cpu:
        """A reading (all zero where ``/proc`` is missing)."""
        if not PROC.is_dir():
            return cls(0.0, 0.0, 0.0)
        return cls(time.process_time(), sum(_seconds(pid) for pid in workers), _server())

    def per_job(self, later: Cpu, jobs: int) -> str:
        """A note: milliseconds of CPU per job between this reading and ``later``."""
        if jobs <= 0 or not PROC.is_dir():
            return ""
        parts = [
            f"{name} {(after - before) / jobs * 1000:.2f}"
            for name, before, after in (
                ("producer", self.producer, later.producer),
                ("workers", self.workers, later.workers),
                ("PostgreSQL", self.server, later.server),
            )
        ]
        return "CPU ms/job: " + ", ".join(parts)
