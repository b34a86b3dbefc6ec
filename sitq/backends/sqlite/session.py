"""The SQLite backend's :class:`~sitq.store.StoreSession`: SQL of the layers'
own stores (named batches, workflow runs) on the backend's connection, with its
lock, busy retries and wake-ups, and the group-committed writer behind
``write_soon``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sitq.backends.base import NewTask
from sitq.backends.common import translated
from sitq.backends.sqlite import schema as q
from sitq.backends.sqlite.enqueue import FAST_PATH_MAX_ROWS, GroupCommit

if TYPE_CHECKING:
    from sitq.backends.sqlite.backend import SQLiteBackend

T = TypeVar("T")


class SQLiteSession:
    """SQL on a :class:`SQLiteBackend`'s database (see ``StoreSession``)."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend
        self._writer: GroupWriter | None = None

    @property
    def dialect(self) -> Literal["sqlite"]:
        """Always "sqlite"."""
        return "sqlite"

    def now(self) -> float:
        """The backend's clock."""
        return self._backend.now()

    def describe(self) -> str:
        """The database file's path."""
        return self._backend.describe()

    def array(self, values: Sequence[Any]) -> str:
        """A list as one JSON text parameter (queries read it with ``json_each``)."""
        return json.dumps(list(values))

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of a SELECT."""
        with translated(self._backend):
            return await self._backend._read(sql, params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement, atomic on its own, retried while locked."""
        conn = self._backend._connection()
        with translated(self._backend):
            cursor = await self._backend._write(lambda: conn.execute(sql, params))
        return int(cursor.rowcount)

    async def transaction(self, body: Callable[[_Transaction], Awaitable[T]]) -> T:
        """``body`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, retried while locked."""
        backend = self._backend
        conn = backend._connection()
        inserted: list[bool] = []

        async def attempt() -> T:
            inserted.clear()
            return await body(_Transaction(conn, inserted))

        with translated(backend):  # a layer's own SitqError (BatchSizeChanged) goes as it is
            value = await backend._transaction(attempt)
        if inserted:
            backend._wakeup.notify("tasks")
        return value

    async def write_soon(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One write, group-committed with the others of this loop iteration."""
        self._backend._connection()
        if self._writer is None:
            self._writer = GroupWriter(self._backend)
        with translated(self._backend):
            try:
                await self._writer.write(sql, params)
            except sqlite3.OperationalError as exc:
                raise self._backend._write_error(exc) from exc

    async def close(self) -> None:
        """Commit the writes in flight and close the writer's connection."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()


class _Transaction:
    """Statements inside one of :meth:`SQLiteSession.transaction`'s transactions."""

    def __init__(self, conn: Any, inserted: list[bool]) -> None:
        self._conn = conn
        self._inserted = inserted

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""
        return list(await self._conn.execute_fetchall(sql, params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""
        return int((await self._conn.execute(sql, params)).rowcount)

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` (the workers are woken after the commit)."""
        if tasks:
            await self._conn.executemany(q.INSERT_TASK, list(tasks))  # rows bind as they are
            self._inserted.append(True)


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

    async def write(self, sql: str, params: Sequence[Any]) -> None:
        """Return once the statement is committed (with whatever else is pending)."""
        await self.submit([(sql, params)])

    async def _commit_slowly(self, statements: list[Statement]) -> None:
        conn = self._backend._connection()

        async def body() -> None:
            for sql, params in statements:
                await conn.execute(sql, params)

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
