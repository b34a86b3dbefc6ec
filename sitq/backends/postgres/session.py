"""The PostgreSQL backend's :class:`~sitq.store.StoreSession`: SQL of the layers'
own stores (named batches, workflow runs) on the backend's pool, with ``{s}``
in a query replaced by the backend's schema."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sitq.backends.base import NewTask
from sitq.backends.common import translated
from sitq.backends.postgres import schema as q

if TYPE_CHECKING:
    from sitq.backends.postgres.backend import PostgresBackend

T = TypeVar("T")


class PostgresSession:
    """SQL on a :class:`PostgresBackend`'s database (see ``StoreSession``)."""

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend

    @property
    def dialect(self) -> Literal["postgres"]:
        """Always "postgres"."""
        return "postgres"

    def now(self) -> float:
        """The backend's clock."""
        return self._backend.now()

    def describe(self) -> str:
        """The server and database (no password)."""
        return self._backend.describe()

    def array(self, values: Sequence[Any]) -> list[Any]:
        """A list as one array parameter."""
        return list(values)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of a SELECT."""
        backend = self._backend
        with translated(backend):
            async with backend._acquire() as conn:
                return list(await conn.fetch(backend._q(sql), *params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement; the rows it changed."""
        backend = self._backend
        with translated(backend):
            async with backend._acquire() as conn:
                return _row_count(await conn.execute(backend._q(sql), *params))

    async def transaction(self, body: Callable[[_Transaction], Awaitable[T]]) -> T:
        """``body`` in one transaction on one connection."""
        backend = self._backend
        with translated(backend):  # a layer's own SitqError (BatchSizeChanged) goes as it is
            async with backend._acquire() as conn, conn.transaction():
                return await body(_Transaction(backend, conn))

    async def write_soon(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One write, committed on its own: PostgreSQL commits concurrent
        statements from the pool's connections in parallel, so there is nothing
        to gather."""
        await self.execute(sql, params)


class _Transaction:
    """Statements inside one of :meth:`PostgresSession.transaction`'s transactions."""

    def __init__(self, backend: PostgresBackend, conn: Any) -> None:
        self._backend = backend
        self._conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""
        return list(await self._conn.fetch(self._backend._q(sql), *params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""
        return _row_count(await self._conn.execute(self._backend._q(sql), *params))

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks``; their NOTIFY reaches the workers at the commit."""
        if tasks:
            columns = [list(column) for column in zip(*tasks, strict=True)]
            await self._conn.execute(
                self._backend._q(q.INSERT_TASKS), *columns, self._backend._channel
            )


def _row_count(status: str) -> int:
    """The row count of a command status ("UPDATE 3", "INSERT 0 1", "DELETE 0")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0
