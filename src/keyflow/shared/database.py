"""The shared coordinator's connection to PostgreSQL: a pool, transactions, notices.

Every process using a schema in shared mode opens one :class:`SharedDatabase`: an
asyncpg pool for its decisions and claims, and one more connection listening (``LISTEN``)
on the schema's channel. A transaction that changes what other processes should act on
sends one ``NOTIFY`` with a :class:`Notice`, delivered at its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from ..errors import StorageError
from ..records import RunRecord
from ..storage_backends.postgres import DRIVER_ERRORS, KEEPALIVE, row_columns
from ..storage_backends.postgres_tls import ssl_args
from ..storage_backends.rows import loads_row, row_record
from ..storage_backends.sql_runs import driver_reason
from . import sql

logger = logging.getLogger("keyflow.shared")

RETRIED: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
"""Errors after which a transaction is tried again (it changed nothing)."""

TRIES: Final = 5

CLOSE_ERRORS: Final[tuple[type[BaseException], ...]] = (*DRIVER_ERRORS, TimeoutError)
"""What closing the pool can fail with (then it is cut)."""

FAILED: Final = (*DRIVER_ERRORS, asyncpg.InternalClientError)
"""What a request to the database can fail with: the driver's and the network's errors,
and asyncpg's own state errors on a connection cut in the middle of a request."""


@dataclass
class Notice:
    """What one committed transaction tells the other processes."""

    work: bool = False
    """Runs became pending: claimers look."""
    changed: list[str] = field(default_factory=list)
    """Runs that changed (waits and event streams look)."""
    cancel: list[str] = field(default_factory=list)
    """Running runs asked to cancel: the processes leasing them stop their handlers."""
    due: float | None = None
    """The earliest due time among scheduled runs this transaction made or moved."""
    pauses: bool = False
    """A job or a lane was paused or resumed."""
    watch: bool = False
    """A process watches runs change: name the changed runs in notices from now on."""
    missed: bool = False
    """Notices may have been missed (the listener was cut off): look at everything
    again (never sent: this process's own conclusion)."""
    runs: list[RunRecord] = field(default_factory=list)
    """The changed runs themselves, as this process decided them (never sent: told to
    this process's own subscribers when the transaction commits)."""
    joined: set[str] = field(default_factory=set)
    """Of those, the runs this process's triggers joined (never sent, as ``runs``)."""

    def __bool__(self) -> bool:
        return (
            self.work
            or bool(self.changed)
            or bool(self.cancel)
            or self.due is not None
            or self.pauses
            or self.watch
        )

    def add_due(self, due_at: float) -> None:
        """Note a scheduled run's due time."""
        if self.due is None or due_at < self.due:
            self.due = due_at

    def encode(self) -> str:
        """The NOTIFY payload (under PostgreSQL's 8000 bytes: long lists are cut)."""
        data: dict[str, Any] = {}
        if self.work:
            data["w"] = 1
        if self.changed:
            data["e"] = self.changed[:100]
        if self.cancel:
            data["c"] = self.cancel[:100]
        if self.due is not None:
            data["d"] = self.due
        if self.pauses:
            data["p"] = 1
        if self.watch:
            data["a"] = 1
        text = json.dumps(data, separators=(",", ":"))
        if len(text) > 7900:  # ids are short; a huge batch just says "look"
            return json.dumps({"w": 1, "p": 1, "d": self.due})
        return text

    @classmethod
    def decode(cls, payload: str) -> Notice:
        """A notice from a payload; anything unreadable means "look at everything"."""
        try:
            data = json.loads(payload)
            return cls(
                work=bool(data.get("w")),
                changed=[str(x) for x in data.get("e", ())],
                cancel=[str(x) for x in data.get("c", ())],
                due=float(data["d"]) if data.get("d") is not None else None,
                pauses=bool(data.get("p")),
                watch=bool(data.get("a")),
            )
        except (ValueError, TypeError, AttributeError, KeyError):
            return cls(work=True, pauses=True, missed=True)


class Leased:
    """A run read under lock, with its lease (``owner`` None: nobody leases it)."""

    __slots__ = ("entered", "generation", "owner", "record")

    def __init__(self, record: RunRecord, generation: int, owner: str | None, entered: int) -> None:
        self.record = record
        self.generation = generation
        self.owner = owner
        self.entered = entered
        """When the run entered its lane's queue (the database's ``entered``)."""


def entered_order(lanes: Iterable[list[Leased]]) -> dict[str, int]:
    """The order in which these runs entered their lanes' queues, by run id."""
    return {leased.record.id: leased.entered for runs in lanes for leased in runs}


class SharedDatabase:
    """A pool of connections to keyflow's schema, and its notice channel."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        place: str,
        *,
        connect_timeout: float = 10.0,
        pool_size: int = 10,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.place = place
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self.application_name = "keyflow"
        """How its sessions are named in ``pg_stat_activity``."""
        self.sslmode: str | None = None
        """TLS to the server (libpq's ``sslmode``; None: asyncpg's default)."""
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        """This process's name on the leases it holds."""
        self.channel = "keyflow_" + hashlib.sha256(schema.encode()).hexdigest()[:20]
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self.on_notice: list[Callable[[Notice], None]] = []
        """Called for every notice heard (from this process too)."""
        self.on_decided: list[Callable[[Notice], None]] = []
        """Called with a decision of this process (its notice, with the runs it changed
        and joined) once it committed, before the notice comes back: this process's
        subscribers hear it first."""
        self.watched = True
        """Some process watches runs change: notices name the changed runs (see
        :mod:`keyflow.shared.watching`; until known, assume so)."""
        self.watching: Callable[[], bool] = nobody
        """Whether this process watches now: its notices then say so too (a process
        acting on one of them knows of the watch before it acts)."""

    def _settings(self) -> dict[str, str]:
        quoted = '"' + self.schema.replace('"', '""') + '"'
        return {"search_path": quoted, "application_name": self.application_name, **KEEPALIVE}

    async def open_pool(self) -> None:
        """Connect the pool and the listener.

        Raises:
            StorageError: the database cannot be reached.
        """
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=self.connect_timeout * 3,
                server_settings=self._settings(),
                reset=_keep_session,
                **ssl_args(self.sslmode),
            )
            await self._listen()
        except DRIVER_ERRORS as exc:
            await self.close_pool()
            raise StorageError(f"cannot connect to {self.place}: {driver_reason(exc)}") from exc

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout,
            server_settings=self._settings(),
            **ssl_args(self.sslmode),
        )
        await conn.add_listener(self.channel, self._heard)
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        notice = Notice.decode(payload)
        if notice.watch:
            self.watched = True
        self.deliver(notice)

    def deliver(self, notice: Notice) -> None:
        """Hand a notice to every callback (one that raises is logged)."""
        for callback in list(self.on_notice):
            try:
                callback(notice)
            except Exception:
                logger.exception("a keyflow notice callback failed")

    def _listener_lost(self, _conn: object) -> None:
        if self._pool is None:
            return  # closing
        self._listener = None
        self.deliver(Notice(work=True, pauses=True, missed=True))  # whatever was missed

    @property
    def listening(self) -> bool:
        """The listener connection is up."""
        listener = self._listener
        return listener is not None and not listener.is_closed()

    async def relisten(self) -> None:
        """Connect the listener again after it was lost (quietly; the poll covers it)."""
        if self._pool is None or self.listening:
            return
        with contextlib.suppress(*DRIVER_ERRORS):
            await self._listen()
            self.deliver(Notice(work=True, pauses=True, missed=True))

    async def close_pool(self) -> None:
        """Close the listener and the pool. Idempotent."""
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(*DRIVER_ERRORS):
                await listener.close(timeout=2)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except CLOSE_ERRORS:
                pool.terminate()  # requests still in flight: cut them

    @contextlib.asynccontextmanager
    async def transaction(
        self, what: str, notice: Notice | None = None
    ) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction; driver errors become :class:`StorageError`.

        Once it commits, the runs ``notice`` holds are told (:attr:`on_decided`).
        """
        pool = self._open_pool()
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn, conn.transaction():
                yield conn
        except RETRIED:
            raise
        except FAILED as exc:
            raise StorageError(f"{what} in {self.place} failed: {driver_reason(exc)}") from exc
        if notice is not None:
            self.decided(notice)

    def decided(self, notice: Notice) -> None:
        """``notice``'s transaction committed: tell :attr:`on_decided` its runs."""
        if notice.runs:
            for callback in list(self.on_decided):
                callback(notice)

    def _open_pool(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is None:
            raise StorageError(f"{self.place} is not open")
        return pool

    async def execute(self, query: str, *args: object) -> None:
        """One statement, in a transaction of its own (autocommit)."""
        try:
            await self._open_pool().execute(query, *args, timeout=self.connect_timeout * 3)
        except FAILED as exc:
            raise StorageError(f"writing to {self.place} failed: {driver_reason(exc)}") from exc

    async def fetchval(self, query: str, *args: object) -> Any:
        """One value, outside any transaction."""
        return (await self.fetch(query, *args))[0][0]

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        """Rows, outside any transaction."""
        try:
            rows = await self._open_pool().fetch(query, *args, timeout=self.connect_timeout * 3)
        except FAILED as exc:
            raise StorageError(f"reading {self.place} failed: {driver_reason(exc)}") from exc
        return list(rows)

    # -- helpers for transactions --------------------------------------------------

    def decode(self, data: str) -> RunRecord:
        """A run from its stored JSON."""
        return row_record(loads_row(data, self.place), self.place)

    async def lock_lanes(self, conn: asyncpg.Connection, keys: Iterable[str]) -> None:
        """Lock these keys' lanes, in key order."""
        ordered = sorted(set(keys))
        if ordered:
            await conn.execute(sql.LOCK_LANES, ordered)

    async def lane_runs(
        self, conn: asyncpg.Connection, keys: Iterable[str]
    ) -> dict[str, list[Leased]]:
        """The unfinished runs of these (locked) keys, by key, in creation order, locked."""
        found: dict[str, list[Leased]] = {key: [] for key in keys}
        if not found:
            return found
        for data, generation, owner, entered in await conn.fetch(sql.LANE_RUNS, list(found)):
            record = self.decode(data)
            if record.key is not None:
                found.setdefault(record.key, []).append(Leased(record, generation, owner, entered))
        return found

    async def write_runs(
        self,
        conn: asyncpg.Connection,
        new: Iterable[RunRecord] = (),
        changed: Iterable[RunRecord] = (),
        notice: Notice | None = None,
        *,
        released: Iterable[RunRecord] = (),
    ) -> None:
        """Insert the new runs (with their labels), update the changed ones, notify.

        ``released`` are changed runs whose lease is taken back with the change.

        A single row's statement carries the ``NOTIFY`` too (one round trip less on
        the path of every trigger).
        """
        inserts = [_params(record) for record in new]
        updates = [_params(record, update=True) for record in changed]
        labels = [
            (record.id, name, value)
            for record in new
            if record.labels
            for name, value in record.labels.items()
        ]
        payload = self.payload(notice)
        await _each(conn, sql.RELEASE, [_params(record, update=True) for record in released])
        if len(inserts) == 1 and not updates and not labels and payload is not None:
            await conn.execute(sql.INSERT_RUN_NOTIFY, *inserts[0], self.channel, payload)
            return
        await _each(conn, sql.INSERT_RUN, inserts)
        if labels:
            ids, names, values = (list(column) for column in zip(*labels, strict=True))
            await conn.execute(sql.INSERT_LABELS, ids, names, values)
        if len(updates) == 1 and payload is not None:
            await conn.execute(sql.UPDATE_RUN_NOTIFY, *updates[0], self.channel, payload)
            return
        await _each(conn, sql.UPDATE_RUN, updates)
        if notice is not None:
            await self.notify(conn, notice)

    async def notify(self, conn: asyncpg.Connection, notice: Notice) -> None:
        """Send ``notice`` when the transaction commits (nothing if it is empty)."""
        payload = self.payload(notice)
        if payload is not None:
            await conn.execute(sql.NOTIFY, self.channel, payload)

    def payload(self, notice: Notice | None) -> str | None:
        """``notice`` as sent, or None if nobody needs it.

        The changed runs are named only while some process watches (:attr:`watched`).
        """
        if notice is None:
            return None
        watch = notice.watch or self.watching()
        changed = notice.changed if self.watched or watch else []
        if watch is not notice.watch or changed is not notice.changed:
            notice = Notice(notice.work, changed, notice.cancel, notice.due, notice.pauses, watch)
        return notice.encode() if notice else None


def nobody() -> bool:
    """Nobody watches (in this process)."""
    return False


async def _each(conn: asyncpg.Connection, query: str, rows: list[tuple[Any, ...]]) -> None:
    """Run ``query`` for each of ``rows`` (one row: a plain execute, cheaper than many)."""
    if len(rows) == 1:
        await conn.execute(query, *rows[0])
    elif rows:
        await conn.executemany(query, rows)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing: a pool connection needs no reset between uses.

    keyflow keeps no session state on them (its locks are transaction locks; only the
    listener, apart, listens). This saves a round trip per transaction.
    """


def _params(record: RunRecord, *, update: bool = False) -> tuple[Any, ...]:
    c: Mapping[str, Any] = row_columns(record)
    if update:
        return (
            c["id"],
            c["status"],
            c["finished_at"],
            c["data"],
            c["due_at"],
            c["started_at"],
            c["attempt"],
            c["trigger_count"],
        )
    return (
        c["id"],
        c["job"],
        c["concurrency_key"],
        c["status"],
        c["created_at"],
        c["finished_at"],
        c["data"],
        c["due_at"],
        c["started_at"],
        c["attempt"],
        c["trigger_count"],
    )


def insert_params(record: RunRecord) -> tuple[Any, ...]:
    """The parameters of :data:`sql.INSERT_RUN` (and the first eleven of its notifying form)."""
    return _params(record)


def update_params(record: RunRecord) -> tuple[Any, ...]:
    """The parameters of :data:`sql.UPDATE_RUN` (and the first eight of the lease writes)."""
    return _params(record, update=True)
