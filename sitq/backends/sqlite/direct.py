"""The worker's hot path on SQLite: write transactions that run whole, in one hop,
on a database thread and connection of their own.

Through aiosqlite each statement of a transaction is a round trip to its thread,
and the next statement waits for the event loop to hear of the last one. A busy
worker's loop answers in milliseconds, and all that time the transaction holds
the file's one write lock: with two worker processes on one file the lock was
held about 90% of the drain, mostly by transactions waiting for their own loop,
and the second process added 1.1-1.2x. A claim or a finish here is one call:
it queues for the write lock (``writelock.py``), begins, runs its statements,
commits and lets the next writer in, all on this thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sitq.backends.sqlite.enqueue import JOURNAL_SIZE_LIMIT
from sitq.backends.sqlite.writelock import WRITE_PATIENCE, WriteLock

T = TypeVar("T")


class DirectWriter:
    """Write transactions given as plain functions of a ``sqlite3.Connection``,
    each run whole on this writer's thread (see the module docstring)."""

    def __init__(
        self, path: str, busy_timeout: float, synchronous: str, lock_directory: Path
    ) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        # Its own place in line: a lock shared with the backend's other connection
        # would not keep the two apart (flock excludes open files, not threads).
        self._lock = WriteLock(lock_directory)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back if it
        raises) on this writer's thread; the caller retries a busy database."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sitq-sqlite-hot")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, body)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path,
                isolation_level=None,
                timeout=self._busy_timeout,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            self._conn = conn
        return self._conn

    def _run(self, body: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connect()
        if not self._lock.try_acquire():
            self._lock.wait(WRITE_PATIENCE)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # not if SQLite rolled back itself (disk full)
                    conn.execute("ROLLBACK")
                raise
            return value
        finally:
            self._lock.release()

    async def close(self) -> None:
        """Wait for the transaction in flight, then close the connection and thread."""
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
            executor.shutdown(wait=False)
        self._lock.close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
