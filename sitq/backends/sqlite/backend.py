"""The embedded default backend: one SQLite file, shared by any number of processes.

Writes take the database lock up front (single statements, or ``BEGIN
IMMEDIATE`` for multi-statement transactions), so a writer never has to
upgrade a read snapshot and fail with "database is locked"; a busy database is
waited for and retried, never reported to the user.

One module of one class (about 570 lines): the claim, finish and enqueue paths
share the connection, its lock and the group-commit writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from sitq.backends.base import (
    DEAF_POLL,
    LOST_LEASE_LIMIT,
    Lease,
    NewTask,
    Outcome,
    WakeKind,
    text_task_ids,
)
from sitq.backends.borrowed import DriverConnection
from sitq.backends.common import (
    SQLBackend,
    Transaction,
    check_database_path,
    lease_key,
    limit_room_allowed,
    translate_error,
)
from sitq.backends.sqlite import borrowed, direct, layout
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
from sitq.backends.sqlite.writelock import WRITE_PATIENCE, WriteLock
from sitq.errors import DatabaseError, DatabaseUnavailable, NotASitqDatabase

T = TypeVar("T")

#: How long a busy database is retried before giving up with a clear error.
LOCKED_DEADLINE = 120.0
#: How long a checkpoint that lets the WAL start over waits for its readers
#: (holding other writers back meanwhile; it happens once per WAL_RESTART_BYTES).
RESTART_WAIT = 0.1


#: The final statuses, which sitq_finished counts.
_FINAL = frozenset(("succeeded", "failed", "cancelled"))


class SQLiteBackend(SQLBackend):
    """Tasks in a single SQLite file (WAL mode).

    :param path: the database file; created owner-only (0600) if missing.
    :param create: create the file if it is missing (the CLI passes False so a
        mistyped path is an error rather than a new empty queue).
    :param durable: ``synchronous=FULL``, so every commit survives power loss, at
        the cost of an fsync per commit. The default (NORMAL) survives any
        process crash.
    :param busy_timeout: seconds SQLite itself waits on a lock before sitq retries.
    :param alongside: create sitq's tables in a file that already holds other
        tables (the application's own database, so it can enqueue in its own
        transactions with ``queue.using``); without it such a file is refused.
    """

    SQL, SCHEMA_VERSION, MIGRATIONS = SQL, q.SCHEMA_VERSION, q.MIGRATIONS
    dialect = "sqlite"
    _IN_ARRAY = "{0} IN (SELECT value FROM json_each(?{1}))"
    _PARAM = "?{0}"
    # length() of a blob is read from its record header: a big result is not loaded.
    _LENGTH = "length"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        durable: bool = False,
        busy_timeout: float = 5.0,
        alongside: bool = False,
    ) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.alongside = alongside
        check_database_path(self.path)
        self.create = create
        self.durable = durable
        self.busy_timeout = busy_timeout
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # the connection's: one statement or transaction at a time
        folder = wake_directory(self.path)
        self._wakeup = WakeupChannel(folder)
        self._write_lock = WriteLock(folder)
        self._batcher: EnqueueBatcher | None = None
        self._page_size = 4096
        self._blocking: BlockingInserter | None = None
        self._sqlite_session: SQLiteSession | None = None
        #: The file keeps tasks under integer row ids (read at connect).
        self.integer_ids = False
        self._ids = layout.IdBlock()
        # One reservation at a time (per loop; for threads, ``IdBlock.reserving``):
        # producers that run short together share it, not each write a block.
        self._reserving = asyncio.Lock()

    def describe(self) -> str:
        """The database file's path."""
        return f"sqlite database {self.path}"

    # -- connection -------------------------------------------------------

    def _bind_loop(self) -> None:
        super()._bind_loop()
        self._lock = asyncio.Lock()  # asyncio locks belong to one loop
        self._reserving = asyncio.Lock()

    async def _open(self) -> None:
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
            raise DatabaseError(f"cannot open {self.describe()}: {exc}") from exc
        self._conn = conn
        try:
            if not direct.supported(conn):
                raise DatabaseError(
                    f"aiosqlite {getattr(aiosqlite, '__version__', '?')} cannot run a "
                    "transaction whole on its thread, as sitq's worker needs: install "
                    "the aiosqlite version sitq's requirements name"
                )
            await conn.create_function("sitq_wait_write_lock", 1, self._write_lock.wait)
            await conn.create_function("sitq_release_write_lock", 1, self._write_lock.release)
            await self._refuse_a_foreign_file()
            await self._configure()
            await self._migrate()
            self.integer_ids = await layout.has_integer_ids(_SQLiteTransaction(conn, set()))
            self._batcher = EnqueueBatcher(
                self.path,
                self._enqueue_in_thread,
                self._checkpoint,
                lambda: self._wakeup.notify("tasks"),
                fast=not self.durable,
            )
        except BaseException:
            self._conn = None
            await conn.close()
            self._write_lock.close()
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

    async def _refuse_a_foreign_file(self) -> None:
        """Refuse another application's database before anything writes to it:
        switching it to WAL would rewrite its header (``_migrate`` checks again,
        inside its write transaction)."""
        if self.alongside:
            return
        conn = self._connection()
        try:
            ours, tables = next(iter(await conn.execute_fetchall(SQL.file_tables)))
            if not ours and tables:
                raise self._foreign_tables()
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc

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
            ours, tables = next(iter(await conn.execute_fetchall(SQL.file_tables)))
            if not ours:
                if tables and not self.alongside:
                    raise self._foreign_tables()
                return None
            rows = list(await conn.execute_fetchall(SQL.read_schema_version))
            return int(rows[0][0]) if rows else None

        async def upgrade() -> None:
            await self._upgrade(
                _SQLiteTransaction(conn, set()), await read_version() or 0, self.path
            )

        try:
            version = await read_version()
            if version is not None and version > q.SCHEMA_VERSION:
                await upgrade()  # raises the clear error, without taking a write lock
            if version != q.SCHEMA_VERSION:
                await self._immediate(upgrade)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc

    def _foreign_tables(self) -> NotASitqDatabase:
        return NotASitqDatabase(
            f"{self.path} holds tables that are not sitq's; point --db / $SITQ_DB "
            "at a sitq database or at a new file, or, to keep sitq's tables in your "
            "application's own database (to enqueue in its transactions), add them "
            f"once with `sitq init --db {self.path} --alongside`"
        )

    async def _stored_version(self) -> int | None:
        return await asyncio.to_thread(self._read_stored_version)

    def _read_stored_version(self) -> int | None:
        """On a connection of its own that cannot create the file nor write (the
        main file is left byte for byte; the -wal and -shm files an open makes are
        removed again when it closes, unless another connection is open)."""
        path = Path(self.path)
        if not path.exists():
            return None
        if path.is_dir():
            raise DatabaseError(f"{self.path} is a directory, not a database file")
        uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        try:
            conn.execute("PRAGMA query_only = ON")
            ours, tables = conn.execute(SQL.file_tables).fetchone()
            if not ours:
                if tables:
                    raise self._foreign_tables()
                return None
            rows = conn.execute(SQL.read_schema_version).fetchall()
            return int(rows[0][0]) if rows else 0
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        finally:
            conn.close()

    async def _shut(self) -> None:
        if self._conn is None:
            return
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None
        if self._blocking is not None:
            self._blocking.close()
            self._blocking = None
        if self._sqlite_session is not None:
            await self._sqlite_session.close()  # commits its group writes in flight
        self._wakeup.close()
        async with self._lock:  # not under a statement or transaction in flight
            conn, self._conn = self._conn, None
            await conn.close()
        self._write_lock.close()

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise self._not_connected()
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
        return await asyncio.shield(
            self._locked(lambda: self._then_next_writer(operation()), writes=True)
        )

    async def _in_one_hop(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """A write transaction (a worker's claim and finish, the backend's own
        ``_transaction``), run whole on the database thread (``direct.py``),
        retried while locked. Shielded like ``_write``."""
        conn = self._connection()
        lock = self._write_lock

        async def attempt() -> T:
            try:
                if not lock.contended:
                    # Alone: taken here, so the database thread makes no system
                    # call for it (see CONTENDED_FOR). Else the database thread
                    # takes it once it runs: taken here, it would be held while that
                    # thread waits for the GIL.
                    lock.try_acquire()
                return await direct.transaction(conn, lock, body)
            finally:
                lock.release()  # unless let go on the database thread already

        return await asyncio.shield(self._locked(attempt))

    async def _then_next_writer(self, last: Awaitable[T]) -> T:
        """Await ``last``, a write transaction's last statement, and let the next
        writer in line in on the database thread right after it: queued behind it
        there, so the event loop need not hear of the commit first."""
        if not (self._write_lock.held and self._write_lock.contended):
            return await last  # alone: let go on the event loop (see CONTENDED_FOR)
        hold = self._write_lock.hold
        release = self._connection().execute("SELECT sitq_release_write_lock(?)", (hold,))
        # gather starts both at once, in order, so aiosqlite's thread runs the release
        # right after ``last``. Both run to the end, and the release names its hold:
        # a stale one cannot end this connection's next transaction's hold.
        value, released = await asyncio.gather(last, release, return_exceptions=True)
        if isinstance(value, BaseException):
            raise value
        if isinstance(released, BaseException):
            self._write_lock.release()
        return value

    async def _locked(self, operation: Callable[[], Awaitable[T]], *, writes: bool = False) -> T:
        # The lock is taken inside the shield, so a cancelled caller never lets
        # another coroutine in while this connection is mid-transaction.
        async with self._lock:
            conn = self._connection()  # closed meanwhile: say so
            if not writes:
                return await self._retry_locked(operation)
            # In line for the write lock (see writelock.py): waited for on the
            # database thread, and only when another process of sitq's writes.
            try:
                if not self._write_lock.try_acquire():
                    await conn.execute_fetchall("SELECT sitq_wait_write_lock(?)", (WRITE_PATIENCE,))
                return await self._retry_locked(operation)
            finally:
                self._write_lock.release()

    async def _immediate(
        self, body: Callable[[], Awaitable[T]], begin: str = "BEGIN IMMEDIATE"
    ) -> T:
        """``body`` inside ``BEGIN IMMEDIATE`` (or ``begin``) ... ``COMMIT``, retried
        while locked. Shielded: a caller cancelled mid-way does not leave the
        connection inside an open transaction.
        """
        conn = self._connection()

        async def attempt() -> T:
            await conn.execute(begin)
            try:
                value = await body()
            except BaseException:
                if conn.in_transaction:  # not if SQLite rolled back itself (disk full)
                    await conn.execute("ROLLBACK")
                raise
            await self._then_next_writer(conn.execute("COMMIT"))
            return value

        return await asyncio.shield(self._locked(attempt, writes="IMMEDIATE" in begin))

    async def _fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        conn = self._connection()
        return list(await self._locked(lambda: conn.execute_fetchall(sql, params)))

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        conn = self._connection()
        return int((await self._write(lambda: conn.execute(sql, params))).rowcount)

    async def _transaction(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        """The backend's own transactions (``common.py``'s bodies): run whole in one
        hop (``direct.py``), so no loop turn falls inside the write lock."""
        woken: set[WakeKind] = set()

        def whole(conn: sqlite3.Connection) -> T:
            woken.clear()  # a retry starts over
            return direct.run_to_end(body(direct.InlineTransaction(conn, woken)))

        async def committed() -> T:
            value = await self._in_one_hop(whole)
            for kind in woken:
                self._wakeup.notify(kind)
            return value

        # Shielded with its wake-ups: a caller cancelled meanwhile still has them sent.
        return await asyncio.shield(committed())

    async def _stepwise_transaction(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        """A layer's transaction (``StoreSession.transaction``): its body may await
        more than its statements, so each statement is a hop of its own."""
        conn = self._connection()
        woken: set[WakeKind] = set()

        async def attempt() -> T:
            woken.clear()
            return await body(_SQLiteTransaction(conn, woken))

        value = await self._immediate(attempt)
        for kind in woken:
            self._wakeup.notify(kind)
        return value

    async def _snapshot(self, body: Callable[[Transaction], Awaitable[T]]) -> T:
        # A deferred transaction reads one snapshot of the WAL, and takes no lock.
        conn = self._connection()

        def whole(raw: sqlite3.Connection) -> T:
            return direct.run_to_end(body(direct.InlineTransaction(raw, set())))

        return await asyncio.shield(self._locked(lambda: direct.snapshot(conn, whole)))

    def _array(self, values: Sequence[Any]) -> str:
        """A list as one JSON text parameter (read with ``json_each``)."""
        return json.dumps(list(values))

    async def _lookup(self, task_ids: Sequence[str]) -> Sequence[str]:
        if not self.integer_ids:
            return task_ids
        kept = [task_id for task_id in task_ids if layout.is_row_id(task_id)]
        if len(kept) < len(task_ids):
            # An id of another form: the file may keep text ids since this
            # connected (``sitq migrate`` of text ids into an empty new file).
            rows = await self._fetch(SQL.task_id_column_type)
            if not (rows and str(rows[0][0]).upper() == "INTEGER"):
                self.integer_ids = False
                self._ids.drop()
                return task_ids
        return kept

    def _rows(self, rows: Sequence[Sequence[Any]]) -> tuple[str]:
        return (json.dumps([list(row) for row in rows]),)

    def _marks(self, marks: Sequence[tuple[Lease, float]]) -> tuple[str]:
        """Start marks as mark_started's parameter: [id, worker_id, attempt, started_at] each."""
        return self._rows([(*lease_key(lease), when) for lease, when in marks])

    # -- producer side ----------------------------------------------------

    def task_ids(self, count: int) -> list[str] | None:
        """Ids from the block this instance reserved (None when it runs short), or
        text ids in a file that keeps them (see :mod:`sitq.backends.sqlite.layout`)."""
        if not self.integer_ids:
            return text_task_ids(count)
        return self._ids.take(count)

    async def reserve_task_ids(self, count: int) -> list[str]:
        """Reserve a block of ids (at least ``count``) in one short write; the
        first ``count`` of it."""
        if not self.integer_ids:
            return text_task_ids(count)
        size = max(count, layout.ID_BLOCK)

        async def reserve(tx: Transaction) -> int:
            return self._reserved(await tx.fetch(SQL.reserve_task_ids, (size,)))

        async with self._reserving:
            ids = self._ids.take(count)  # another producer may have just reserved
            if ids is not None:
                return ids
            return self._ids.refill(await self._transaction(reserve), size, count)

    def _reserved(self, rows: Sequence[Sequence[Any]]) -> int:
        """The first id of a block reserved (reserve_task_ids' rows)."""
        if not rows or rows[0][0] is None:
            raise DatabaseError(
                f"{self.describe()} keeps integer task ids but its id counter (sitq_meta "
                "'next_task_id') is missing: restore it from a backup, or move the tasks "
                "to a new file with `sitq migrate`"
            )
        return int(rows[0][0])

    def reserve_task_ids_blocking(self, count: int) -> list[str]:
        """:meth:`reserve_task_ids` from plain code, on the calling thread."""
        if not self.integer_ids:
            return text_task_ids(count)
        size = max(count, layout.ID_BLOCK)
        with self._ids.reserving:
            ids = self._ids.take(count)  # another thread may have just reserved
            if ids is not None:
                return ids
            deadline = time.monotonic() + LOCKED_DEADLINE
            try:
                row = self._blocking_inserter().fetch_one(SQL.reserve_task_ids, (size,), deadline)
            except sqlite3.Error as exc:
                raise self._blocking_write_error(exc) from exc
            return self._ids.refill(self._reserved([] if row is None else [row]), size, count)

    async def use_text_ids(self) -> bool:
        """Keep tasks under text ids from now on, as files before schema version
        13 do, if no task is stored yet (for ``sitq migrate``, which copies text
        ids from another database); True if the file now keeps text ids."""

        async def rebuild(tx: Transaction) -> bool:
            return await layout.rebuild(tx, integer=False)

        if await self._transaction(rebuild):
            self.integer_ids = False
            self._ids.drop()
        return not self.integer_ids

    def reserves_ids(self) -> bool:
        """See :meth:`SQLBackend.reserves_ids`: in a file with integer ids."""
        return self.integer_ids

    def reserve_body(self, count: int) -> Callable[[Transaction], Awaitable[list[str]]]:
        """See :meth:`SQLBackend.reserve_body`."""

        async def reserve(tx: Transaction) -> list[str]:
            start = self._reserved(await tx.fetch(SQL.reserve_task_ids, (count,)))
            return layout.id_range(start, count)

        return reserve

    async def _upgraded(self, tx: Transaction, version: int, start: int) -> None:
        # A new file takes integer ids. One made by an older sitq keeps text ids,
        # even empty: a process of that sitq may still be writing to it.
        if version == 13 and start == 0:
            await layout.rebuild(tx, integer=True)

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
        try:
            self._blocking_inserter().insert(tasks, time.monotonic() + LOCKED_DEADLINE)
        except sqlite3.Error as exc:
            raise self._blocking_write_error(exc) from exc
        self._wakeup.notify_threadsafe("tasks")
        return True

    def _blocking_write_error(self, exc: sqlite3.Error) -> Exception:
        """The SitqError for a failed write from plain code."""
        error = self._write_error(exc)  # a read-only database, named as such
        if error is exc:  # else a StorageError that names e.g. a full disk
            error = translate_error(exc, self) or DatabaseError(
                f"cannot enqueue into {self.describe()}: {exc}"
            )
        return error

    def _blocking_inserter(self) -> BlockingInserter:
        self._connection()
        if self._blocking is None:
            self._blocking = BlockingInserter(
                self.path, self.busy_timeout, "FULL" if self.durable else "NORMAL"
            )
        return self._blocking

    async def _enqueue_in_thread(self, rows: list[tuple[Any, ...]]) -> None:
        if len(rows) == 1:
            await self._execute(SQL.insert_task, rows[0])
        else:
            conn = self._connection()
            await self._immediate(lambda: conn.executemany(SQL.insert_task, rows))

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

    # -- worker side ------------------------------------------------------

    async def _count_released(self, tx: Transaction, params: Sequence[Any]) -> None:
        """The tasks release ends, counted (schema version 12; see ``count_finished``)."""
        await tx.execute(SQL.count_released, params)

    async def _count_reclaimed(self, tx: Transaction, now: float) -> None:
        """The tasks reclaim_expired ends, counted (see ``_count_released``)."""
        await tx.execute(SQL.count_reclaimed, (now, LOST_LEASE_LIMIT))

    async def _claim_ready(
        self, worker_id: str, queues: Sequence[str], room: int, now: float, expires: float
    ) -> list[Any]:
        sql = SQL.claim_ready.format(queues=",".join("?" * len(queues)))
        params = [worker_id, expires, *queues, now, room]
        return await self._in_one_hop(lambda conn: conn.execute(sql, params).fetchall())

    async def _claim_limited(
        self, worker_id: str, queues: Sequence[str], room: int, now: float, expires: float
    ) -> list[Any]:
        """Claim tasks under limits, in one write transaction, so the room each
        limit has left cannot change between counting it and claiming. A read
        first keeps that transaction away while no limited task can start."""
        rooms = await self._fetch(SQL.limit_room, {"now": now})
        if not any(limit_room_allowed(row, room) > 0 for row in rooms):
            return []
        sql = SQL.claim_limited.format(queues=",".join("?" * len(queues)))

        def body(conn: sqlite3.Connection) -> list[Any]:
            # The clock read once the write lock is held: ``now`` may be from before
            # a wait for it, and starts stamped that early would leave their window
            # early and let the next claimer start too many.
            at = self.now()
            taken: list[Any] = []
            for row in conn.execute(SQL.limit_room, {"now": at}).fetchall():
                key, per_seconds = row[0], row[3]
                allowed = min(room - len(taken), limit_room_allowed(row, room))
                if allowed <= 0:
                    continue
                params = (worker_id, expires, *queues, at, key, allowed)
                claimed = conn.execute(sql, params).fetchall()
                if claimed and per_seconds is not None:
                    conn.executemany(SQL.record_start, [(key, at)] * len(claimed))
                    conn.execute(SQL.forget_starts, (key, at - per_seconds))
                taken += claimed
            return taken

        return await self._in_one_hop(body)

    async def finish(
        self,
        items: Sequence[tuple[Lease, Outcome]],
        started: Sequence[tuple[Lease, float]] = (),
    ) -> list[bool]:
        """Record outcomes and start marks; each applies only if its lease is still held."""
        if not items:
            if started:
                await self._execute(SQL.mark_started, self._marks(started))
            return []
        now = self.now()
        ttl = self.default_result_ttl
        # Each outcome takes its task's start mark; what is left marks tasks still running.
        starts = {lease.task_id: when for lease, when in started}
        final: list[tuple[Any, ...]] = []
        retries: list[tuple[Any, ...]] = []
        for lease, o in items:
            started_at = starts.pop(lease.task_id, None)
            row = (
                o.status,
                o.result,
                o.error,
                o.traceback,
                now,
                ttl,
                started_at,
                *lease_key(lease),
            )
            if o.status == "queued":
                retries.append((*row, o.retry_at))
            else:
                final.append(row)
        marked = [m for m in started if m[0].task_id in starts] if starts else []
        running = self._marks(marked) if marked else None
        # More changes than these statements' own rows (one per finish, one per start
        # marked apart; other starts ride in their finish row): the dependency
        # trigger made dependents due.
        expected = len(items) + len(marked)

        def body(conn: sqlite3.Connection) -> tuple[int, bool]:
            before = conn.total_changes
            count = ended = 0
            if running is not None:
                conn.execute(SQL.mark_started, running)
            if final:
                count = ended = _finish_rows(conn, final)
            if retries:
                count += conn.executemany(SQL.finish_or_retry, retries).rowcount
            released = conn.total_changes - before > expected
            # What this finish ended is counted here (schema version 12).
            if count:
                self._count_finish(conn, items, now, every_final_applied=ended == len(final))
            return count, released

        count, released_dependents = await self._in_one_hop(body)
        if count == len(items):
            applied = [True] * len(items)
        elif len(items) == 1:
            applied = [False]  # refused: its lease was lost
        else:
            applied = await self._finished_by(items, now)
        if any(outcome.status != "queued" for _, outcome in items):
            self._wakeup.notify("results")
        if released_dependents or any(o.status == "queued" or lease.limited for lease, o in items):
            self._wakeup.notify("tasks")  # due now: a retry, a dependent, a limit's room
        return applied

    def _count_finish(
        self,
        conn: sqlite3.Connection,
        items: Sequence[tuple[Lease, Outcome]],
        now: float,
        *,
        every_final_applied: bool,
    ) -> None:
        """Count in sitq_finished the tasks a finish at ``now`` just ended, inside
        its transaction. When every outcome was final and applied, and the leases
        name their queues (a worker's do; a lease's queue must be its task's), by
        those: one upsert per queue and status. Else (a lease was lost, a retry may
        have ended cancelled) by reading back the rows that hold this finish's time
        under their lease."""
        groups: dict[tuple[str, str], int] = {}
        if every_final_applied:
            for lease, outcome in items:
                if lease.queue is None or outcome.status not in _FINAL:
                    break
                key = (lease.queue, outcome.status)
                groups[key] = groups.get(key, 0) + 1
            else:
                ended = [(now, queue, state, n) for (queue, state), n in groups.items()]
                conn.executemany(SQL.count_ended, ended)
                return
        # Each lease once: a lease given twice is still one task ended.
        leases = self._rows(list(dict.fromkeys(lease_key(lease) for lease, _ in items)))[0]
        conn.execute(SQL.count_finished, (now, leases))

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

    async def wait_for_change(self, kind: WakeKind, timeout: float) -> None:
        """Wait for a wake-up from any process on this database, or ``timeout``."""
        self._connection()
        with contextlib.suppress(RuntimeError):
            # Deaf, a worker looking for tasks polls instead (see Backend).
            deaf = DEAF_POLL if kind == "tasks" else None
            await self._wakeup.wait(kind, timeout, deaf_timeout=deaf)
            return
        await asyncio.sleep(timeout)

    # -- the application's own transaction ---------------------------------

    def _adapt(self, connection: Any) -> DriverConnection:
        return borrowed.adapt(connection)

    def _blocking_driver(self, connection: Any) -> bool:
        return isinstance(connection, sqlite3.Connection)

    async def _borrow_reference(self) -> object:
        return self.path

    async def _borrow_check(self, adapter: DriverConnection, reference: object) -> None:
        await borrowed.check_same_database(adapter, str(reference), self.describe())

    def wake_workers(self) -> None:
        """Wake this database's idle workers (in every process) now: after a commit
        of tasks enqueued on the application's connection, whose wake-up SQLite
        cannot carry. Safe from any thread; never raises."""
        self._wakeup.notify_threadsafe("tasks")

    def store_session(self) -> SQLiteSession:
        """SQL on this database for the layers' stores (see ``StoreSession``)."""
        if self._sqlite_session is None:
            self._sqlite_session = SQLiteSession(self)
        return self._sqlite_session


#: The most outcomes one ``finish_rows`` statement takes: ten parameters each,
#: under 999, the fewest a statement may have in any SQLite build's default.
FINISH_ROWS_MAX = 64
_NO_OUTCOME = (None,) * 10  # a row of finish_rows that matches no task
_finish_statements: dict[int, str] = {}


def _finish_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Apply finish ``rows`` (finish's parameters each) in as few statements as
    can be (``finish_rows``); return how many applied. Each statement is padded to
    a power of two rows, so that a handful of texts stay in the statement cache."""
    applied = 0
    for start in range(0, len(rows), FINISH_ROWS_MAX):
        chunk = list(rows[start : start + FINISH_ROWS_MAX])
        size = 1 << (len(chunk) - 1).bit_length()
        sql = _finish_statements.get(size)
        if sql is None:
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * size)
            sql = _finish_statements[size] = SQL.finish_rows.replace("{values}", values)
        chunk += [_NO_OUTCOME] * (size - len(chunk))
        applied += conn.execute(sql, [value for row in chunk for value in row]).rowcount
    return applied


class _SQLiteTransaction:
    """Statements in one of :meth:`SQLiteBackend._stepwise_transaction`'s
    transactions, each a hop to the database thread."""

    def __init__(self, conn: aiosqlite.Connection, woken: set[WakeKind]) -> None:
        self._conn = conn
        self._woken = woken

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""
        return list(await self._conn.execute_fetchall(sql, params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""
        return int((await self._conn.execute(sql, params)).rowcount)

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` (the workers are woken after the commit)."""
        if tasks:
            await self._conn.executemany(SQL.insert_task, tasks)  # NewTask rows bind as they are
            self._woken.add("tasks")

    async def wake(self, kind: WakeKind) -> None:
        """Wake the waiters on ``kind`` after the commit."""
        self._woken.add(kind)
