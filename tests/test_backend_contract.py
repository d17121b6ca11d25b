"""keyflow's own backends pass the StorageBackend contract (keyflow.backend_contract)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyflow.backend_contract import StorageBackendContract
from keyflow.storage_backends import MemoryBackend, StorageBackend, open_backend
from keyflow.storage_backends.jsonfile import JSONFileBackend
from keyflow.storage_backends.sqlite import SQLiteBackend

from .pg import drop_schemas, need_postgres, postgres_url, schema_for


class TestMemoryBackend(StorageBackendContract):
    durable = False

    def make_backend(self, place: Path, retention: int) -> StorageBackend:
        return MemoryBackend(retention=retention)


class TestSQLiteBackend(StorageBackendContract):
    def make_backend(self, place: Path, retention: int) -> StorageBackend:
        return SQLiteBackend(place / "runs.db", retention=retention)


class TestJSONFileBackend(StorageBackendContract):
    def make_backend(self, place: Path, retention: int) -> StorageBackend:
        return JSONFileBackend(place / "runs.json", retention=retention)


class TestPostgreSQLBackend(StorageBackendContract):
    """The store's contract, on the single-writer mode: the shared mode reads through the
    same code, and writes through its coordinator (``tests/test_shared*.py``)."""

    @pytest.fixture(autouse=True)
    def _schema(self, tmp_path: Path) -> Iterator[None]:
        need_postgres()
        yield
        drop_schemas(schema_for(tmp_path))

    def make_backend(self, place: Path, retention: int) -> StorageBackend:
        return open_backend(postgres_url(place) + "&mode=single", retention=retention)
