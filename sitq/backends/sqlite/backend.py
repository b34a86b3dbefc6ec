"""The embedded default backend: one SQLite file, shared by any number of processes.

Writes take the database lock up front (single statements, or ``BEGIN
IMMEDIATE`` for multi-statement transactions), so a writer never has to
upgrade a read snapshot and fail with "database is locked"; a busy database is
waited for and retried, never reported to the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

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
from sitq.backends.common import (
    Every,
    LoopBinding,
    check_database_path,
    listing_page,
    listing_window_size,
    translate_error,
)
from sitq.backends.sqlite import schema as q
from sitq.backends.sqlite.enqueue import (
    JOURNAL_SIZE_LIMIT,
    BlockingInserter,
    EnqueueBatcher,
    is_busy,
)
from sitq.backends.sqlite.schema import SQL
from sitq.backends.sqlite.session import SQLiteSession
from sitq.backends.sqlite.wakeup import WakeupChannel, wake_directory
from sitq.errors import (
    DatabaseError,
    DatabaseUnavailable,
    NotASitqDatabase,
    NotConnected,
    SchemaVersionError,
)

T = TypeVar("T")

#: How long a busy database is retried before giving up with a clear error.
LOCKED_DEADLINE = 120.0
#: How long a checkpoint that lets the WAL start over waits for its readers
#: (holding other writers back meanwhile; it happens once per WAL_RESTART_BYTES).
RESTART_WAIT = 0.1
_ID_CHUNK = 500  # stays below SQLite's limit on bound parameters


def lease_key(lease: Lease) -> tuple[str, str, int]:
    """The WHERE values that prove a lease: task, worker, attempt."""
    return (lease.task_id, lease.worker_id, lease.attempt)


class SQLiteBackend(Backend):
    """Tasks in a single SQLite file (WAL mode).

    :param path: the database file; created owner-only (0600) if missing.
    :param create: create the file if it is missing (the CLI passes False so a
        mistyped path is an error rather than a new empty queue).
    :param durable: ``synchronous=FULL``, so every commit survives power loss, at
        the cost of an fsync per commit. The default (NORMAL) survives any
        process crash.
    :param busy_timeout: seconds SQLite itself waits on a lock before sitq retries.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        durable: bool = False,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        check_database_path(self.path)
        self.create = create
        self.durable = durable
        self.busy_timeout = busy_timeout
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._loop_binding = LoopBinding()
        self._wakeup = WakeupChannel(wake_directory(self.path))
        self._reclaim = Every(RECLAIM_INTERVAL)
        self._limits_check = Every(RECLAIM_INTERVAL)  # _has_limits is re-read then
        self._has_limits = False
        self._users = 0
        self._batcher: EnqueueBatcher | None = None
        self._page_size = 4096
        self._blocking: BlockingInserter | None = None
        self._session: SQLiteSession | None = None

    def describe(self) -> str:
        """The database file's path."""
        return f"sqlite database {self.path}"

    def now(self) -> float:
        """Unix seconds."""
        return time.time()

    # -- unique jobs, limits, pauses, schedules --------------------------------

    async def enqueue_unique(self, task: NewTask) -> tuple[str, bool]:
        """Insert ``task`` unless a queued or running task holds its unique key."""
        conn = self._connection()

        async def body() -> tuple[str, bool]:
            cursor = await conn.execute(SQL.insert_unique_task, task)
            if cursor.rowcount:
                return task.id, True
            rows = list(await conn.execute_fetchall(SQL.existing_unique, (task.unique_key,)))
            return rows[0][0], False

        task_id, created = await self._transaction(body)
        if created:
            self._wakeup.notify("tasks")
        return task_id, created

    async def set_limit(self, limit: LimitRecord) -> None:
        """Create or replace a limit."""
        conn = self._connection()
        params = (limit.key, limit.max_running, limit.max_starts, limit.per_seconds)
        await self._write(lambda: conn.execute(SQL.set_limit, params))
        self._limits_check.reset()

    async def delete_limit(self, key: str) -> bool:
        """Remove a limit."""
        conn = self._connection()

        async def body() -> bool:
            cursor = await conn.execute(SQL.delete_limit, (key,))
            await conn.execute(SQL.unlimit_tasks, (key,))
            await conn.execute(SQL.delete_limit_starts, (key,))
            return bool(cursor.rowcount)

        deleted = await self._transaction(body)
        self._wakeup.notify("tasks")  # its tasks are claimable by the main claim now
        return deleted

    async def list_limits(self) -> list[LimitRecord]:
        """Every limit, by key."""
        return [LimitRecord(*row) for row in await self._read(SQL.list_limits)]

    async def pause_queue(self, queue: str) -> None:
        """Stop claims from ``queue``."""
        conn = self._connection()
        await self._write(lambda: conn.execute(SQL.pause_queue, (queue, self.now())))

    async def resume_queue(self, queue: str) -> bool:
        """Let claims take from ``queue`` again, and wake the workers."""
        conn = self._connection()
        cursor = await self._write(lambda: conn.execute(SQL.resume_queue, (queue,)))
        self._wakeup.notify("tasks")
        return bool(cursor.rowcount)

    async def paused_queues(self) -> list[str]:
        """The paused queues."""
        return [row[0] for row in await self._read(SQL.paused_queues)]

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
        conn = self._connection()
        params = {"name": name, "spec": spec, "due": due, "next": next_run_at, "now": self.now()}
        sql = SQL.add_schedule if first else SQL.advance_schedule

        async def body() -> bool:
            cursor = await conn.execute(sql, params)
            if not cursor.rowcount:
                return False
            if task is not None:
                await conn.execute(SQL.insert_task, task)
            return True

        advanced = await self._transaction(body)
        if advanced and task is not None:
            self._wakeup.notify("tasks")
        return advanced

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        return [ScheduleRecord(*row) for row in await self._read(SQL.list_schedules)]

    # -- connection -------------------------------------------------------

    async def connect(self) -> None:
        """Open (and if allowed create) the database and bring its schema up to date.

        Reference-counted: a backend shared by a queue and workers in one process
        is opened once and closed by the last ``close()``.
        """
        if self._loop_binding.bind(self.describe()):
            self._lock = asyncio.Lock()  # asyncio locks belong to one loop
            self._open_lock = asyncio.Lock()
        async with self._open_lock:  # a queue and a worker may connect at once
            try:
                await self._open()
            finally:
                if not self._users:
                    self._loop_binding.release()

    async def _open(self) -> None:
        self._users += 1
        if self._conn is not None:
            return
        try:
            self._prepare_file()
            pending = aiosqlite.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            # aiosqlite >= 0.22 runs each connection on a non-daemon thread, so a
            # program that ends without closing its queue would hang at exit. A
            # daemon thread is safe: SQLite survives a process ending mid-commit.
            thread: Any = getattr(pending, "_thread", pending)
            thread.daemon = True
            conn = await pending
        except sqlite3.Error as exc:
            self._users -= 1
            raise DatabaseError(f"cannot open {self.describe()}: {exc}") from exc
        except BaseException:
            self._users -= 1
            raise
        self._conn = conn
        try:
            await self._configure()
            await self._migrate()
            self._batcher = EnqueueBatcher(
                self.path,
                self._enqueue_in_thread,
                self._checkpoint,
                lambda: self._wakeup.notify("tasks"),
                fast=not self.durable,
            )
        except BaseException:
            self._conn = None
            self._users -= 1
            await conn.close()
            raise

    def _prepare_file(self) -> None:
        path = Path(self.path)
        if path.exists():
            if path.is_dir():
                raise DatabaseError(f"{self.path} is a directory, not a database file")
            return
        # Opening an existing database (read-only commands) says it is missing before
        # anything about creating it: nothing is to be created here.
        if not self.create:
            raise DatabaseError(
                f"no sitq database at {self.path}: check --db / $SITQ_DB, or create it "
                f"with `sitq init --db {self.path}`"
            )
        if not path.parent.is_dir():
            raise DatabaseError(
                f"cannot create {self.describe()}: directory {path.parent} does not exist; "
                "create it first or choose another path"
            )
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return  # another process created it first
        except OSError as exc:
            raise DatabaseError(
                f"cannot create {self.describe()}: {exc.strerror}; choose a writable "
                "directory or fix its permissions"
            ) from exc
        os.close(fd)

    async def _configure(self) -> None:
        conn = self._connection()
        await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        try:
            mode = await self._retry_locked(
                lambda: conn.execute_fetchall("PRAGMA journal_mode = WAL")
            )
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        if not mode or str(next(iter(mode))[0]).lower() != "wal":
            raise DatabaseError(
                f"cannot switch {self.describe()} to WAL mode (got {mode!r}); "
                "it must be on a local file system that supports shared memory"
            )
        await conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        await conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        (page_size,) = next(iter(await conn.execute_fetchall("PRAGMA page_size")))
        self._page_size = int(page_size)

    def _write_error(self, exc: sqlite3.Error) -> Exception:
        """A read-only database as the clear DatabaseError; other errors unchanged."""
        text = str(exc)
        return self._open_error(exc) if "readonly" in text or "read-only" in text else exc

    def _open_error(self, exc: sqlite3.Error) -> DatabaseError:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            return NotASitqDatabase(
                f"{self.path} is not a sitq database ({text}); point --db / $SITQ_DB "
                "at a sitq database or at a new file"
            )
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            return DatabaseError(
                f"cannot write {self.describe()} ({text}); sitq needs write access to the "
                "file and its directory (for the -wal and -shm files): fix their owner or "
                "mode, or run as the user who owns them"
            )
        return DatabaseError(f"cannot use {self.describe()}: {text}")

    async def _migrate(self) -> None:
        conn = self._connection()

        async def read_version() -> int | None:
            rows = list(await conn.execute_fetchall(SQL.has_meta_table))
            if not rows:
                others = list(await conn.execute_fetchall(SQL.count_tables))
                if others[0][0]:
                    raise NotASitqDatabase(
                        f"{self.path} holds tables that are not sitq's; point --db / $SITQ_DB "
                        "at a sitq database or at a new file"
                    )
                return None
            rows = list(await conn.execute_fetchall(SQL.read_schema_version))
            return int(rows[0][0]) if rows else None

        async def upgrade() -> None:
            version = await read_version() or 0
            if version > q.SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has sitq schema version {version}, but this sitq "
                    f"understands up to {q.SCHEMA_VERSION}: upgrade sitq to use it"
                )
            for target in range(version + 1, q.SCHEMA_VERSION + 1):
                for statement in q.MIGRATIONS[target]:
                    await conn.execute(statement)
                await conn.execute(SQL.write_schema_version, (str(target),))

        try:
            version = await read_version()
            if version is not None and version > q.SCHEMA_VERSION:
                await upgrade()  # raises the clear error, without taking a write lock
            if version != q.SCHEMA_VERSION:
                await self._transaction(upgrade)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc

    async def close(self) -> None:
        """Close the connection once the last user has closed."""
        async with self._open_lock:
            await self._shut()

    async def _shut(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users:
            return
        try:
            await self._close_connections()
        finally:
            self._loop_binding.release()  # only once closed: another loop may open it again

    async def _close_connections(self) -> None:
        if self._conn is None:
            return
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        if self._blocking is not None:
            self._blocking.close()
            self._blocking = None
        if self._session is not None:
            await self._session.close()  # commits its group writes in flight
        conn, self._conn = self._conn, None
        self._wakeup.close()
        await conn.close()

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise NotConnected(
                f"{self.describe()} is not connected: call `await connect()` first "
                "(or use `async with`)"
            )
        return self._conn

    # -- plumbing ---------------------------------------------------------

    async def _retry_locked(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying while the database is locked by another process."""
        deadline = time.monotonic() + LOCKED_DEADLINE
        pause = 0.001
        while True:
            try:
                return await operation()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise self._write_error(exc) from exc
                if time.monotonic() > deadline:
                    raise DatabaseUnavailable(
                        f"{self.describe()} stayed locked for {LOCKED_DEADLINE:.0f} s; another "
                        "process holds a long write transaction (a backup or a stuck client?)"
                    ) from exc
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)

    async def _write(self, operation: Callable[[], Awaitable[T]]) -> T:
        """One single-statement write: atomic on its own, retried while locked."""
        self._connection()
        return await asyncio.shield(self._locked(operation))

    async def _locked(self, operation: Callable[[], Awaitable[T]]) -> T:
        # The lock is taken inside the shield, so a cancelled caller never lets
        # another coroutine in while this connection is mid-transaction.
        async with self._lock:
            return await self._retry_locked(operation)

    async def _transaction(self, body: Callable[[], Awaitable[T]]) -> T:
        """``body`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``, retried while locked.

        Shielded: a caller cancelled mid-way does not leave the connection inside
        an open transaction.
        """
        conn = self._connection()

        async def attempt() -> T:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                value = await body()
            except BaseException:
                if conn.in_transaction:  # not if SQLite rolled back itself (disk full)
                    await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
            return value

        return await asyncio.shield(self._locked(attempt))

    async def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        conn = self._connection()
        async with self._lock:
            return list(await self._retry_locked(lambda: conn.execute_fetchall(sql, params)))

    # -- producer side ----------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` in one transaction and wake the workers.

        Concurrent calls are committed together (see ``sitq.backends.sqlite.enqueue``).
        """
        if not tasks:
            return
        self._connection()
        assert self._batcher is not None
        try:
            await self._batcher.enqueue(list(tasks))  # NewTask rows bind as they are
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from exc

    def enqueue_blocking(self, tasks: Sequence[NewTask]) -> bool:
        """Insert ``tasks`` from plain code, on the calling thread; True when done."""
        if not tasks:
            return True
        self._connection()
        if self._blocking is None:
            self._blocking = BlockingInserter(
                self.path, self.busy_timeout, "FULL" if self.durable else "NORMAL"
            )
        try:
            self._blocking.insert(tasks, time.monotonic() + LOCKED_DEADLINE)
        except sqlite3.Error as exc:
            error = self._write_error(exc)  # a read-only database, named as such
            if error is exc:  # else a StorageError that names e.g. a full disk
                error = translate_error(exc, self) or DatabaseError(
                    f"cannot enqueue into {self.describe()}: {exc}"
                )
            raise error from exc
        self._wakeup.notify_threadsafe("tasks")
        return True

    async def _enqueue_in_thread(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._connection()
        if len(rows) == 1:
            await self._write(lambda: conn.execute(SQL.insert_task, rows[0]))
            return

        async def insert_all() -> None:
            await conn.executemany(SQL.insert_task, rows)

        await self._transaction(insert_all)

    async def _checkpoint(self, restart: bool = False) -> int:
        """One checkpoint; returns the WAL's size in bytes, 0 if unknown.

        PASSIVE waits for no one. ``restart`` (RESTART, see ``WalKeeper``) also
        waits, at most ``RESTART_WAIT`` seconds, for readers of the WAL to finish,
        so that the next commit starts the WAL over. Neither is retried:
        commits may be held back meanwhile, and the next round will do.
        """
        conn = self._connection()
        with contextlib.suppress(sqlite3.Error):
            async with self._lock:
                if not restart:
                    rows = await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                else:
                    await conn.execute(f"PRAGMA busy_timeout = {int(RESTART_WAIT * 1000)}")
                    try:
                        rows = await conn.execute_fetchall("PRAGMA wal_checkpoint(RESTART)")
                    finally:
                        await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            for _busy, frames, _copied in rows:
                return max(0, int(frames)) * self._page_size
        return 0

    async def get_tasks(
        self, task_ids: Sequence[str], *, with_payload: bool = False, with_result: bool = True
    ) -> dict[str, TaskRecord]:
        """Stored records of ``task_ids``, many per query."""
        # length() of a blob is read from its record header: a big result is not loaded.
        columns = task_columns(
            q.TASK_COLUMNS, with_payload=with_payload, with_result=with_result, length="length"
        )
        found: dict[str, TaskRecord] = {}
        unique = list(dict.fromkeys(task_ids))
        for start in range(0, len(unique), _ID_CHUNK):
            chunk = unique[start : start + _ID_CHUNK]
            # One placeholder per id: IN (...) over the primary key, chunked.
            marks = ",".join("?" * len(chunk))
            rows = await self._read(SQL.get_tasks.format(columns=columns, marks=marks), chunk)
            for row in rows:
                found[row[0]] = task_record(row)
        return found

    async def cancel(self, task_id: str) -> str | None:
        """Cancel a queued task now, or ask a running task's worker to stop it."""
        conn = self._connection()
        now = self.now()

        async def body() -> str | None:
            cursor = await conn.execute(
                SQL.cancel_queued, {"id": task_id, "now": now, "ttl": self.default_result_ttl}
            )
            if cursor.rowcount:
                return "cancelled"
            cursor = await conn.execute(SQL.request_cancel, (task_id,))
            if cursor.rowcount:
                return "requested"
            rows = list(await conn.execute_fetchall(SQL.task_exists, (task_id,)))
            return "finished" if rows else None

        outcome = await self._transaction(body)
        if outcome == "cancelled":
            self._wakeup.notify("results")
        elif outcome == "requested":
            # Its worker heartbeats at once, not up to 10 s later: a task it
            # holds but has not started then ends cancelled without running.
            self._wakeup.notify("cancels")
        return outcome

    async def retry(
        self, task_ids: Sequence[str] | None = None, queue: str | None = None
    ) -> list[str]:
        """Queue failed or cancelled tasks again, with a fresh attempt count."""
        conn = self._connection()
        now = self.now()
        if task_ids is None:
            where = "status = 'failed'" + (" AND queue = ?" if queue is not None else "")
            statements = [(where, [now] + ([queue] if queue is not None else []))]
        else:
            ids = list(task_ids)
            statements = []
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                where = f"id IN ({','.join('?' * len(chunk))})"
                params: list[Any] = [now, *chunk]
                if queue is not None:
                    where += " AND queue = ?"
                    params.append(queue)
                statements.append((where, params))
        if not statements:
            return []

        async def body() -> list[str]:
            retried: list[str] = []
            for where, params in statements:
                rows = await conn.execute_fetchall(SQL.retry.format(where=where), params)
                retried += [row[0] for row in rows]
            return retried

        retried = await self._transaction(body)
        if retried:
            self._wakeup.notify("tasks")
        return retried

    async def counts(self) -> dict[tuple[str, str], int]:
        """Tasks per (queue, status)."""
        rows = await self._read(q.COUNTS)
        return {(row[0], row[1]): int(row[2]) for row in rows}

    async def counts_and_finished_since(
        self, since: float
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int] | None]:
        """Tasks per (queue, status), and of those the ones finished since ``since``."""
        rows = await self._read(q.COUNTS_AND_FINISHED, (since,))
        return (
            {(row[0], row[1]): int(row[2]) for row in rows},
            {(row[0], row[1]): int(row[3]) for row in rows if row[3]},
        )

    async def retrying_counts(self) -> dict[str, int]:
        """Queued tasks that ran before, per queue."""
        return {row[0]: int(row[1]) for row in await self._read(q.RETRYING_COUNTS)}

    async def activity(self, failures: int) -> base.Activity:
        """Ready, claimed and running tasks and the latest failures, in one hold
        of the connection (no write lands between the reads)."""
        conn = self._connection()
        now = self.now()

        async def read() -> tuple[list[Any], ...]:
            ready = await conn.execute_fetchall(q.OLDEST_WAITING, {"now": now})
            claimed = await conn.execute_fetchall(q.CLAIMED_COUNTS)
            running = await conn.execute_fetchall(q.RUNNING_TASKS)
            failed = await conn.execute_fetchall(q.RECENT_FAILURES, (failures,)) if failures else []
            return list(ready), list(claimed), list(running), list(failed)

        async with self._lock:
            ready, claimed, running, failed = await self._retry_locked(read)
        return base.Activity(
            {row[0]: (float(row[1]), int(row[2])) for row in ready},
            {(row[0], row[1]): int(row[2]) for row in claimed},
            [TaskRecord(*row) for row in running],
            [TaskRecord(*row) for row in failed],
        )

    # -- worker side ------------------------------------------------------

    async def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[ClaimedTask]:
        """Take up to ``limit`` ready tasks in one statement; reclaim expired leases first."""
        if limit <= 0:
            return []
        conn = self._connection()
        now = self.now()
        if self._reclaim.due(now):
            await self._reclaim_expired(now)
        rows: list[Any] = []
        if await self._limits_exist(now):
            # Limited tasks first: they are few at a time by nature, and would
            # otherwise wait for a lull in the unlimited ones.
            rows += await self._claim_limited(worker_id, queues, limit, now, now + lease_seconds)
        if len(rows) < limit:
            sql = SQL.claim_ready.format(queues=",".join("?" * len(queues)))
            params = [worker_id, now + lease_seconds, *queues, now, limit - len(rows)]
            rows += await self._write(lambda: conn.execute_fetchall(sql, params))
        if not rows:
            return []
        return claimed_tasks(rows, worker_id, now)

    async def _limits_exist(self, now: float) -> bool:
        # Read at most once a second: a task enqueued under a new limit waits at
        # most that long for its first claim.
        if self._limits_check.due(now):
            self._has_limits = bool(await self._read(SQL.any_limit))
        return self._has_limits

    async def _claim_limited(
        self, worker_id: str, queues: Sequence[str], room: int, now: float, expires: float
    ) -> list[Any]:
        """Claim tasks under limits, in one write transaction, so the room each
        limit has left cannot change between counting it and claiming. A read
        first keeps that transaction away while no limited task can start."""
        rooms = await self._read(SQL.limit_room, {"now": now})
        if not any(base.limit_room_allowed(row, room) > 0 for row in rooms):
            return []
        conn = self._connection()
        sql = SQL.claim_limited.format(queues=",".join("?" * len(queues)))

        async def body() -> list[Any]:
            taken: list[Any] = []
            for row in await conn.execute_fetchall(SQL.limit_room, {"now": now}):
                key, per_seconds = row[0], row[3]
                allowed = min(room - len(taken), base.limit_room_allowed(row, room))
                if allowed <= 0:
                    continue
                params = (worker_id, expires, *queues, now, key, allowed)
                claimed = list(await conn.execute_fetchall(sql, params))
                if claimed and per_seconds is not None:
                    await conn.executemany(SQL.record_start, [(key, now)] * len(claimed))
                    await conn.execute(SQL.forget_starts, (key, now - per_seconds))
                taken += claimed
            return taken

        return await self._transaction(body)

    async def _reclaim_expired(self, now: float) -> None:
        conn = self._connection()
        params = {"now": now, "lost_limit": LOST_LEASE_LIMIT, "ttl": self.default_result_ttl}
        cursor = await self._write(lambda: conn.execute(SQL.reclaim_expired, params))
        if cursor.rowcount:
            self._wakeup.notify("results")

    async def heartbeat(
        self, worker_id: str, leases: Sequence[Lease], lease_seconds: float
    ) -> set[str]:
        """Renew every lease the worker holds and its own liveness, in one transaction."""
        conn = self._connection()
        now = self.now()

        async def body() -> list[Any]:
            await conn.execute(SQL.touch_worker, (now, worker_id))
            if not leases:
                return []
            ids = json.dumps([lease.task_id for lease in leases])
            return list(
                await conn.execute_fetchall(SQL.renew_leases, (now + lease_seconds, worker_id, ids))
            )

        rows = await self._transaction(body)
        return {row[0] for row in rows if row[1]}

    async def finish(
        self,
        items: Sequence[tuple[Lease, Outcome]],
        started: Sequence[tuple[Lease, float]] = (),
    ) -> list[bool]:
        """Record outcomes and start marks; each applies only if its lease is still held."""
        if not items:
            if started:
                await self._mark_started(started)
            return []
        conn = self._connection()
        now = self.now()
        ttl = self.default_result_ttl
        # Each outcome takes its task's start mark; what is left marks tasks still running.
        starts = {lease.task_id: when for lease, when in started}
        final = [
            (
                o.status,
                o.result,
                o.error,
                o.traceback,
                now,
                now,
                ttl,
                starts.pop(lease.task_id, None),
                *lease_key(lease),
            )
            for lease, o in items
            if o.status != "queued"
        ]
        retries = [
            {
                "id": lease.task_id,
                "worker_id": lease.worker_id,
                "attempt": lease.attempt,
                "status": o.status,
                "result": o.result,
                "error": o.error,
                "traceback": o.traceback,
                "retry_at": o.retry_at,
                "now": now,
                "ttl": ttl,
                "started_at": starts.pop(lease.task_id, None),
            }
            for lease, o in items
            if o.status == "queued"
        ]
        running = _marks_json([m for m in started if m[0].task_id in starts]) if starts else None
        if len(items) == 1 and running is None:
            sql, row = (SQL.finish, final[0]) if final else (SQL.finish_or_retry, retries[0])
            cursor = await self._write(lambda: conn.execute(sql, row))
            applied = [cursor.rowcount == 1]
        else:

            async def body() -> int:
                count = 0
                if running is not None:
                    await conn.execute(SQL.mark_started, (running,))
                if final:
                    count += (await conn.executemany(SQL.finish, final)).rowcount
                if retries:
                    count += (await conn.executemany(SQL.finish_or_retry, retries)).rowcount
                return count

            if await self._transaction(body) == len(items):
                applied = [True] * len(items)
            else:
                applied = await self._finished_by(items, now)
        if any(outcome.status != "queued" for _, outcome in items):
            self._wakeup.notify("results")
        if any(outcome.status == "queued" for _, outcome in items):
            self._wakeup.notify("tasks")
        return applied

    async def _mark_started(self, marks: Sequence[tuple[Lease, float]]) -> None:
        conn = self._connection()
        running = _marks_json(marks)
        await self._write(lambda: conn.execute(SQL.mark_started, (running,)))

    async def _finished_by(self, items: Sequence[tuple[Lease, Outcome]], now: float) -> list[bool]:
        """After a batch in which some writes were refused: which were applied.

        A refused write changed nothing, so an item applied exactly when its row
        now holds what that item wrote: its lease, and the ``finished_at`` (or, for
        a retry, the ``available_at``) stamped by this very batch.
        """
        records = await self.get_tasks([lease.task_id for lease, _ in items])
        applied = []
        for lease, outcome in items:
            record = records.get(lease.task_id)
            if (
                record is None
                or record.worker_id != lease.worker_id
                or record.attempts != lease.attempt
            ):
                applied.append(False)
            elif outcome.status == "queued":
                applied.append(
                    (record.status == "queued" and record.available_at == outcome.retry_at)
                    or (record.status == "cancelled" and record.finished_at == now)
                )
            else:
                applied.append(record.status == outcome.status and record.finished_at == now)
        return applied

    async def record_start(self, lease: Lease) -> bool:
        """See Backend.record_start."""
        conn = self._connection()
        started = (self.now(), *lease_key(lease))
        cursor = await self._write(lambda: conn.execute(SQL.record_task_start, started))
        return cursor.rowcount == 1

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give the tasks back without counting the attempt."""
        if not leases:
            return 0
        conn = self._connection()
        now = self.now()
        params = [
            {
                "id": lease.task_id,
                "worker_id": lease.worker_id,
                "attempt": lease.attempt,
                "now": now,
                "ttl": self.default_result_ttl,
            }
            for lease in leases
        ]

        async def body() -> Any:
            return await conn.executemany(SQL.release, params)

        cursor = await self._transaction(body)
        self._wakeup.notify("tasks")
        self._wakeup.notify("results")
        return int(cursor.rowcount)

    async def register_worker(self, worker: WorkerRecord) -> None:
        """Record a started worker."""
        conn = self._connection()
        row = (
            worker.id,
            worker.hostname,
            worker.pid,
            json.dumps(list(worker.queues)),
            worker.concurrency,
            worker.started_at,
            worker.heartbeat_at,
        )
        await self._write(lambda: conn.execute(SQL.upsert_worker, row))

    async def unregister_worker(self, worker_id: str) -> None:
        """Mark a worker stopped."""
        conn = self._connection()
        now = self.now()
        await self._write(lambda: conn.execute(SQL.stop_worker, (now, worker_id)))

    async def list_workers(self) -> list[WorkerRecord]:
        """Every known worker, newest first."""
        rows = await self._read(SQL.list_workers)
        return [worker_record(r, json.loads(r[3])) for r in rows]

    async def prune(self) -> int:
        """Delete finished tasks past their retention, and workers gone for a day."""
        conn = self._connection()
        now = self.now()

        async def body() -> int:
            cursor = await conn.execute(SQL.prune_tasks, (now,))
            await conn.execute(SQL.prune_workers, (now - 86400.0,))
            return int(cursor.rowcount)

        return await self._transaction(body)

    async def purge(
        self, statuses: Sequence[str], queue: str | None = None, older_than: float | None = None
    ) -> int:
        """Delete tasks in ``statuses``, optionally of one queue and finished long ago."""
        if not statuses:
            return 0
        conn = self._connection()
        # Only the filters given become clauses (SQL.purge's {where}): one shape per
        # combination, and one placeholder per status.
        clauses = [f"status IN ({','.join('?' * len(statuses))})"]
        params: list[Any] = list(statuses)
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        if older_than is not None:
            clauses.append("COALESCE(finished_at, enqueued_at) < ?")
            params.append(self.now() - older_than)
        sql = SQL.purge.format(where=" AND ".join(clauses))
        cursor = await self._write(lambda: conn.execute(sql, params))
        return int(cursor.rowcount)

    async def wait_for_change(self, kind: WakeKind, timeout: float) -> None:
        """Wait for a wake-up from any process on this database, or ``timeout``."""
        self._connection()
        with contextlib.suppress(RuntimeError):
            await self._wakeup.wait(kind, timeout)
            return
        await asyncio.sleep(timeout)

    # -- bulk status ------------------------------------------------------------

    async def count_statuses(self, task_ids: Sequence[str]) -> dict[str, int]:
        """The given tasks per status (ids passed as one JSON array)."""
        rows = await self._read(SQL.count_statuses, (json.dumps(list(task_ids)),))
        return {row[0]: int(row[1]) for row in rows}

    async def task_statuses(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Each given task's status (ids passed as one JSON array)."""
        rows = await self._read(SQL.task_statuses, (json.dumps(list(task_ids)),))
        return {row[0]: row[1] for row in rows}

    async def cancel_queued(self, task_ids: Sequence[str]) -> list[str]:
        """Cancel the still-queued ones of ``task_ids`` in one statement."""
        if not task_ids:
            return []
        conn = self._connection()
        params = {
            "ids": json.dumps(list(task_ids)),
            "now": self.now(),
            "ttl": self.default_result_ttl,
        }
        rows = await self._write(lambda: conn.execute_fetchall(SQL.cancel_queued_many, params))
        if rows:
            self._wakeup.notify("results")
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
        window: list[tuple[str, str, str, str]]
        if source == "failed":
            params = {"finished_at": position[0], "id": position[1], "limit": size}
            rows = await self._read(SQL.list_window_failed, params)
            window = [(base.listing_cursor(source, r[0], r[1]), r[2], r[3], r[4]) for r in rows]
        else:
            sql = {
                "batch": q.LIST_WINDOW_BATCH,
                "running": SQL.list_window_running,
                "tasks": SQL.list_window_tasks,
            }[source]
            params_list = [batch_id, *position, size] if source == "batch" else [*position, size]
            rows = await self._read(sql, params_list)
            window = [(str(r[0]), r[1], r[2], r[3]) for r in rows]
        ids, next_cursor = base.window_matches(window, queue, status, limit, len(rows) == size)
        found = await self._read(SQL.list_tasks_by_id, (json.dumps(ids),)) if ids else []
        return listing_page(ids, [task_record(row) for row in found], next_cursor)

    # -- the layers' own stores ------------------------------------------------

    def store_session(self) -> SQLiteSession:
        """SQL on this database for the layers' stores (see ``StoreSession``)."""
        if self._session is None:
            self._session = SQLiteSession(self)
        return self._session


def _marks_json(marks: Sequence[tuple[Lease, float]]) -> str:
    """Start marks as MARK_STARTED's JSON array of [id, worker_id, attempt, started_at]."""
    return json.dumps([[*lease_key(lease), when] for lease, when in marks])
