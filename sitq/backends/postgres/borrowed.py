"""The application's PostgreSQL connections (``asyncpg``, ``psycopg`` 3) as a
:class:`~sitq.backends.borrowed.DriverConnection`: the PostgreSQL backend's own
statements run on them, inside the application's transaction. Their NOTIFY is
transactional: the workers are woken at the application's commit, never on a
rollback.

asyncpg takes the backend's ``$n`` parameters as they are; psycopg's are
``%(name)s``, so each statement is rewritten once (and ``%`` doubled).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sitq.backends.base import NewTask, WakeKind
from sitq.backends.borrowed import DriverConnection
from sitq.backends.postgres.schema import SQL
from sitq.errors import ConfigurationError

if TYPE_CHECKING:
    from sitq.backends.postgres.backend import PostgresBackend

SUPPORTED = (
    "an asyncpg connection, a psycopg 3 connection (AsyncConnection or Connection), "
    "or a SQLAlchemy (Async)Connection over either"
)
_DOLLAR = re.compile(r"\$(\d+)")


def adapt(backend: PostgresBackend, connection: Any) -> DriverConnection:
    """The adapter over ``connection``; a ConfigurationError listing the supported
    drivers for anything else."""
    module = type(connection).__module__.split(".")[0]
    if module == "asyncpg" and hasattr(connection, "is_in_transaction"):
        return AsyncpgConnection(backend, connection)
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and module == "psycopg":
        if isinstance(connection, psycopg.AsyncConnection):
            return PsycopgConnection(backend, connection, blocking=False)
        if isinstance(connection, psycopg.Connection):
            return PsycopgConnection(backend, connection, blocking=True)
    raise ConfigurationError(
        f"queue.using() on a PostgreSQL queue takes {SUPPORTED}; got "
        f"{type(connection).__module__}.{type(connection).__qualname__}"
    )


def is_blocking(connection: Any) -> bool:
    """A psycopg ``Connection`` (not async)."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(connection, psycopg.Connection)


class AsyncpgConnection:
    """An asyncpg connection (or a pool's proxy of one)."""

    kind = "asyncpg connection"
    blocking = False

    def __init__(self, backend: PostgresBackend, conn: Any) -> None:
        self._backend = backend
        self._conn = conn
        self._transaction: Any = None

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""
        return list(await self._conn.fetch(self._backend._q(sql), *params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""
        return row_count(await self._conn.execute(self._backend._q(sql), *params))

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks``; their NOTIFY reaches the workers at the commit."""
        if tasks:
            columns = [list(column) for column in zip(*tasks, strict=True)]
            await self._conn.execute(
                self._backend._q(SQL.insert_tasks), *columns, self._backend._channel
            )

    async def wake(self, kind: WakeKind) -> None:
        """NOTIFY ``kind``, delivered at the commit."""
        await self.execute(SQL.notify, (self._backend._channel, kind))

    def closed(self) -> bool:
        """The connection is closed."""
        return bool(self._conn.is_closed())

    def in_transaction(self) -> bool:
        """A transaction is open."""
        return bool(self._conn.is_in_transaction())

    def begins_itself(self) -> bool:
        """asyncpg commits each statement outside ``conn.transaction()``."""
        return False

    async def begin(self) -> None:
        """Open a transaction (committed or rolled back by this adapter)."""
        self._transaction = self._conn.transaction()
        await self._transaction.start()

    async def commit(self) -> None:
        """Commit the transaction ``begin`` opened."""
        await self._own_transaction().commit()
        self._transaction = None

    async def rollback(self) -> None:
        """Roll back the transaction ``begin`` opened."""
        if self._transaction is not None:
            transaction, self._transaction = self._transaction, None
            await transaction.rollback()

    def _own_transaction(self) -> Any:
        if self._transaction is None:
            raise ConfigurationError(
                "`async with queue.using(conn)` on an asyncpg connection already in a "
                "transaction cannot commit it (its `conn.transaction()` does): enqueue "
                "with `queue.using(conn).enqueue(...)` inside your own block instead"
            )
        return self._transaction


class PsycopgConnection:
    """A psycopg 3 connection, async or blocking (its calls then never suspend)."""

    def __init__(self, backend: PostgresBackend, conn: Any, *, blocking: bool) -> None:
        self._backend = backend
        self._conn = conn
        self.blocking = blocking
        self.kind = "psycopg connection" if blocking else "psycopg AsyncConnection"
        self._sql: dict[str, str] = {}

    def _statement(self, sql: str, params: Sequence[Any]) -> tuple[str, dict[str, Any]]:
        text = self._sql.get(sql)
        if text is None:
            text = self._backend._q(sql).replace("%", "%%")
            text = self._sql[sql] = _DOLLAR.sub(r"%(p\1)s", text)
        return text, {f"p{i}": value for i, value in enumerate(params, 1)}

    async def _run(self, sql: str, params: Sequence[Any]) -> Any:
        cursor = self._conn.execute(*self._statement(sql, params))
        return cursor if self.blocking else await cursor

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""
        cursor = await self._run(sql, params)
        if cursor.description is None:
            return []
        rows = cursor.fetchall()
        return list(rows if self.blocking else await rows)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""
        return int((await self._run(sql, params)).rowcount)

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks``; their NOTIFY reaches the workers at the commit."""
        if tasks:
            columns = [list(column) for column in zip(*tasks, strict=True)]
            await self._run(SQL.insert_tasks, (*columns, self._backend._channel))

    async def wake(self, kind: WakeKind) -> None:
        """NOTIFY ``kind``, delivered at the commit."""
        await self._run(SQL.notify, (self._backend._channel, kind))

    def closed(self) -> bool:
        """The connection is closed."""
        return bool(self._conn.closed)

    def in_transaction(self) -> bool:
        """A transaction is open (or failed, waiting for its rollback)."""
        return str(self._conn.info.transaction_status.name) != "IDLE"

    def begins_itself(self) -> bool:
        """psycopg begins before the first statement unless in autocommit mode."""
        return not self._conn.autocommit

    async def begin(self) -> None:
        """Open a transaction."""
        await self._run("BEGIN", ())

    async def commit(self) -> None:
        """Commit."""
        done = self._conn.commit()
        if not self.blocking:
            await done

    async def rollback(self) -> None:
        """Roll back."""
        done = self._conn.rollback()
        if not self.blocking:
            await done


def row_count(status: str) -> int:
    """The row count of a command status ("UPDATE 3", "INSERT 0 1", "DELETE 0")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def check_same_database(
    backend: PostgresBackend, adapter: DriverConnection, reference: object
) -> None:
    """Refuse ``adapter`` unless it reaches the backend's database on the same
    server (``reference``: the backend's own ``connection_identity`` row) with
    sitq's tables in its schema; the error names both, without a password."""
    meta = f'"{backend.schema}".sitq_meta'
    rows = await adapter.fetch(SQL.connection_identity, (meta,))
    database, port, started, has_tables = rows[0]
    expected = tuple(reference) if isinstance(reference, tuple) else ()
    if (database, str(port), str(started)) != expected[:3]:
        where = f"PostgreSQL database {database!r} (server port {port}"
        where += ")" if database != expected[0] else ", another server)"
        raise ConfigurationError(
            f"the {adapter.kind} given to queue.using() is to {where}, but the queue's is "
            f"{backend.describe()}: enqueue on a connection to the queue's database (or use "
            "queue.enqueue); nothing was enqueued"
        )
    if not has_tables:
        raise ConfigurationError(
            f"no sitq tables in schema {backend.schema!r} of database {database!r}: "
            "nothing was enqueued"
        )
