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
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from sitq.errors import ConfigurationError

    raise ConfigurationError(
        "the PostgreSQL backend needs asyncpg: pip install 'sitq[postgres]'"
    ) from exc

from sitq.backends import base
from sitq.backends.base import (
    LOST_LEASE_LIMIT,
    RECLAIM_INTERVAL,
    Backend,
    ClaimedTask,
    Lease,
    LimitRecord,
    NewTask,
    Outcome,
    ScheduleRecord,
    TaskRecord,
    WakeKind,
    WorkerRecord,
    claimed_tasks,
    task_columns,
    task_record,
    worker_record,
)
from sitq.backends.common import Every, LoopBinding, listing_page, listing_window_size
from sitq.backends.postgres import schema as q
from sitq.backends.postgres.schema import SQL
from sitq.backends.postgres.session import PostgresSession
from sitq.errors import ConfigurationError, DatabaseError, NotConnected, SchemaVersionError

logger = logging.getLogger("sitq.postgres")

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")
_MIGRATION_LOCK = 0x5171_0001  # pg_advisory_xact_lock key: one migrator at a time


class PostgresBackend(Backend):
    """Tasks in a PostgreSQL database.

    :param dsn: ``postgresql://user:password@host:port/database``; a
        ``sitq_schema=NAME`` query parameter sets ``schema``.
    :param schema: the schema holding sitq's tables (created if missing), so
        several apps can share one server.
    :param create: create the schema and tables if missing (the CLI passes False
        so a wrong URL is an error rather than a new empty queue).
    :param min_size, max_size: the connection pool's bounds.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        create: bool = True,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
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
        self._users = 0
        self._open_lock = asyncio.Lock()
        self._loop_binding = LoopBinding()
        self._reclaim = Every(RECLAIM_INTERVAL)
        self._limits_check = Every(RECLAIM_INTERVAL)  # _has_limits is re-read then
        self._has_limits = False
        self._events: dict[WakeKind, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None
        self.listener_connected = asyncio.Event()

    def describe(self) -> str:
        """Where the data lives, without the password."""
        return (
            f"PostgreSQL database {self._database!r} at {self._host}:{self._port} "
            f"(schema {self.schema})"
        )

    def now(self) -> float:
        """Unix seconds (this host's clock)."""
        return time.time()

    # -- unique jobs, limits, pauses, schedules --------------------------------

    async def enqueue_unique(self, task: NewTask) -> tuple[str, bool]:
        """Insert ``task`` unless a queued or running task holds its unique key."""
        async with self._acquire() as conn:
            while True:
                async with conn.transaction():
                    inserted = await conn.fetchval(self._q(SQL.insert_unique_task), *task)
                    if inserted is not None:
                        await self._notify(conn, "tasks")
                        return inserted, True
                    existing = await conn.fetchval(self._q(SQL.existing_unique), task.unique_key)
                if existing is not None:
                    return existing, False
                # The holder finished between the two statements: try again.

    async def set_limit(self, limit: LimitRecord) -> None:
        """Create or replace a limit."""
        async with self._acquire() as conn:
            await conn.execute(
                self._q(SQL.set_limit),
                limit.key,
                limit.max_running,
                limit.max_starts,
                limit.per_seconds,
            )
        self._limits_check.reset()

    async def delete_limit(self, key: str) -> bool:
        """Remove a limit."""
        async with self._acquire() as conn:
            async with conn.transaction():
                status: str = await conn.execute(self._q(SQL.delete_limit), key)
                await conn.execute(self._q(SQL.unlimit_tasks), key)
                await conn.execute(self._q(SQL.delete_limit_starts), key)
            await self._notify(conn, "tasks")
        return status != "DELETE 0"

    async def list_limits(self) -> list[LimitRecord]:
        """Every limit, by key."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(SQL.list_limits))
        return [LimitRecord(*row) for row in rows]

    async def pause_queue(self, queue: str) -> None:
        """Stop claims from ``queue``."""
        async with self._acquire() as conn:
            await conn.execute(self._q(SQL.pause_queue), queue, self.now())

    async def resume_queue(self, queue: str) -> bool:
        """Let claims take from ``queue`` again, and wake the workers."""
        async with self._acquire() as conn:
            status: str = await conn.execute(self._q(SQL.resume_queue), queue)
            await self._notify(conn, "tasks")
        return status != "DELETE 0"

    async def paused_queues(self) -> list[str]:
        """The paused queues."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(SQL.paused_queues))
        return [row[0] for row in rows]

    async def advance_schedule(
        self,
        name: str,
        spec: str,
        due: float,
        next_run_at: float | None,
        task: NewTask | None,
        *,
        first: bool = False,
    ) -> bool:
        """Record the run due at ``due`` and enqueue ``task``, once across workers."""
        sql = self._q(SQL.add_schedule if first else SQL.advance_schedule)
        async with self._acquire() as conn, conn.transaction():
            advanced = await conn.fetchval(sql, name, spec, due, next_run_at, self.now())
            if advanced is None:
                return False
            if task is not None:
                columns = [[value] for value in task]
                await conn.execute(self._q(SQL.insert_tasks), *columns, self._channel)
        return True

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(SQL.list_schedules))
        return [ScheduleRecord(*row) for row in rows]

    def _q(self, template: str) -> str:
        sql = self._sql.get(template)
        if sql is None:
            sql = self._sql[template] = template.format(s=f'"{self.schema}"')
        return sql

    # -- connection -------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool and create or migrate the schema. Reference-counted.

        One event loop at a time: the pool, its lock and the wake-up events
        belong to the loop that connected (see ``LoopBinding``).
        """
        if self._loop_binding.bind(self.describe()):
            self._open_lock = asyncio.Lock()
            self._events = {}
            self.listener_connected = asyncio.Event()
        async with self._open_lock:
            self._users += 1
            if self._pool is not None:
                return
            try:
                self._pool = await self._create_pool()
                try:
                    await self._migrate()
                except asyncpg.PostgresError as exc:
                    raise DatabaseError(f"cannot set up {self.describe()}: {exc}") from exc
            except BaseException:
                self._users -= 1
                if self._pool is not None:
                    await self._pool.close()
                    self._pool = None
                if not self._users:
                    self._loop_binding.release()
                raise

    async def _create_pool(self) -> asyncpg.Pool:
        where = f"{self._host}:{self._port}"
        try:
            return await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=10,
                # sitq's statements are short; JIT compiling one (which the planner
                # may choose for the small, never-analyzed control tables) costs
                # far more than running it.
                server_settings={"jit": "off"},
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
            if version > q.SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.describe()} has sitq schema version {version}, but this sitq "
                    f"understands up to {q.SCHEMA_VERSION}: upgrade sitq to use it"
                )
            if version < q.SCHEMA_VERSION:
                await conn.execute(self._q(SQL.create_schema))
            for target in range(version + 1, q.SCHEMA_VERSION + 1):
                for statement in q.MIGRATIONS[target]:
                    await conn.execute(self._q(statement))
                await conn.execute(self._q(SQL.write_schema_version), str(target))

    async def close(self) -> None:
        """Close the pool and the listener once the last user has closed."""
        async with self._open_lock:
            self._users = max(0, self._users - 1)
            if self._users:
                return
            try:
                if self._listener is not None:
                    self._listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._listener
                    self._listener = None
                if self._pool is not None:
                    pool, self._pool = self._pool, None
                    await pool.close()
            finally:
                self._loop_binding.release()  # only once closed: another loop may open it again

    def _acquire(self) -> Any:
        if self._pool is None:
            raise NotConnected(
                f"{self.describe()} is not connected: call `await connect()` first "
                "(or use `async with`)"
            )
        return self._pool.acquire()

    async def _notify(self, conn: Any, kind: WakeKind) -> None:
        await conn.execute(SQL.notify, self._channel, kind)

    # -- producer side ----------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` in one statement and wake the workers."""
        if not tasks:
            return
        columns = [list(column) for column in zip(*tasks, strict=True)]
        async with self._acquire() as conn:
            await conn.execute(self._q(SQL.insert_tasks), *columns, self._channel)

    async def get_tasks(
        self, task_ids: Sequence[str], *, with_payload: bool = False, with_result: bool = True
    ) -> dict[str, TaskRecord]:
        """Stored records of ``task_ids``, in one query."""
        # octet_length() of a TOASTed value reads its pointer only, not the value.
        columns = task_columns(
            q.TASK_COLUMNS,
            with_payload=with_payload,
            with_result=with_result,
            length="octet_length",
        )
        sql = self._q(SQL.get_tasks.replace("{columns}", columns))
        async with self._acquire() as conn:
            rows = await conn.fetch(sql, list(dict.fromkeys(task_ids)))
        return {row[0]: _record(row) for row in rows}

    async def cancel(self, task_id: str) -> str | None:
        """Cancel a queued task now, or ask a running task's worker to stop it."""
        now = self.now()
        async with self._acquire() as conn, conn.transaction():
            # Lock the row first: a worker's finish or retry cannot slip in between
            # reading the status and acting on it.
            status = await conn.fetchval(self._q(SQL.lock_task_status), task_id)
            if status is None:
                return None
            if status == "queued":
                await conn.execute(
                    self._q(SQL.cancel_queued), task_id, now, self.default_result_ttl
                )
                await self._notify(conn, "results")
                return "cancelled"
            if status == "running":
                await conn.execute(self._q(SQL.request_cancel), task_id)
                # Its worker heartbeats at once (see SQLiteBackend.cancel).
                await self._notify(conn, "cancels")
                return "requested"
            return "finished"

    async def retry(
        self, task_ids: Sequence[str] | None = None, queue: str | None = None
    ) -> list[str]:
        """Queue failed or cancelled tasks again, with a fresh attempt count."""
        # SQL.retry's {where}: the ids or every failure, and the queue if given.
        params: list[Any] = [self.now()]
        if task_ids is not None:
            where = "id = ANY($2::text[])"
            params.append(list(task_ids))
        else:
            where = "status = 'failed'"
        if queue is not None:
            where += f" AND queue = ${len(params) + 1}"
            params.append(queue)
        sql = self._q(SQL.retry.replace("{where}", where))
        async with self._acquire() as conn:
            try:
                rows = await conn.fetch(sql, *params)
            except asyncpg.UniqueViolationError:
                # A unique enqueue committed while this ran: a fresh snapshot sees it.
                rows = await conn.fetch(sql, *params)
            if rows:
                await self._notify(conn, "tasks")
        return [row[0] for row in rows]

    async def counts(self) -> dict[tuple[str, str], int]:
        """Tasks per (queue, status)."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(q.COUNTS))
        return {(row[0], row[1]): int(row[2]) for row in rows}

    async def counts_and_finished_since(
        self, since: float
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int] | None]:
        """Tasks per (queue, status), and of those the ones finished since ``since``."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(q.COUNTS_AND_FINISHED), since)
        return (
            {(row[0], row[1]): int(row[2]) for row in rows},
            {(row[0], row[1]): int(row[3]) for row in rows if row[3]},
        )

    async def retrying_counts(self) -> dict[str, int]:
        """Queued tasks that ran before, per queue."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(q.RETRYING_COUNTS))
        return {row[0]: int(row[1]) for row in rows}

    async def activity(self, failures: int) -> base.Activity:
        """Ready, claimed and running tasks and the latest failures, read from one
        snapshot (a read-only repeatable-read transaction)."""
        now = self.now()
        async with (
            self._acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            ready = await conn.fetch(self._q(q.OLDEST_WAITING), now)
            claimed = await conn.fetch(self._q(q.CLAIMED_COUNTS))
            running = await conn.fetch(self._q(q.RUNNING_TASKS))
            failed = await conn.fetch(self._q(q.RECENT_FAILURES), failures) if failures else []
        return base.Activity(
            {row[0]: (float(row[1]), int(row[2])) for row in ready},
            {(row[0], row[1]): int(row[2]) for row in claimed},
            [_record(row) for row in running],
            [_record(row) for row in failed],
        )

    # -- worker side ------------------------------------------------------

    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[ClaimedTask]:
        """Take up to ``limit`` ready tasks; reclaim expired leases first (at most 1/s)."""
        if limit <= 0:
            return []
        now = self.now()
        async with self._acquire() as conn:
            if self._reclaim.due(now):
                status = await conn.execute(
                    self._q(SQL.reclaim_expired), now, LOST_LEASE_LIMIT, self.default_result_ttl
                )
                if status != "UPDATE 0":
                    await self._notify(conn, "results")
            rows: list[Any] = []
            if await self._limits_exist(conn, now):
                # Limited tasks first: they are few at a time by nature, and would
                # otherwise wait for a lull in the unlimited ones.
                rows += await self._claim_limited(
                    conn, worker_id, list(queues), limit, now, now + lease_seconds
                )
            if len(rows) < limit:
                rows += await conn.fetch(
                    self._q(SQL.claim_ready_one_queue if len(queues) == 1 else SQL.claim_ready),
                    worker_id,
                    now,
                    now + lease_seconds,
                    list(queues),
                    limit - len(rows),
                )
        return claimed_tasks(rows, worker_id, now)

    async def _limits_exist(self, conn: Any, now: float) -> bool:
        # Read at most once a second: a task enqueued under a new limit waits at
        # most that long for its first claim.
        if self._limits_check.due(now):
            self._has_limits = bool(await conn.fetchval(self._q(SQL.any_limit)))
        return self._has_limits

    async def _claim_limited(
        self,
        conn: Any,
        worker_id: str,
        queues: list[str],
        room: int,
        now: float,
        expires: float,
    ) -> list[Any]:
        """Claim tasks under limits. The limit rows stay locked until commit, so
        claimers on every host take turns and each counts what the last committed.
        A read first keeps that lock away while no limited task can start."""
        rooms = await conn.fetch(self._q(SQL.limit_room), now)
        if not any(base.limit_room_allowed(row, room) > 0 for row in rooms):
            return []
        taken: list[Any] = []
        async with conn.transaction():
            await conn.execute(self._q(SQL.lock_limits))
            for row in await conn.fetch(self._q(SQL.limit_room), now):
                key, per_seconds = row[0], row[3]
                allowed = min(room - len(taken), base.limit_room_allowed(row, room))
                if allowed <= 0:
                    continue
                claimed = await conn.fetch(
                    self._q(SQL.claim_limited), worker_id, now, expires, queues, allowed, key
                )
                if claimed and per_seconds is not None:
                    await conn.execute(self._q(SQL.record_starts), key, len(claimed))
                    await conn.execute(self._q(SQL.forget_starts), key, per_seconds)
                taken += claimed
        return taken

    async def heartbeat(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> set[str]:
        """Renew the worker's liveness and its leases; return ids asked to cancel."""
        now = self.now()
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(self._q(SQL.touch_worker), now, worker_id)
            if not leases:
                return set()
            rows = await conn.fetch(
                self._q(SQL.renew_leases),
                now + lease_seconds,
                worker_id,
                [lease.task_id for lease in leases],
            )
        return {row[0] for row in rows if row[1]}

    async def finish(
        self,
        items: Sequence[tuple[Lease, Outcome]],
        started: Sequence[tuple[Lease, float]] = (),
    ) -> list[bool]:
        """Record outcomes in one statement (and start marks of tasks still running
        in the same transaction); each applies only if its lease holds."""
        if not items and not started:
            return []
        now = self.now()
        leases = [lease for lease, _ in items]
        outcomes = [outcome for _, outcome in items]
        # Each outcome takes its task's start mark; what is left marks tasks still running.
        starts = {lease.task_id: when for lease, when in started}
        started_at = [starts.pop(lease.task_id, None) for lease in leases]
        running = [mark for mark in started if mark[0].task_id in starts] if starts else []
        kinds = []
        if any(o.status != "queued" for o in outcomes):
            kinds.append("results")
        if any(o.status == "queued" for o in outcomes):
            kinds.append("tasks")
        async with self._acquire() as conn, contextlib.AsyncExitStack() as stack:
            if running:
                await stack.enter_async_context(conn.transaction())
                await conn.execute(
                    self._q(SQL.mark_started),
                    [lease.task_id for lease, _ in running],
                    [lease.worker_id for lease, _ in running],
                    [lease.attempt for lease, _ in running],
                    [when for _, when in running],
                )
            if not items:
                return []
            rows = await conn.fetch(
                self._q(SQL.finish),
                now,
                self.default_result_ttl,
                [lease.task_id for lease in leases],
                [lease.worker_id for lease in leases],
                [lease.attempt for lease in leases],
                [o.status for o in outcomes],
                [o.result for o in outcomes],
                [o.error for o in outcomes],
                [o.traceback for o in outcomes],
                [o.retry_at for o in outcomes],
                kinds,
                self._channel,
                started_at,
            )
        applied = {(row[0], row[1], row[2]) for row in rows}
        return [(lease.task_id, lease.worker_id, lease.attempt) in applied for lease in leases]

    async def record_start(self, lease: Lease) -> bool:
        """See Backend.record_start."""
        async with self._acquire() as conn:
            status: str = await conn.execute(
                self._q(SQL.record_task_start),
                lease.task_id,
                lease.worker_id,
                lease.attempt,
                self.now(),
            )
        return status == "UPDATE 1"

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give tasks back without counting the attempt (cancel-requested ones end cancelled)."""
        if not leases:
            return 0
        async with self._acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                self._q(SQL.release),
                self.now(),
                self.default_result_ttl,
                [lease.task_id for lease in leases],
                [lease.worker_id for lease in leases],
                [lease.attempt for lease in leases],
            )
            await self._notify(conn, "tasks")
            await self._notify(conn, "results")
        return len(rows)

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a started worker."""
        async with self._acquire() as conn:
            await conn.execute(
                self._q(SQL.upsert_worker),
                worker.id,
                worker.hostname,
                worker.pid,
                list(worker.queues),
                worker.concurrency,
                worker.started_at,
                worker.heartbeat_at,
            )

    async def unregister_worker(self, worker_id: str) -> None:
        """Mark a worker stopped."""
        async with self._acquire() as conn:
            await conn.execute(self._q(SQL.stop_worker), self.now(), worker_id)

    async def list_workers(self) -> list[WorkerRecord]:
        """Every known worker, newest first."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(SQL.list_workers))
        return [worker_record(r, r[3]) for r in rows]

    async def prune(self) -> int:
        """Delete finished tasks past their retention, and workers gone for a day."""
        now = self.now()
        async with self._acquire() as conn, conn.transaction():
            status = await conn.execute(self._q(SQL.prune_tasks), now)
            await conn.execute(self._q(SQL.prune_workers), now - 86400.0)
        return int(status.split()[-1])

    async def purge(
        self, statuses: Sequence[str], queue: str | None = None, older_than: float | None = None
    ) -> int:
        """Delete tasks in ``statuses``, optionally of one queue and finished long ago."""
        if not statuses:
            return 0
        # Only the filters given become clauses (SQL.purge's {where}), numbered in order.
        clauses = ["status = ANY($1::text[])"]
        params: list[Any] = [list(statuses)]
        if queue is not None:
            params.append(queue)
            clauses.append(f"queue = ${len(params)}")
        if older_than is not None:
            params.append(self.now() - older_than)
            clauses.append(f"COALESCE(finished_at, enqueued_at) < ${len(params)}")
        sql = self._q(SQL.purge.replace("{where}", " AND ".join(clauses)))
        async with self._acquire() as conn:
            status = await conn.execute(sql, *params)
        return int(status.split()[-1])

    # -- wake-ups -----------------------------------------------------------

    async def wait_for_change(self, kind: WakeKind, timeout: float) -> None:
        """Wait for a NOTIFY about ``kind`` from any process, or ``timeout``."""
        if self._pool is None:
            raise NotConnected(f"{self.describe()} is not connected")
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen_forever())
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
                if reconnecting:
                    for event in self._events.values():
                        event.set()  # anything may have happened while we were deaf
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

    # -- bulk status ------------------------------------------------------------

    async def count_statuses(self, task_ids: Sequence[str]) -> dict[str, int]:
        """The given tasks per status."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(SQL.count_statuses), list(dict.fromkeys(task_ids)))
        return {row[0]: int(row[1]) for row in rows}

    async def task_statuses(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Each given task's status."""
        async with self._acquire() as conn:
            rows = await conn.fetch(self._q(SQL.task_statuses), list(task_ids))
        return {row[0]: row[1] for row in rows}

    async def cancel_queued(self, task_ids: Sequence[str]) -> list[str]:
        """Cancel the still-queued ones of ``task_ids`` in one statement."""
        if not task_ids:
            return []
        async with self._acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                self._q(SQL.cancel_queued_many), list(task_ids), self.now(), self.default_result_ttl
            )
            if rows:
                await self._notify(conn, "results")
        return [row[0] for row in rows]

    # -- listings for dashboards --------------------------------------------------

    async def list_tasks(
        self,
        *,
        queue: str | None = None,
        status: str | None = None,
        batch_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        scan_limit: int = 5000,
    ) -> base.TaskPage:
        """A bounded window of rows from the index that serves these filters, then
        the matching tasks in one query (see :meth:`Backend.list_tasks`)."""
        source = base.listing_source(status, batch_id)
        position = base.listing_position(source, cursor)
        size = listing_window_size(source, queue, status, limit, scan_limit)
        async with self._acquire() as conn:
            if source == "failed":
                rows = await conn.fetch(self._q(SQL.list_window_failed), size, *position)
                window = [(base.listing_cursor(source, r[0], r[1]), r[2], r[3], r[4]) for r in rows]
            else:
                if source == "batch":
                    sql, args = q.LIST_WINDOW_BATCH, [batch_id, *position]
                else:
                    template = (
                        SQL.list_window_tasks if source == "tasks" else SQL.list_window_running
                    )
                    first = position[0] == "~"
                    sql = template.format(after="" if first else "AND id < $2")
                    args = [] if first else [position[0]]
                rows = await conn.fetch(self._q(sql), size, *args)
                window = [(str(r[0]), r[1], r[2], r[3]) for r in rows]
            ids, next_cursor = base.window_matches(window, queue, status, limit, len(rows) == size)
            found = await conn.fetch(self._q(SQL.list_tasks_by_id), ids) if ids else []
        return listing_page(ids, [_record(row) for row in found], next_cursor)

    # -- the layers' own stores ------------------------------------------------

    def store_session(self) -> PostgresSession:
        """SQL on this database for the layers' stores (see ``StoreSession``)."""
        return PostgresSession(self)


def _record(row: Any) -> TaskRecord:
    values = list(row)
    for index in (12,) + ((15,) if len(values) > 15 else ()):
        if values[index] is not None:
            values[index] = bytes(values[index])
    return task_record(values)
