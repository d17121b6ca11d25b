"""A simulated GitHub and the demo app's own tables: the ground truth of the story.

Organisations own repositories; pull requests open on each repository at random times
(each repository has its own random stream, so the world is the same whatever order
the jobs look at it in). Each *pipeline* (the crawl → process app with one coalesce
strategy) keeps its own state of every PR: a crawl copies the PRs opened so far into
the pipeline's *raw* store (``fetched_at``); its ``process`` moves raw PRs into the
*aggregate* (``processed_at``). Two pipelines on one world see the very same PRs, which
is what makes the side-by-side fair. Everything lives in SQLite: a file for the live
demo (``keyflow-demo.world.db``, so a restart continues), memory for ``--compare`` and
the tests.
"""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import KeyflowError
from .natural import natural_key

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of a world file this demo reads (1: before pipelines)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS repos (
    org TEXT NOT NULL, repo TEXT NOT NULL, added_at REAL NOT NULL, added_live INTEGER NOT NULL,
    next_pr_at REAL NOT NULL, prs INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (org, repo));
CREATE TABLE IF NOT EXISTS prs (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, repo TEXT NOT NULL, opened_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS prs_repo ON prs (org, repo, opened_at);
CREATE TABLE IF NOT EXISTS pipeline_prs (
    pipeline TEXT NOT NULL, id TEXT NOT NULL, org TEXT NOT NULL, repo TEXT NOT NULL,
    fetched_at REAL NOT NULL, fetched_by TEXT NOT NULL, processed_at REAL, processed_by TEXT,
    PRIMARY KEY (pipeline, id));
CREATE INDEX IF NOT EXISTS pipeline_raw ON pipeline_prs (pipeline, org, processed_at);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

HOUR = 3600.0


class WorldVersionError(KeyflowError):
    """The world file was written by another version of the demo: start over with --reset."""


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """The shape of the simulated GitHub."""

    orgs: int = 3
    repos: int = 4
    """Repositories per organisation at the start."""
    prs_per_hour: float = 6.0
    """Mean PRs opened per repository per simulated hour."""
    backlog: int = 5
    """PRs a repository that a user adds already has."""
    history: float = HOUR
    """Simulated seconds of PRs the first repositories have when the story starts."""
    seed: int = 7


class World:
    """The simulated GitHub plus each pipeline's raw and aggregate state, in one SQLite file."""

    def __init__(self, config: WorldConfig, path: str | Path = ":memory:") -> None:
        self.config = config
        self.db = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit txns
        version: int = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables and version != SCHEMA_VERSION:
            self.db.close()
            raise WorldVersionError(
                f"{path} was written by another version of the demo: "
                "start over with `keyflow demo --reset`"
            )
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._streams: dict[tuple[str, str], random.Random] = {}

    @property
    def is_new(self) -> bool:
        """True when nothing was stored yet (a restart finds its world)."""
        count: int = self.db.execute("SELECT count(*) FROM repos").fetchone()[0]
        return count == 0

    def create(self, now: float) -> None:
        """The organisations and their first repositories, with PRs of the recent past."""
        since = now - self.config.history
        for o in range(self.config.orgs):
            for r in range(self.config.repos):
                self._insert_repo(f"org{o}", f"repo{r}", since, live=False)

    def orgs(self) -> list[str]:
        """The organisations, in natural order (org2 before org10)."""
        orgs = [o for (o,) in self.db.execute("SELECT DISTINCT org FROM repos")]
        return sorted(orgs, key=natural_key)

    def repos(self, org: str, now: float) -> list[str]:
        """The repositories of ``org`` that exist at ``now``, in natural order."""
        rows = self.db.execute("SELECT repo FROM repos WHERE org = ? AND added_at <= ?", (org, now))
        return sorted((repo for (repo,) in rows), key=natural_key)

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
                (f"{org}/{repo}#{n + 1}", org, repo, now - HOUR + n),
            )
        self.db.execute("COMMIT")

    def _stream(self, org: str, repo: str) -> random.Random:
        stream = self._streams.get((org, repo))
        if stream is None:
            stream = self._streams[org, repo] = random.Random(f"{self.config.seed}/{org}/{repo}")
        return stream

    def _gap(self, stream: random.Random) -> float:
        return stream.expovariate(self.config.prs_per_hour / HOUR)

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

    def fetch(self, pipeline: str, org: str, repos: list[str], now: float, run_id: str) -> int:
        """A crawl of ``pipeline`` copies the PRs of ``repos`` opened by now to its raw store."""
        self.db.execute("BEGIN")
        fetched = 0
        for repo in repos:
            self._open_prs(org, repo, now)
            fetched += self.db.execute(
                "INSERT INTO pipeline_prs (pipeline, id, org, repo, fetched_at, fetched_by)"
                " SELECT ?, id, org, repo, ?, ? FROM prs"
                " WHERE org = ? AND repo = ? AND opened_at <= ?"
                " AND id NOT IN (SELECT id FROM pipeline_prs WHERE pipeline = ?)",
                (pipeline, now, run_id, org, repo, now, pipeline),
            ).rowcount
        self.db.execute("COMMIT")
        return fetched

    def open_until(self, now: float) -> None:
        """Let every repository's PRs open up to ``now`` (for the final count)."""
        self.db.execute("BEGIN")
        for org, repo in self.db.execute("SELECT org, repo FROM repos").fetchall():
            self._open_prs(org, repo, now)
        self.db.execute("COMMIT")

    def raw(self, pipeline: str, org: str) -> list[str]:
        """PRs ``pipeline`` fetched and has not processed yet: what its ``process`` takes on."""
        rows = self.db.execute(
            "SELECT id FROM pipeline_prs WHERE pipeline = ? AND org = ? AND processed_at IS NULL"
            " ORDER BY id",
            (pipeline, org),
        )
        return [pr for (pr,) in rows]

    def aggregate(self, pipeline: str, prs: list[str], now: float, run_id: str) -> None:
        """``pipeline``'s ``process`` moves ``prs`` into its aggregate."""
        self.db.executemany(
            "UPDATE pipeline_prs SET processed_at = ?, processed_by = ?"
            " WHERE pipeline = ? AND id = ?",
            [(now, run_id, pipeline, pr) for pr in prs],
        )

    def remember(self, name: str, value: float) -> None:
        """Keep a number across restarts (the simulated time, the next events)."""
        self.db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def recall(self, name: str) -> float | None:
        """A number kept by :meth:`remember`."""
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else float(row[0])

    def count(self, name: str, by: int = 1) -> None:
        """Add ``by`` to the number kept under ``name`` (starting from 0)."""
        self.db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def store_settings(self, settings: dict[str, object]) -> None:
        """Keep the settings the story was started with (JSON values)."""
        self.db.executemany(
            "INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)",
            [(name, json.dumps(value)) for name, value in settings.items()],
        )

    def stored_settings(self) -> dict[str, object]:
        """The settings kept by :meth:`store_settings`."""
        rows = self.db.execute("SELECT name, value FROM settings")
        return {name: json.loads(value) for name, value in rows}

    def close(self) -> None:
        """Close the database."""
        self.db.close()
