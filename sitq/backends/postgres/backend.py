"""Scale-out backend: PostgreSQL through asyncpg (``pip install 'sitq[postgres]'``).

Same contract as the SQLite backend, for workers on many hosts: claims take
rows with ``FOR UPDATE SKIP LOCKED`` (claimers never wait on each other),
batches are single statements over arrays, and wake-ups travel by
LISTEN/NOTIFY on a connection of their own that reconnects by itself, always
backed by polling. Times are unix seconds from each process's clock, so keep
hosts' clocks in sync (NTP): a lease is judged by the claiming host's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from sitq.errors import ConfigurationError

    raise ConfigurationError(
        "the PostgreSQL backend needs asyncpg: pip install 'sitq[postgres]'"
    ) from exc

from sitq.backends.base import DEAF_POLL, Lease, NewTask, Outcome, WakeKind
from sitq.backends.borrowed import DriverConnection
from sitq.backends.common import SQLBackend, Transaction, lease_key, limit_room_allowed
from sitq.backends.postgres import borrowed
from sitq.backends.postgres import schema as q
from sitq.backends.postgres.schema import SQL
from sitq.errors import ConfigurationError, DatabaseError

T = TypeVar("T")

logger = logging.getLogger("sitq.postgres")

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")
_MIGRATION_LOCK = 0x5171_0001  # pg_advisory_xact_lock key: one migrator at a time


class PostgresBackend(SQLBackend):
    """Tasks in a PostgreSQL database.

    :param dsn: ``postgresql://user:password@host:port/database``; a
        ``sitq_schema=NAME`` query parameter sets ``schema``.
    :param schema: the schema holding sitq's tables (created if missing), so
        several apps can share one server.
    :param create: create the schema and tables if missing (the CLI passes False
        so a wrong URL is an error rather than a new empty queue).
    :param min_size, max_size: the connection pool's bounds.
    """

    SQL, SCHEMA_VERSION, MIGRATIONS = SQL, q.SCHEMA_VERSION, q.MIGRATIONS
    dialect = "postgres"
    _IN_ARRAY = "{0} = ANY(${1}::text[])"
    _PARAM = "${0}"
    # octet_length() of a TOASTed value reads its pointer only, not the value.
    _LENGTH = "octet_length"
    # A unique key taken meanwhile; a deadlock with a parent's finish (see lock_tasks).
    _RETRY_AGAIN_ON = (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError)

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        create: bool = True,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        super().__init__()
        parts = urlsplit(dsn)
        if parts.netloc.count("@") > 1:
            # The driver splits at the first @ and would blame the host.
            raise ConfigurationError(
                "the PostgreSQL URL has more than one @ before the host: percent-encode "
                "an @ in the user name or password as %40 (for example "
                "postgresql://user:p%40ss@host/db)"
            )
        if "@" in parts.path:
            raise ConfigurationError(
                "the PostgreSQL URL cannot be read: percent-encode special characters "
                "in the password (for example / as %2F, @ as %40)"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigurationError(
                "the PostgreSQL URL's port is not a number (if the password holds / ? or #, "
                "percent-encode them)"
            ) from None
        query = parse_qsl(parts.query, keep_blank_values=True)
        url_schema = next((value for key, value in query if key == "sitq_schema"), None)
        query = [(key, value) for key, value in query if key != "sitq_schema"]
        schema = schema or url_schema or "sitq"
        if not _SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"schema name {schema!r} is not allowed: use letters, digits and _ "
                "(starting with a letter or _)"
            )
        self._dsn = urlunsplit(parts._replace(query=urlencode(query)))
        self.schema = schema
        self.create = create
        self._host = parts.hostname or "localhost"
        self._port = port or 5432
        self._user = parts.username or ""
        self._database = parts.path.lstrip("/") or self._user
        self._min_size, self._max_size = min_size, max_size
        self._channel = f"sitq_{schema}"
        #: The LISTEN connection's application_name, to find it in pg_stat_activity.
        self.listener_name = f"sitq-listen-{schema}"
        self._sql: dict[str, str] = {}
        self._pool: asyncpg.Pool | None = None
        self._events: dict[WakeKind, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None
        self.listener_connected = asyncio.Event()

    def describe(self) -> str:
        """Where the data lives, without the password."""
        return (
            f"PostgreSQL database {self._database!r} at {self._host}:{self._port} "
            f"(schema {self.schema})"
        )

    def _q(self, template: str) -> str:
        sql = self._sql.get(template)
        if sql is None:
            # Only the placeholder: other braces (a JSON literal, a regex) stay as they are.
            sql = self._sql[template] = template.replace("{s}", f'"{self.schema}"')
        return sql

    # -- connection -------------------------------------------------------

    def _bind_loop(self) -> None:
        super()._bind_loop()
        self._events = {}
        self.listener_connected = asyncio.Event()

    async def _open(self) -> None:
        if self._pool is not None:
            return
        self._pool = await self._create_pool()
        try:
            await self._migrate()
        except BaseException as exc:
            pool, self._pool = self._pool, None
            await pool.close()
            if isinstance(exc, asyncpg.PostgresError):
                raise DatabaseError(f"cannot set up {self.describe()}: {exc}") from exc
            raise

    async def _create_pool(self, size: int | None = None) -> asyncpg.Pool:
        """A pool of ``min_size`` to ``max_size`` connections (of exactly ``size``)."""
        where = f"{self._host}:{self._port}"
        try:
            return await asyncpg.create_pool(
                self._dsn,
                min_size=size or self._min_size,
                max_size=size or self._max_size,
                timeout=10,
                # sitq's statements are short; JIT compiling one (which the planner
                # may choose for the small, never-analyzed control tables) costs
                # far more than running it.
                server_settings={"jit": "off"},
                reset=_keep_session,
            )
        except (
            asyncpg.InvalidPasswordError,
            asyncpg.InvalidAuthorizationSpecificationError,
        ) as exc:
            raise DatabaseError(
                f"PostgreSQL at {where} refused user {self._user!r} ({exc}); check the "
                "user and password in the URL"
            ) from exc
        except asyncpg.InvalidCatalogNameError as exc:
            raise DatabaseError(
                f"PostgreSQL at {where} has no database {self._database!r}; create it or "
                "fix the URL"
            ) from exc
        except (OSError, asyncio.TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise DatabaseError(
                f"cannot reach PostgreSQL at {where} ({reason}); check that the server "
                "runs and that the URL's host and port are right"
            ) from exc
        except asyncpg.exceptions.ClientConfigurationError as exc:
            raise ConfigurationError(
                f"the URL of {self.describe()} has a setting asyncpg does not accept ({exc}); "
                "fix it in the URL's query string"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise DatabaseError(f"cannot use {self.describe()}: {exc}") from exc

    async def _migrate(self) -> None:
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(SQL.lock_migrations, _MIGRATION_LOCK)
            has_meta = await conn.fetchval(SQL.has_meta_table, f'"{self.schema}".sitq_meta')
            version = 0
            if has_meta:
                value = await conn.fetchval(self._q(SQL.read_schema_version))
                version = int(value) if value else 0
            elif not self.create:
                raise DatabaseError(
                    f"no sitq schema in {self.describe()}: check --db / $SITQ_DB, or create "
                    "it with `sitq init --db URL`"
                )
            if version < q.SCHEMA_VERSION:
                await conn.execute(self._q(SQL.create_schema))
            await self._upgrade(_PostgresTransaction(self, conn), version, self.describe())

    async def _stored_version(self) -> int | None:
        """In a read-only transaction on a connection of its own."""
        pool = await self._create_pool(size=1)
        try:
            async with pool.acquire() as conn, conn.transaction(readonly=True):
                if not await conn.fetchval(SQL.has_meta_table, f'"{self.schema}".sitq_meta'):
                    return None
                value = await conn.fetchval(self._q(SQL.read_schema_version))
                return int(value) if value else 0
        except asyncpg.PostgresError as exc:
            raise DatabaseError(f"cannot read {self.describe()}: {exc}") from exc
        finally:
            await pool.close()

    async def _shut(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _acquire(self) -> Any:
        if self._pool is None:
            raise self._not_connected()
        return self._pool.acquire()

    async def _notify(self, conn: Any, kind: WakeKind) -> None:
        await conn.execute(SQL.notify, self._channel, kind)

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        async with self._acquire() as conn:
            return list(await conn.fetch(self._q(sql), *params))

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._acquire() as conn:
            return _row_count(await conn.execute(self._q(sql), *params))

    async def _transaction(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        async with self._acquire() as conn, conn.transaction():
            return await body(_PostgresTransaction(self, conn))

    async def _snapshot(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        async with (
            self._acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await body(_PostgresTransaction(self, conn))

    def _array(self, values: Sequence[Any]) -> list[Any]:
        return list(values)

    def _rows(self, rows: Sequence[Sequence[Any]]) -> tuple[list[Any], ...]:
        return tuple(list(column) for column in zip(*rows, strict=True))

    def _window_query(
        self, source: str, position: tuple[Any, ...], size: int, batch_id: str | None
    ) -> tuple[str, Sequence[Any]]:
        sql, params = super()._window_query(source, position, size, batch_id)
        if source in ("tasks", "running") and position[0] == "~":
            # No string sorts after every id in every collation: no bound on page one.
            return sql.replace("{after}", ""), (size,)
        return sql.replace("{after}", "AND id < $2"), params

    # -- producer side ----------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` in one statement and wake the workers."""
        if not tasks:
            return
        columns = [list(column) for column in zip(*tasks, strict=True)]
        async with self._acquire() as conn:
            await conn.execute(self._q(SQL.insert_tasks), *columns, self._channel)

    # -- worker side ------------------------------------------------------

    async def _claim_ready(
        self, worker_id: str, queues: Sequence[str], room: int, now: float, expires: float
    ) -> list[Any]:
        sql = self._q(SQL.claim_ready_one_queue if len(queues) == 1 else SQL.claim_ready)
        async with self._acquire() as conn:
            return list(await conn.fetch(sql, worker_id, now, expires, list(queues), room))

    async def _claim_limited(
        self, worker_id: str, queues: Sequence[str], room: int, now: float, expires: float
    ) -> list[Any]:
        """Claim tasks under limits. The limit rows stay locked until commit, so
        claimers on every host take turns and each counts what the last committed.
        A read first keeps that lock away while no limited task can start."""
        rooms = await self._fetch(SQL.limit_room, (now,))
        if not any(limit_room_allowed(row, room) > 0 for row in rooms):
            return []
        taken: list[Any] = []
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(self._q(SQL.lock_limits))
            for row in await conn.fetch(self._q(SQL.limit_room), now):
                key, per_seconds = row[0], row[3]
                allowed = min(room - len(taken), limit_room_allowed(row, room))
                if allowed <= 0:
                    continue
                claimed = await conn.fetch(
                    self._q(SQL.claim_limited), worker_id, now, expires, list(queues), allowed, key
                )
                if claimed and per_seconds is not None:
                    await conn.execute(self._q(SQL.record_starts), key, len(claimed))
                    await conn.execute(self._q(SQL.forget_starts), key, per_seconds)
                taken += claimed
        return taken

    async def finish(
        self,
        items: Sequence[tuple[Lease, Outcome]],
        started: Sequence[tuple[Lease, float]] = (),
    ) -> list[bool]:
        """Record outcomes in one statement (and start marks of tasks still running
        in the same transaction); each applies only if its lease holds."""
        if not items and not started:
            return []
        leases = [lease for lease, _ in items]
        # Each outcome takes its task's start mark; what is left marks tasks still running.
        starts = {lease.task_id: when for lease, when in started}
        started_at = [starts.pop(lease.task_id, None) for lease in leases]
        running = [mark for mark in started if mark[0].task_id in starts] if starts else []
        queued = [outcome.status == "queued" for _, outcome in items]
        # "tasks": a retry is queued, or a limit has room again.
        wake = any(queued) or any(lease.limited for lease in leases)
        kinds = (["results"] if not all(queued) else []) + (["tasks"] if wake else [])
        async with self._acquire() as conn, contextlib.AsyncExitStack() as stack:
            if running:
                await stack.enter_async_context(conn.transaction())
                marks = [(*lease_key(lease), when) for lease, when in running]
                await conn.execute(self._q(SQL.mark_started), *self._rows(marks))
            if not items:
                return []
            outcomes = [
                (*lease_key(lease), o.status, o.result, o.error, o.traceback, o.retry_at)
                for lease, o in items
            ]
            rows = await conn.fetch(
                self._q(SQL.finish),
                self.now(),
                self.default_result_ttl,
                *_nulls_as_null(self._rows(outcomes)),
                kinds,
                self._channel,
                *_nulls_as_null((started_at,)),
            )
        applied = {tuple(row[:3]) for row in rows}
        return [lease_key(lease) in applied for lease in leases]

    # -- the application's own transaction ---------------------------------

    def _adapt(self, connection: Any) -> DriverConnection:
        return borrowed.adapt(self, connection)

    def _blocking_driver(self, connection: Any) -> bool:
        return borrowed.is_blocking(connection)

    async def _borrow_reference(self) -> object:
        meta = f'"{self.schema}".sitq_meta'
        rows = await self._fetch(SQL.connection_identity, (meta,))
        database, port, started, _ = rows[0]
        return (database, str(port), str(started))

    async def _borrow_check(self, adapter: DriverConnection, reference: object) -> None:
        await borrowed.check_same_database(self, adapter, reference)

    # -- wake-ups -----------------------------------------------------------

    async def wait_for_change(self, kind: WakeKind, timeout: float) -> None:
        """Wait for a NOTIFY about ``kind`` from any process, or ``timeout``."""
        if self._pool is None:
            raise self._not_connected()
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_forever())
        if kind == "tasks" and not self.listener_connected.is_set():
            timeout = min(timeout, DEAF_POLL)  # deaf meanwhile: poll instead (see Backend)
        event = self._events.setdefault(kind, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        event = self._events.get(payload)  # type: ignore[call-overload]
        if event is not None:
            event.set()

    async def _listen_forever(self) -> None:
        """Keep one LISTEN connection open, reconnecting after any loss."""
        pause = 0.1
        failures = 0
        reconnecting = False
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=10,
                    server_settings={"application_name": self.listener_name},
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(self._channel, self._on_notify)
                self.listener_connected.set()
                pause, failures = 0.1, 0
                # Anything may have happened while we were deaf: before the first
                # LISTEN too (a waiter started then), and between two connections.
                for event in self._events.values():
                    event.set()
                if reconnecting:
                    logger.info("LISTEN connection to %s back", self.describe())
                reconnecting = True
                while not lost.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5.0)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=5)  # a silent loss shows here
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log = logger.warning if failures >= 3 else logger.info
                log("LISTEN connection to %s lost (%s); reconnecting", self.describe(), exc)
            finally:
                self.listener_connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


class _PostgresTransaction:
    """Statements in one of :meth:`PostgresBackend._transaction`'s transactions."""

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
                self._backend._q(SQL.insert_tasks), *columns, self._backend._channel
            )

    async def wake(self, kind: WakeKind) -> None:
        """NOTIFY ``kind``, delivered at the commit."""
        await self._backend._notify(self._conn, kind)


def _nulls_as_null(columns: Sequence[list[Any]]) -> list[list[Any] | None]:
    """Columns for a statement that unnests arrays side by side: one that holds
    only NULLs goes as a NULL array (unnest pads a shorter array with NULLs), so
    a batch of plain successes does not encode its empty error, traceback, retry
    and start columns element by element (asyncpg checks each element's type)."""
    return [None if all(value is None for value in column) else column for column in columns]


async def _keep_session(_conn: Any) -> None:
    """What a pool connection needs on its way back to the pool: nothing more than
    asyncpg's own rollback of an open transaction. Its default also sends a reset
    query (unlock advisory locks, close cursors, UNLISTEN, RESET ALL), one more
    round trip for every claim and finish; sitq's statements leave none of those
    behind (its advisory locks are transaction-scoped, its LISTEN has a connection
    of its own, and it sets nothing for the session after connecting)."""


def _row_count(status: str) -> int:
    """The row count of a command status ("UPDATE 3", "INSERT 0 1", "DELETE 0")."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0
