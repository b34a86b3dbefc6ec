"""Enqueueing in the application's own transaction: what ``TaskQueue.using`` returns.

A :class:`ConnectionEnqueuer` is an :class:`~sitq.enqueuer.Enqueuer` (the same
``enqueue``, ``enqueue_many``, ``with_options``, ``signature`` and ``submit``)
whose tasks are written on a connection the application holds, inside its open
transaction, by the backend's own statements (``Backend.borrow``): serialized
and signed by the queue's serializer, exactly as a normal enqueue's rows. They
exist for workers once the application commits, and never if it rolls back.

Wake-ups: on PostgreSQL the NOTIFY is part of the transaction. On SQLite it
cannot be: call :meth:`ConnectionEnqueuer.wake_workers` (or the queue's) after
the commit, or let the enqueuer's context manager commit and wake; otherwise an
idle worker finds the task at its next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sitq.backends.base import Backend, BorrowedConnection, TaskWriter
from sitq.enqueuer import Alongside, Enqueuer
from sitq.errors import ConfigurationError
from sitq.serialization import Serializer


class ConnectionEnqueuer(Enqueuer):
    """Enqueue on the application's connection, in its transaction
    (``queue.using(connection)``); ``with_options`` returns one on the same
    connection. As a context manager (``async with``, or ``with`` for a blocking
    driver on a SyncTaskQueue) it opens a transaction unless one is open, commits
    it at the end of the block and then wakes the workers, or rolls it back if
    the block raises.
    """

    def __init__(
        self,
        backend: Callable[[], Backend],
        serializer: Serializer,
        borrowed: BorrowedConnection,
    ) -> None:
        super().__init__()
        self.serializer = serializer
        self._queue_backend = backend  # the queue's backend, refusing it unconnected
        self._borrowed = borrowed
        #: ``prepare`` has run (a SyncTaskQueue's face then skips the trip to the loop).
        self.prepared = False

    @property
    def blocking(self) -> bool:
        """The connection's driver blocks (sqlite3, psycopg's Connection)."""
        return self._borrowed.blocking

    def _backend_checked(self) -> Backend:
        raise ConfigurationError(
            "this is an enqueuer on the application's connection: only enqueue, "
            "enqueue_many and submit write there"
        )

    def _root_writer(self) -> TaskWriter:
        self._queue_backend()  # refuses a queue not connected
        return self._borrowed

    async def prepare(self) -> None:
        """Read what the connection is checked against (the queue's database), on
        the queue's own connections; the first write does it if not done."""
        self._queue_backend()
        await self._borrowed.prepare()
        self.prepared = True

    async def enqueue_many(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        /,
        *,
        alongside: Alongside | None = None,
    ) -> list[str]:
        """Like :meth:`TaskQueue.enqueue_many`, in the application's transaction."""
        if alongside is not None:
            raise ConfigurationError(
                "a layer's own rows (alongside) cannot be written on the application's "
                "connection: use the queue itself"
            )
        return await super().enqueue_many(fn, items)

    def wake_workers(self) -> None:
        """Wake the idle workers now: call it after your commit on SQLite (on
        PostgreSQL the commit has woken them already; this does nothing)."""
        self._queue_backend().wake_workers()

    async def begin(self) -> None:
        """Open a transaction on the connection unless one is open."""
        self._queue_backend()
        await self._borrowed.prepare()
        await self._borrowed.begin()

    async def commit(self) -> None:
        """Commit the application's transaction, then wake the workers."""
        await self._borrowed.commit()
        self.wake_workers()

    async def rollback(self) -> None:
        """Roll the application's transaction back."""
        await self._borrowed.rollback()

    async def __aenter__(self) -> ConnectionEnqueuer:
        await self.begin()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()
