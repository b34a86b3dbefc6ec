"""Fast enqueue paths for the SQLite backend.

Handing every enqueue to aiosqlite's database thread costs a thread hop (about
100 µs on a small VM), more than the INSERT itself (about 20 µs in WAL mode
with ``synchronous=NORMAL``: a write to the page cache, no fsync). So:

- ``EnqueueBatcher`` gathers the enqueues of one event-loop iteration (group
  commit: 100 coroutines enqueueing at once cost one transaction) and tries to
  commit them on the loop thread itself, on its own connection with no busy
  wait. If another process holds the write lock, or the batch is large, or
  every commit must fsync (``durable``), it hands the batch to the database
  thread, which waits for the lock as usual. Either way an enqueue returns
  only once its row is committed.
- ``BlockingInserter`` serves ``SyncTaskQueue``: plain code may block, so it
  inserts on the caller's own thread, with a connection per thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from sitq.backends.sqlite.schema import SQL
from sitq.errors import NotConnected

Row = tuple[Any, ...]

logger = logging.getLogger("sitq.backends.sqlite")

#: Batches larger than this go to the database thread (the loop must not stall).
FAST_PATH_MAX_ROWS = 256
#: The loop-thread connections never checkpoint (that can fsync). Each
#: estimates what its commits add to the WAL, and after about this many bytes
#: the database thread runs a checkpoint instead (see ``WalKeeper``).
CHECKPOINT_BYTES = 8 << 20
_COMMIT_BYTES = 12 << 10  # a commit rewrites a few pages: table, indexes
_ROW_BYTES = 512  # a row's share of those pages, besides its payload
#: Once the WAL holds more than this, a checkpoint holds the loop-thread
#: commits back for a moment so that the WAL can start over.
WAL_RESTART_BYTES = 32 << 20
#: Every connection sets ``journal_size_limit``: when the WAL starts over, a
#: file grown larger (by one huge transaction) shrinks to this.
JOURNAL_SIZE_LIMIT = 64 << 20


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says another connection holds the lock (worth a retry)."""
    text = str(exc)
    return "locked" in text or "busy" in text


def insert_rows(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    """Insert ``rows`` in one transaction on ``conn`` (rolled back on any error)."""
    if len(rows) == 1:
        conn.execute(SQL.insert_task, rows[0])  # a single statement is its own transaction
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(SQL.insert_task, rows)
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk does): a second
        # ROLLBACK would fail and hide the real error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class WalKeeper:
    """Keeps the WAL bounded for a connection that never checkpoints itself.

    SQLite reuses the WAL from its start only when a write begins with every
    frame already copied into the database. A checkpoint on another thread
    while the loop keeps committing never gets there, so the WAL grew by every
    byte enqueued (10 GB of tasks, a 10 GB WAL). So after about
    ``CHECKPOINT_BYTES`` of commits, a passive checkpoint copies the bulk while
    commits go on; if the WAL is then larger than ``WAL_RESTART_BYTES``, the
    owner's commits are held (``paused``) for a second, short checkpoint of what
    was added meanwhile, in RESTART mode (it waits a moment for other processes
    still reading from the WAL), and the next commit starts the WAL over. If a
    reader outlasts that wait, the next round tries again. Commits that outrun
    a checkpoint by ``2 * CHECKPOINT_BYTES`` wait for it too, as they would with
    SQLite's own automatic checkpoints.
    """

    def __init__(
        self, checkpoint: Callable[[bool], Awaitable[int]], resume: Callable[[], None]
    ) -> None:
        #: one checkpoint, passive or (True) restarting, returning the WAL's size
        #: in bytes (0 if unknown)
        self._checkpoint = checkpoint
        self._resume = resume  # commit what was held back
        self._written = 0
        self._task: asyncio.Future[None] | None = None
        self.paused = False

    def committed(self, rows: int, payload_bytes: int) -> None:
        """Count one loop-thread commit; start a checkpoint when one is due."""
        self._written += _COMMIT_BYTES + rows * _ROW_BYTES + payload_bytes
        if self._task is None:
            if self._written >= CHECKPOINT_BYTES:
                self._written = 0
                self._task = asyncio.ensure_future(self._run())
        elif self._written >= 2 * CHECKPOINT_BYTES:
            self.paused = True  # faster than the disk can copy: wait for the checkpoint

    async def _run(self) -> None:
        try:
            if await self._checkpoint(False) > WAL_RESTART_BYTES:
                self.paused = True
                await self._checkpoint(True)
        finally:
            self.paused = False
            self._task = None
            self._resume()

    async def close(self) -> None:
        """Wait for a running checkpoint (it may hold commits back)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


Item = TypeVar("Item")
T = TypeVar("T")


class GroupCommit(Generic[Item]):
    """Group commit on the loop thread when the lock is free: the one writer behind
    enqueues (``EnqueueBatcher``) and the layers' frequent small writes
    (``session.GroupWriter``).

    The items submitted in one loop iteration are committed together by
    ``commit_fast`` on a connection of the loop thread with no busy wait. If
    another process holds the lock, or every commit must fsync (``fast`` False),
    they go to ``slow_path``, on the database thread, which waits for the lock as
    usual. Either way ``submit`` returns only once its items are committed.

    :param direct_max: a submit of more items than this goes to ``slow_path`` at
        once (the loop must not stall on a large write).
    :param flush_max: more items than this gathered by one flush go to
        ``slow_path`` together (None: no bound).
    :param group_slow: without ``fast``, still gather one loop iteration's items
        into one ``slow_path`` call (else each submit is its own).
    :param weigh: (items, payload bytes) a commit adds to the WAL, for ``WalKeeper``.
    :param committed: called after each commit (a wake-up, say).
    """

    def __init__(
        self,
        path: str,
        *,
        fast: bool,
        commit_fast: Callable[[sqlite3.Connection, list[Item]], None],
        slow_path: Callable[[list[Item]], Awaitable[None]],
        checkpoint: Callable[[bool], Awaitable[int]],
        weigh: Callable[[list[Item]], tuple[int, int]],
        committed: Callable[[], None] = lambda: None,
        direct_max: int = FAST_PATH_MAX_ROWS,
        flush_max: int | None = None,
        group_slow: bool = False,
    ) -> None:
        self._commit_fast = commit_fast
        self._slow_path = slow_path
        self._weigh = weigh
        self._committed = committed
        self._direct_max = direct_max
        self._flush_max = flush_max
        self._group_slow = group_slow
        self._fast = fast
        self._wal = WalKeeper(checkpoint, self._resume)
        self._conn: sqlite3.Connection | None = None
        if fast:
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=0)
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            self._conn.execute("PRAGMA synchronous = NORMAL")
        self._closed = False
        self._items: list[Item] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._background: set[asyncio.Task[None]] = set()

    async def submit(self, items: list[Item]) -> None:
        """Return once ``items`` are committed (with whatever else is pending)."""
        if self._closed:
            raise NotConnected("the queue is closed: connect it again to enqueue")
        if len(items) > self._direct_max or (not self._fast and not self._group_slow):
            await self._slow_path(items)
            self._answer([])
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._items.extend(items)
        self._waiters.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await waiter

    def _flush(self) -> None:
        self._scheduled = False
        if self._wal.paused:
            return  # kept in self._items until the checkpoint is done (_resume)
        items, self._items = self._items, []
        waiters, self._waiters = self._waiters, []
        if not items:
            return
        if self._conn is None and self._fast:  # closed meanwhile
            _fail(waiters, NotConnected("the queue was closed before this enqueue was stored"))
            return
        if self._conn is None or (self._flush_max is not None and len(items) > self._flush_max):
            self._spawn(self._flush_slowly(items, waiters))
            return
        try:
            self._commit_fast(self._conn, items)
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                self._spawn(self._flush_slowly(items, waiters))
                return
            _fail(waiters, exc)
            return
        except Exception as exc:
            _fail(waiters, exc)
            return
        self._answer(waiters)
        self._wal.committed(*self._weigh(items))

    def _resume(self) -> None:
        if self._items and not self._scheduled and not self._closed:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _flush_slowly(self, items: list[Item], waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self._slow_path(items)
        except Exception as exc:
            _fail(waiters, exc)
            return
        except BaseException:  # cancelled (the loop is shutting down): still answer
            _fail(waiters, NotConnected("the write was interrupted: it may not be stored"))
            raise
        self._answer(waiters)

    def _answer(self, waiters: list[asyncio.Future[None]]) -> None:
        """The items are committed: run the hook, then release their waiters. A
        hook that fails is logged, not theirs to see (their items are stored)."""
        try:
            self._committed()
        except Exception:
            logger.exception("the hook after a commit failed (what was committed stays)")
        _succeed(waiters)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Finish what is in flight and close the loop-thread connection."""
        self._closed = True
        await self._wal.close()  # it may hold items back until it ends
        if self._items:
            self._flush()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class EnqueueBatcher(GroupCommit[Row]):
    """Group commit of enqueues: task rows, inserted with ``insert_rows``."""

    def __init__(
        self,
        path: str,
        slow_path: Callable[[list[Row]], Awaitable[None]],
        checkpoint: Callable[[bool], Awaitable[int]],
        committed: Callable[[], None],
        *,
        fast: bool,
    ) -> None:
        super().__init__(
            path,
            fast=fast,
            commit_fast=insert_rows,
            slow_path=slow_path,
            checkpoint=checkpoint,
            weigh=lambda rows: (len(rows), sum(len(row[3]) for row in rows)),  # payloads
            committed=committed,
        )

    async def enqueue(self, rows: list[Row]) -> None:
        """Return once ``rows`` are committed (with whatever else is pending)."""
        await self.submit(rows)


def _succeed(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def _fail(waiters: list[asyncio.Future[None]], exc: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)


class BlockingInserter:
    """Inserts from plain (non-async) code on the caller's thread."""

    def __init__(self, path: str, busy_timeout: float, synchronous: str) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def insert(self, rows: Sequence[Row], deadline: float) -> None:
        """Insert ``rows`` in one transaction, waiting for the lock until ``deadline``
        (a ``time.monotonic()`` value), then raising the last busy error."""
        self._patiently(lambda conn: insert_rows(conn, rows), deadline)

    def fetch_one(self, sql: str, params: Sequence[Any], deadline: float) -> Row | None:
        """The first row of the one statement ``sql`` (a write), waiting for the
        lock as :meth:`insert` does."""
        row: Row | None = self._patiently(
            lambda conn: conn.execute(sql, params).fetchone(), deadline
        )
        return row

    def _patiently(self, write: Callable[[sqlite3.Connection], T], deadline: float) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._path,
                isolation_level=None,
                timeout=self._busy_timeout,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        pause = 0.001
        while True:
            try:
                return write(conn)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
