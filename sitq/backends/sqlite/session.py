"""The SQLite backend's :class:`~sitq.store.StoreSession`: SQL of the layers'
own stores (named batches, workflow runs) on the backend's connection, with its
lock, busy retries and wake-ups, and the group-committed writer behind
``write_soon``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sitq.backends.base import NewTask
from sitq.backends.common import translated
from sitq.backends.sqlite import schema as q
from sitq.backends.sqlite.enqueue import FAST_PATH_MAX_ROWS, JOURNAL_SIZE_LIMIT, WalKeeper

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


class GroupWriter:
    """Group commit of single write statements, on the loop thread when the lock is free.

    The scheme of ``enqueue.EnqueueBatcher``, for the same reason: a hop to
    aiosqlite's thread costs more than a small UPDATE, and a workflow makes a few
    per item (5,000 in-process items took twice as long with one hop each). The
    writes of one loop iteration commit together; if another connection holds the
    lock, or every commit must fsync (``durable``), they go to the database thread
    in one transaction. Either way a write returns only once committed.
    """

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend
        self._conn: sqlite3.Connection | None = None
        if not backend.durable:
            self._conn = sqlite3.connect(backend.path, isolation_level=None, timeout=0)
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            self._conn.execute("PRAGMA synchronous = NORMAL")
        self._pending: list[tuple[str, Sequence[Any]]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._wal = WalKeeper(backend._checkpoint, self._resume)
        self._background: set[asyncio.Task[None]] = set()

    async def write(self, sql: str, params: Sequence[Any]) -> None:
        """Return once the statement is committed (with whatever else is pending)."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._pending.append((sql, params))
        self._waiters.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await waiter

    def _flush(self) -> None:
        self._scheduled = False
        if self._wal.paused:
            return  # kept in self._pending until the checkpoint is done (_resume)
        statements, self._pending = self._pending, []
        waiters, self._waiters = self._waiters, []
        if not statements:
            return
        if self._conn is None or len(statements) > FAST_PATH_MAX_ROWS:
            self._spawn(self._flush_slowly(statements, waiters))
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # not if SQLite rolled back itself
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                self._spawn(self._flush_slowly(statements, waiters))
            else:
                _settle(waiters, exc)
            return
        except Exception as exc:
            _settle(waiters, exc)
            return
        _settle(waiters, None)
        blobs = sum(len(p) for _, params in statements for p in params if isinstance(p, bytes))
        self._wal.committed(len(statements), blobs)

    def _resume(self) -> None:
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _flush_slowly(
        self, statements: list[tuple[str, Sequence[Any]]], waiters: list[asyncio.Future[None]]
    ) -> None:
        conn = self._backend._connection()

        async def body() -> None:
            for sql, params in statements:
                await conn.execute(sql, params)

        try:
            await self._backend._transaction(body)
        except Exception as exc:
            _settle(waiters, exc)
            return
        _settle(waiters, None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Finish what is in flight and close the loop-thread connection."""
        await self._wal.close()  # it may hold writes back until it ends
        if self._pending:
            self._flush()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _settle(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)
