"""The SQLite backend's queries: runs, summaries and timings, read on reader connections.

The read half of :class:`~keyflow.storage_backends.sqlite.SQLiteBackend` (the other
half opens, migrates and writes). The queries themselves are the SQL backends' shared
ones (:mod:`~keyflow.storage_backends.sql_runs`); here is what SQLite does its own way:
case folding beyond ASCII, and telling a change by its data version. Reads go through a
pool of reader connections (WAL lets them run beside the writer); each counts as in
flight until it is back, so ``close()`` waits for none to be.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, func
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from .sql_runs import RunTables, SQLReads, driver_reason
from .sqlite_schema import ROWID, idempotency_table, labels_table, pauses_table, runs_table

__all__ = ["TABLES", "SQLiteReads", "driver_reason", "register_functions"]

TABLES = RunTables(runs_table, idempotency_table, labels_table, pauses_table, ROWID)
"""SQLite's run tables; the rowid is creation order (an upsert keeps a row's rowid)."""


class SQLiteReads(SQLReads):
    """Answers the storage queries from a SQLite file (see the module)."""

    tables = TABLES
    driver_errors = (sqlite3.Error,)
    path: Path
    _watcher: AsyncConnection | None
    """The connection ``change_token`` asks (opened at its first question)."""

    @property
    def place(self) -> str:
        """The database file."""
        return str(self.path)

    def text_match(self, data: ColumnElement[str], pattern: str, text: str) -> ColumnElement[bool]:
        """LIKE, which ignores ASCII case by itself; Python's lower() for the rest."""
        if text.isascii():
            # lower() would cost a copy of every row.
            return data.like(pattern, escape="\\")
        # SQLite folds ASCII only: fold the rest as the other backends do.
        return func.keyflow_lower(data).like(pattern, escape="\\")

    async def change_token(self) -> Hashable:
        """SQLite's data version, as one connection of ours sees it.

        It changes with every commit made on another connection (the writer's, or
        another process's).
        """
        engine = self._reader()
        try:
            with self._in_flight():
                if self._watcher is None:
                    self._watcher = await engine.connect()
                version = (await self._watcher.exec_driver_sql("PRAGMA data_version")).scalar()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise self.read_failed(exc) from exc
        return version


def register_functions(dbapi_connection: Any, _record: Any) -> None:
    """Add keyflow's SQL functions to a new connection (SQLAlchemy's connect event).

    ``keyflow_lower``: Python's lower() for free-text search beyond ASCII (see
    ``SQLiteReads.text_match``).
    """
    dbapi_connection.create_function("keyflow_lower", 1, _lower, deterministic=True)


def _lower(text: object) -> object:
    return text.lower() if isinstance(text, str) else text
