"""keyflow's own backends pass the StorageBackend contract (keyflow.backend_contract)."""

from __future__ import annotations

from pathlib import Path

from keyflow.backend_contract import StorageBackendContract
from keyflow.storage_backends import MemoryBackend, StorageBackend
from keyflow.storage_backends.jsonfile import JSONFileBackend
from keyflow.storage_backends.sqlite import SQLiteBackend


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
