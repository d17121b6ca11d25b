"""The demo's stored settings, its state files and the natural order of names."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import keyflow
from keyflow.demo.natural import natural_key
from keyflow.demo.settings import StorySettings, settle
from keyflow.demo.store import reset, world_path
from keyflow.demo.world import World, WorldConfig, WorldVersionError


def test_names_sort_naturally() -> None:
    keys = ["process_queue:org10", "crawl:org0:repo10", "crawl:org0:repo4", "process_queue:org2"]
    assert sorted(keys, key=natural_key) == [
        "crawl:org0:repo4",
        "crawl:org0:repo10",
        "process_queue:org2",
        "process_queue:org10",
    ]


def test_the_world_lists_repositories_naturally() -> None:
    world = World(WorldConfig(orgs=1, repos=12))
    try:
        world.create(0.0)
        assert world.repos("org0", 0.0)[-3:] == ["repo9", "repo10", "repo11"]
    finally:
        world.close()


def test_a_stored_story_keeps_its_settings_and_names_what_it_ignores() -> None:
    stored = StorySettings(orgs=3, crawl_minutes=(2.0, 7.0)).stored()
    settings, ignored = settle({"orgs": 5, "seed": 7, "crawl_minutes": (1.0, 2.0)}, stored)
    assert settings == StorySettings()
    assert ignored == [
        "--orgs 5 (the story has 3)",
        "--crawl-minutes 1 2 (the story has 2 7)",
    ]
    fresh, none = settle({"orgs": 5}, None)
    assert fresh.orgs == 5
    assert none == []


def test_a_world_file_of_another_version_asks_for_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "old.world.db"
    World(WorldConfig(), path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 1")
    with pytest.raises(WorldVersionError, match="--reset"):
        World(WorldConfig(), path)


async def test_reset_refuses_while_a_demo_writes_the_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert world_path(url) == str(tmp_path / "demo.world.db")
    kf = keyflow.Keyflow(storage=url)
    await kf.start()
    try:
        with pytest.raises(keyflow.StorageLockedError):
            reset(url)
        assert (tmp_path / "demo.db").exists()
    finally:
        await kf.stop()
    assert tmp_path / "demo.db" in reset(url)
    assert not (tmp_path / "demo.db").exists()
