"""The SQLite backend's store session: the shared one (``BackendSession``), with
``write_soon`` group-committed."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sitq.backends.common import BackendSession, Transaction, translated
from sitq.backends.sqlite.enqueue import FAST_PATH_MAX_ROWS, GroupCommit
from sitq.store import StoreTransaction

if TYPE_CHECKING:
    from sitq.backends.sqlite.backend import SQLiteBackend

T = TypeVar("T")


class SQLiteSession(BackendSession):
    """SQL on a :class:`SQLiteBackend`'s database (see ``StoreSession``)."""

    def __init__(self, backend: SQLiteBackend) -> None:
        super().__init__(backend)
        self._sqlite = backend
        self._writer: GroupWriter | None = None

    async def transaction(self, body: Callable[[StoreTransaction], Awaitable[T]]) -> T:
        """``body`` in one transaction, each statement a hop to the database thread
        (a layer's body may await more than its statements)."""
        with translated(self._sqlite):
            return await self._sqlite._stepwise_transaction(body)

    async def write_soon(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One write, group-committed with the others of this loop iteration."""
        self._sqlite._connection()
        if self._writer is None:
            self._writer = GroupWriter(self._sqlite)
        with translated(self._sqlite):
            try:
                await self._writer.submit([(sql, params)])
            except sqlite3.OperationalError as exc:
                raise self._sqlite._write_error(exc) from exc

    async def close(self) -> None:
        """Commit the writes in flight and close the writer's connection."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()


#: A write statement and its parameters.
Statement = tuple[str, Sequence[Any]]


class GroupWriter(GroupCommit[Statement]):
    """Group commit of single write statements (``write_soon``): the scheme of
    enqueues (``enqueue.GroupCommit``), for the same reason: a hop to aiosqlite's
    thread costs more than a small UPDATE, and a workflow makes a few per item
    (5,000 in-process items took twice as long with one hop each). The writes of
    one loop iteration commit together, also when they go to the database thread
    (another connection holds the lock, or every commit must fsync: ``durable``).
    """

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend
        super().__init__(
            backend.path,
            fast=not backend.durable,
            commit_fast=_commit_statements,
            slow_path=self._commit_slowly,
            checkpoint=backend._checkpoint,
            weigh=_weigh,
            flush_max=FAST_PATH_MAX_ROWS,
            group_slow=True,
        )

    async def _commit_slowly(self, statements: list[Statement]) -> None:
        async def body(tx: Transaction) -> None:
            for sql, params in statements:
                await tx.execute(sql, params)

        await self._backend._transaction(body)


def _commit_statements(conn: sqlite3.Connection, statements: list[Statement]) -> None:
    """Run ``statements`` in one transaction on ``conn`` (rolled back on any error)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # not if SQLite rolled back itself (a full disk)
            conn.execute("ROLLBACK")
        raise


def _weigh(statements: list[Statement]) -> tuple[int, int]:
    """Statements and their bytes parameters, as the WAL grows by them."""
    blobs = sum(len(p) for _, params in statements for p in params if isinstance(p, bytes))
    return len(statements), blobs
