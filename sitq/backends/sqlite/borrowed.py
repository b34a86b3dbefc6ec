"""The application's SQLite connections (``sqlite3``, ``aiosqlite``) as a
:class:`~sitq.backends.borrowed.DriverConnection`: the SQLite backend's own
statements run on them, inside the application's transaction.

Wake-ups are recorded, not sent: SQLite's datagrams are not transactional, so
the application sends them after its commit (``TaskQueue.wake_workers``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

from sitq.backends.base import NewTask, WakeKind
from sitq.backends.borrowed import DriverConnection
from sitq.backends.sqlite.schema import SQL
from sitq.errors import ConfigurationError

SUPPORTED = (
    "a sqlite3.Connection, an aiosqlite.Connection, or a SQLAlchemy (Async)Connection over either"
)


def adapt(connection: Any) -> DriverConnection:
    """The adapter over ``connection``; a ConfigurationError listing the supported
    drivers for anything else."""
    if isinstance(connection, sqlite3.Connection):
        return Sqlite3Connection(connection)
    module = type(connection).__module__.split(".")[0]
    if module == "aiosqlite" and hasattr(connection, "execute_fetchall"):
        return AiosqliteConnection(connection)
    raise ConfigurationError(
        f"queue.using() on an SQLite queue takes {SUPPORTED}; got "
        f"{type(connection).__module__}.{type(connection).__qualname__}"
    )


class _SQLiteDriver:
    """What both SQLite drivers share: the transaction state of the underlying
    sqlite3 connection, and the wake-ups to send after the commit."""

    kind = "SQLite connection"
    blocking = True

    def __init__(self, connection: Any) -> None:
        self._conn = connection
        self.woken: set[WakeKind] = set()

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` (NewTask rows bind as they are)."""
        if tasks:
            await self._executemany(SQL.insert_task, tasks)
            self.woken.add("tasks")

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def wake(self, kind: WakeKind) -> None:
        """Recorded: sent by the application after its commit."""
        self.woken.add(kind)

    def closed(self) -> bool:
        """A closed connection refuses even to say whether it is in a transaction."""
        try:
            self._conn.in_transaction  # noqa: B018 - raises once closed
        except (sqlite3.ProgrammingError, ValueError):
            return True
        return False

    def in_transaction(self) -> bool:
        """A transaction is open."""
        return bool(self._conn.in_transaction)

    def begins_itself(self) -> bool:
        """sqlite3's default (``isolation_level`` not None) begins before a write."""
        autocommit = getattr(self._conn, "autocommit", -1)  # Python 3.12+: PEP 249 mode
        if autocommit is True:
            return False
        return autocommit is False or self._conn.isolation_level is not None


class Sqlite3Connection(_SQLiteDriver):
    """A ``sqlite3.Connection`` (blocking: its calls never suspend)."""

    kind = "sqlite3 connection"

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""
        return list(self._conn.execute(sql, params).fetchall())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""
        return int(self._conn.execute(sql, params).rowcount)

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    async def begin(self) -> None:
        """BEGIN IMMEDIATE: the write lock now, so a read then a write in the
        application's transaction cannot fail on a snapshot gone stale."""
        self._conn.execute("BEGIN IMMEDIATE")

    async def commit(self) -> None:
        """Commit."""
        self._conn.commit()

    async def rollback(self) -> None:
        """Roll back."""
        self._conn.rollback()


class AiosqliteConnection(_SQLiteDriver):
    """An ``aiosqlite.Connection``: the same statements, on its thread."""

    kind = "aiosqlite connection"
    blocking = False

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""
        return list(await self._conn.execute_fetchall(sql, params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""
        cursor = await self._conn.execute(sql, params)
        try:
            return int(cursor.rowcount)
        finally:
            await cursor.close()

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await (await self._conn.executemany(sql, rows)).close()

    async def begin(self) -> None:
        """BEGIN IMMEDIATE (see ``Sqlite3Connection.begin``)."""
        await (await self._conn.execute("BEGIN IMMEDIATE")).close()

    async def commit(self) -> None:
        """Commit."""
        await self._conn.commit()

    async def rollback(self) -> None:
        """Roll back."""
        await self._conn.rollback()


async def check_same_database(adapter: DriverConnection, path: str, describe: str) -> None:
    """Refuse ``adapter`` unless its main database is the file at ``path`` and holds
    sitq's tables; the error names both files."""
    rows = await adapter.fetch("PRAGMA database_list")
    main = next((row[2] for row in rows if row[1] == "main"), "")
    if not main:
        raise ConfigurationError(
            f"the {adapter.kind} given to queue.using() is to an in-memory or temporary "
            f"database, but the queue's is {describe}: connect to that file; nothing "
            "was enqueued"
        )
    try:
        same = os.path.samefile(main, path)
    except OSError:
        same = os.path.realpath(main) == os.path.realpath(path)
    if not same:
        raise ConfigurationError(
            f"the {adapter.kind} given to queue.using() is to sqlite database {main}, but "
            f"the queue's is {describe}: enqueue on a connection to the queue's file "
            "(or use queue.enqueue); nothing was enqueued"
        )
    if not await adapter.fetch(SQL.has_meta_table):
        raise ConfigurationError(
            f"{main} has no sitq tables: connect the queue to it first; nothing was enqueued"
        )
