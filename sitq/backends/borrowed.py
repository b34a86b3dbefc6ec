"""Enqueueing on a connection the application holds, inside its open transaction.

An :class:`SQLBackend` lends its own transaction bodies (the ones ``enqueue``,
``enqueue_unique`` and ``enqueue_dependent`` run in its transactions) to an
adapter over the application's connection: each backend package adapts its
dialect's drivers (``sqlite3`` and ``aiosqlite``; ``asyncpg`` and ``psycopg``) to
the :class:`DriverConnection` protocol below, so the rows written are exactly a
normal enqueue's. Nothing here begins or commits the application's transaction
on its own: sitq's statements run inside it, in a savepoint, so an enqueue that
fails leaves nothing of itself and the transaction stays usable.

Wake-ups: PostgreSQL's NOTIFY is transactional (sent at the commit, dropped by a
rollback). SQLite's datagrams are not: the adapter only records them, and the
application wakes the workers after its commit (``TaskQueue.wake_workers``, or
the enqueuer's context manager); otherwise a worker finds the task at its next
idle poll.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sitq.backends.base import BorrowedConnection, Dependency, NewTask, text_task_ids
from sitq.errors import ConfigurationError

if TYPE_CHECKING:
    from sitq.backends.common import SQLBackend, Transaction

T = TypeVar("T")

#: The savepoint each write runs in.
SAVEPOINT = "sitq_enqueue"


class DriverConnection(Protocol):
    """An application's connection as a backend's transaction bodies use it: the
    ``Transaction`` statements (in the backend's own SQL dialect and parameter
    style), and what a borrowed connection needs to know of the driver."""

    #: What the connection is, for messages ("an asyncpg connection").
    kind: str
    #: A blocking driver (its calls never suspend).
    blocking: bool

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` as the backend's enqueue does."""

    async def wake(self, kind: Any) -> None:
        """Wake the waiters on ``kind`` at the commit (or record it: SQLite)."""

    def closed(self) -> bool:
        """The connection is closed."""

    def in_transaction(self) -> bool:
        """A transaction is open on the connection."""

    def begins_itself(self) -> bool:
        """The driver opens a transaction at the first statement (sqlite3's and
        psycopg's default), so a write with none open is still the application's."""

    async def begin(self) -> None:
        """Open a transaction (none is open)."""

    async def commit(self) -> None:
        """Commit the transaction open on the connection."""

    async def rollback(self) -> None:
        """Roll back the transaction open on the connection."""


async def driver_connection(connection: Any) -> Any:
    """The driver's own connection under a SQLAlchemy ``AsyncConnection`` (or
    ``Connection``); any other object as it is."""
    if type(connection).__module__.split(".")[0] != "sqlalchemy":
        return connection
    if getattr(connection, "closed", False):
        raise ConfigurationError(
            f"the SQLAlchemy {type(connection).__name__} given to queue.using() is closed: "
            "nothing was enqueued; pass an open connection, inside its transaction"
        )
    get_raw = getattr(connection, "get_raw_connection", None)
    if get_raw is not None:  # an AsyncConnection
        raw = await get_raw()
    else:  # a Connection: its pooled DBAPI connection
        raw = getattr(connection, "connection", None)
    driver = getattr(raw, "driver_connection", None)
    if driver is None:
        raise ConfigurationError(
            f"cannot reach the driver's connection under {type(connection).__name__}: "
            "pass `(await conn.get_raw_connection()).driver_connection` instead"
        )
    return driver


class SQLBorrowed(BorrowedConnection):
    """A borrowed connection of an :class:`SQLBackend` (see the module's doc)."""

    def __init__(self, backend: SQLBackend, connection: Any, blocking: bool) -> None:
        self._backend = backend
        self._connection = connection
        self.blocking = blocking
        self._reference: object = None
        self._adapter: DriverConnection | None = None

    def now(self) -> float:
        """The backend's clock."""
        return self._backend.now()

    def describe(self) -> str:
        """The backend's database."""
        return self._backend.describe()

    async def prepare(self) -> None:
        """Read, once, what the connection must match (the backend's database)."""
        if self._reference is None:
            self._reference = await self._backend._borrow_reference()

    async def _driver(self) -> DriverConnection:
        """The adapter over the connection, checked once: a supported driver, open,
        on the backend's database."""
        if self._adapter is None:
            adapter = self._backend._adapt(await driver_connection(self._connection))
            self._refuse_closed(adapter)
            await self.prepare()
            await self._backend._borrow_check(adapter, self._reference)
            self._adapter = adapter
        self._refuse_closed(self._adapter)
        return self._adapter

    def _refuse_closed(self, adapter: DriverConnection) -> None:
        if adapter.closed():
            raise ConfigurationError(
                f"the {adapter.kind} given to queue.using() is closed: nothing was "
                "enqueued; pass an open connection, inside its transaction"
            )

    async def _in_transaction(self) -> DriverConnection:
        adapter = await self._driver()
        if not adapter.in_transaction():
            if not adapter.begins_itself():
                raise ConfigurationError(
                    f"the {adapter.kind} given to queue.using() has no transaction open, "
                    "so the task would be committed at once, alone: open your transaction "
                    "first (asyncpg: `async with conn.transaction():`), or use "
                    "queue.enqueue for a task of its own; nothing was enqueued"
                )
            await adapter.begin()  # as the driver itself would before a write
        return adapter

    async def _write(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        """``body`` in a savepoint of the application's transaction."""
        adapter = await self._in_transaction()
        await adapter.execute(f"SAVEPOINT {SAVEPOINT}")
        try:
            value = await body(adapter)
        except BaseException:
            # Undo this write only; the error raised is the write's own, not one of
            # the undo (a connection lost meanwhile fails both).
            with contextlib.suppress(Exception):
                if not adapter.closed():
                    await adapter.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
                    await adapter.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
            raise
        await adapter.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
        return value

    def task_ids(self, count: int) -> list[str] | None:
        """The backend's own: text ids, or where it reserves ids, ones from the
        block the queue reserved and committed before (None when it runs short)."""
        return self._backend.task_ids(count)

    async def reserve_task_ids(self, count: int) -> list[str]:
        """``count`` ids reserved in the application's transaction (text ids where
        the backend makes them): the queue's own connection could not write while
        the application holds the write lock. They roll back with it, and may then
        be handed out again: an id from an enqueue that was rolled back names no
        task, and later may name another one."""
        if not self._backend.reserves_ids():
            return text_task_ids(count)
        return await self._write(self._backend.reserve_body(count))

    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Write ``tasks`` in the application's transaction."""
        if tasks:

            async def body(tx: Transaction) -> None:
                await tx.insert_tasks(tasks)

            await self._write(body)

    async def enqueue_unique(self, task: NewTask) -> tuple[str, bool]:
        """Insert ``task`` unless a queued or running task holds its key (one that
        this transaction wrote, or one committed)."""
        body = self._backend.unique_body(task)
        while True:
            task_id, created = await self._write(body)
            if task_id is not None:
                return task_id, created
            # The holder finished between the two statements: try again.

    async def enqueue_dependent(
        self, tasks: Sequence[NewTask], dependencies: Sequence[Dependency]
    ) -> None:
        """Write ``tasks``, waiting for their parents, in the application's transaction."""
        if tasks:
            await self._write(self._backend.dependent_body(tasks, dependencies))

    async def begin(self) -> None:
        """Open a transaction unless one is open."""
        adapter = await self._driver()
        if not adapter.in_transaction():
            await adapter.begin()

    async def commit(self) -> None:
        """Commit the application's transaction."""
        await (await self._driver()).commit()

    async def rollback(self) -> None:
        """Roll the application's transaction back."""
        adapter = self._adapter
        if adapter is not None and not adapter.closed():
            await adapter.rollback()
