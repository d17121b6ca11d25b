"""A simulated GitHub and the demo app's own tables: the ground truth of the story.

Organisations own repositories; pull requests open on each repository at random times
(each repository has its own random stream, so the world is the same whatever order
the jobs look at it in). A crawl copies the PRs opened so far into the *raw* store;
``process`` moves raw PRs into the *aggregate*. Everything lives in SQLite (a file for
the live demo, so a restart continues; memory for ``--compare`` and the tests).
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS repos (
    org TEXT NOT NULL, repo TEXT NOT NULL, added_at REAL NOT NULL, added_live INTEGER NOT NULL,
    next_pr_at REAL NOT NULL, prs INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (org, repo));
CREATE TABLE IF NOT EXISTS prs (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, repo TEXT NOT NULL, opened_at REAL NOT NULL,
    fetched_at REAL, fetched_by TEXT, processed_at REAL, processed_by TEXT);
CREATE INDEX IF NOT EXISTS prs_raw ON prs (org, processed_at, fetched_at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """The shape of the simulated GitHub."""

    orgs: int = 3
    repos: int = 4
    """Repositories per organisation at the start."""
    prs_per_hour: float = 6.0
    """Mean PRs opened per repository per simulated hour."""
    backlog: int = 5
    """PRs an added repository already has."""
    seed: int = 7


class World:
    """The simulated GitHub plus the raw and aggregate tables, in one SQLite database."""

    def __init__(self, config: WorldConfig, path: str | Path = ":memory:") -> None:
        self.config = config
        self.db = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit txns
        self.db.executescript(SCHEMA)
        self._streams: dict[tuple[str, str], random.Random] = {}

    @property
    def is_new(self) -> bool:
        """True when nothing was stored yet (a restart finds its world)."""
        count: int = self.db.execute("SELECT count(*) FROM repos").fetchone()[0]
        return count == 0

    def create(self, now: float) -> None:
        """The organisations and their first repositories, as of ``now``."""
        for o in range(self.config.orgs):
            for r in range(self.config.repos):
                self._insert_repo(f"org{o}", f"repo{r}", now, live=False)

    def orgs(self) -> list[str]:
        """The organisations."""
        return [o for (o,) in self.db.execute("SELECT DISTINCT org FROM repos ORDER BY org")]

    def repos(self, org: str, now: float) -> list[str]:
        """The repositories of ``org`` that exist at ``now``."""
        rows = self.db.execute(
            "SELECT repo FROM repos WHERE org = ? AND added_at <= ? ORDER BY repo", (org, now)
        )
        return [repo for (repo,) in rows]

    def add_repo(self, org: str, now: float) -> str:
        """A user adds a repository (with a backlog of PRs) to ``org``."""
        count = self.db.execute("SELECT count(*) FROM repos WHERE org = ?", (org,)).fetchone()
        repo = f"repo{count[0]}"
        self._insert_repo(org, repo, now, live=True)
        return repo

    def _insert_repo(self, org: str, repo: str, now: float, *, live: bool) -> None:
        stream = self._stream(org, repo)
        backlog = self.config.backlog if live else 0
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO repos (org, repo, added_at, added_live, next_pr_at, prs)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (org, repo, now, int(live), now + self._gap(stream), backlog),
        )
        for n in range(backlog):
            self.db.execute(
                "INSERT INTO prs (id, org, repo, opened_at) VALUES (?, ?, ?, ?)",
                (f"{org}/{repo}#{n + 1}", org, repo, now - 3600 + n),
            )
        self.db.execute("COMMIT")

    def _stream(self, org: str, repo: str) -> random.Random:
        stream = self._streams.get((org, repo))
        if stream is None:
            stream = self._streams[org, repo] = random.Random(f"{self.config.seed}/{org}/{repo}")
        return stream

    def _gap(self, stream: random.Random) -> float:
        return stream.expovariate(self.config.prs_per_hour / 3600.0)

    def _open_prs(self, org: str, repo: str, now: float) -> None:
        # PRs appear lazily: each repo's own stream fills in what opened up to ``now``.
        row = self.db.execute(
            "SELECT next_pr_at, prs FROM repos WHERE org = ? AND repo = ?", (org, repo)
        ).fetchone()
        next_at, count = row
        stream = self._stream(org, repo)
        while next_at <= now:
            count += 1
            self.db.execute(
                "INSERT INTO prs (id, org, repo, opened_at) VALUES (?, ?, ?, ?)",
                (f"{org}/{repo}#{count}", org, repo, next_at),
            )
            next_at += self._gap(stream)
        self.db.execute(
            "UPDATE repos SET next_pr_at = ?, prs = ? WHERE org = ? AND repo = ?",
            (next_at, count, org, repo),
        )

    def fetch(self, org: str, repos: list[str], now: float, run_id: str) -> int:
        """A crawl copies the PRs of ``repos`` opened by ``now`` into the raw store."""
        self.db.execute("BEGIN")
        fetched = 0
        for repo in repos:
            self._open_prs(org, repo, now)
            fetched += self.db.execute(
                "UPDATE prs SET fetched_at = ?, fetched_by = ? WHERE org = ? AND repo = ?"
                " AND fetched_at IS NULL AND opened_at <= ?",
                (now, run_id, org, repo, now),
            ).rowcount
        self.db.execute("COMMIT")
        return fetched

    def open_until(self, now: float) -> None:
        """Let every repository's PRs open up to ``now`` (for the final count)."""
        self.db.execute("BEGIN")
        for org, repo in self.db.execute("SELECT org, repo FROM repos").fetchall():
            self._open_prs(org, repo, now)
        self.db.execute("COMMIT")

    def raw(self, org: str) -> list[str]:
        """PRs fetched and not yet processed: what a ``process`` run takes on."""
        rows = self.db.execute(
            "SELECT id FROM prs WHERE org = ? AND processed_at IS NULL"
            " AND fetched_at IS NOT NULL ORDER BY id",
            (org,),
        )
        return [pr for (pr,) in rows]

    def aggregate(self, prs: list[str], now: float, run_id: str) -> None:
        """``process`` moves ``prs`` into the aggregate."""
        self.db.executemany(
            "UPDATE prs SET processed_at = ?, processed_by = ? WHERE id = ?",
            [(now, run_id, pr) for pr in prs],
        )

    def remember(self, name: str, value: float) -> None:
        """Keep a number across restarts (the simulated time, the next events)."""
        self.db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def recall(self, name: str) -> float | None:
        """A number kept by :meth:`remember`."""
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else float(row[0])

    def close(self) -> None:
        """Close the database."""
        self.db.close()
