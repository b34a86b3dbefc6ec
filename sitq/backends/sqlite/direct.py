"""The worker's hot path on SQLite: write transactions that run whole, in one hop
to the connection's database thread.

Through aiosqlite each statement of a transaction is a round trip to its thread,
and the next statement waits for the event loop to hear of the last one. A busy
worker's loop answers in milliseconds, and all that time the transaction holds
the file's one write lock: with two worker processes on one file the lock was
held about 90% of the drain, mostly by transactions waiting for their own loop,
and the second process added 1.1-1.2x. A claim or a finish here is one call: it
queues for the write lock (``writelock.py``), begins, runs its statements,
commits and lets the next writer in, all on the database thread.

The backend's other transactions (heartbeats, reclaims, releases, cancels,
prunes, dependent enqueues) are written once for both dialects as coroutines
over a ``Transaction``; here they run whole on that thread too: their statements
never wait for anything but SQLite, so ``run_to_end`` drives such a coroutine to
its end without an event loop (``InlineTransaction``). A read snapshot
(``snapshot``) runs the same way, so it pins no WAL frames across loop turns.

It runs on the backend's own aiosqlite connection and thread. A second
connection of its own was tried: the two connections then invalidated each
other's page cache on every write, which cost an idle worker 0.3 ms of latency
per task. aiosqlite has no public call that runs a function on its thread, so
this uses the one it runs every statement through (``Connection._execute``).
aiosqlite is pinned below 0.23 for it, and where it is missing ``supported``
says so and the backend refuses to open, naming the version to install.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite

from sitq.backends import base
from sitq.backends.base import NewTask, WakeKind
from sitq.backends.sqlite.schema import SQL
from sitq.backends.sqlite.writelock import WRITE_PATIENCE, WriteLock

T = TypeVar("T")


def supported(conn: aiosqlite.Connection) -> bool:
    """Whether this aiosqlite can run a whole transaction on its thread."""
    return callable(getattr(conn, "_execute", None)) and hasattr(type(conn), "_conn")


def transaction(
    conn: aiosqlite.Connection, lock: WriteLock, body: Callable[[sqlite3.Connection], T]
) -> Awaitable[T]:
    """Run ``body`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back if it
    raises) on ``conn``'s thread; the caller holds the connection (no other
    statement in flight), lets go of the write lock if this did not, and retries a
    busy database.

    Unless the caller took the lock, it is taken here, on the database thread
    (waiting for it if need be). While other processes want it (``lock.contended``)
    it is let go here too, right after the commit; else the caller lets go on the
    event loop.
    """

    def whole() -> T:
        raw: sqlite3.Connection = conn._conn  # raises ValueError once closed
        try:
            if not lock.held:
                lock.wait(WRITE_PATIENCE)
            raw.execute("BEGIN IMMEDIATE")
            try:
                value = body(raw)
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:  # not if SQLite rolled back itself (disk full)
                    raw.execute("ROLLBACK")
                raise
            return value
        finally:
            if lock.contended:
                lock.release()

    run: Callable[[Callable[[], T]], Awaitable[Any]] = conn._execute
    return run(whole)


def snapshot(conn: aiosqlite.Connection, body: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
    """Run ``body`` inside a deferred ``BEGIN`` ... ``COMMIT`` (one snapshot of the
    WAL, no write lock) on ``conn``'s thread; the caller holds the connection."""

    def whole() -> T:
        raw: sqlite3.Connection = conn._conn
        raw.execute("BEGIN")
        try:
            value = body(raw)
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")  # a read: this only ends the snapshot
        return value

    run: Callable[[Callable[[], T]], Awaitable[Any]] = conn._execute
    return run(whole)


def run_to_end(body: Awaitable[T]) -> T:
    """Drive ``body``, a transaction body over an ``InlineTransaction``, to its end
    on the calling (database) thread. It awaits only its statements, which never
    suspend; one that does is a bug in sitq, closed here with a RuntimeError."""
    return base.run_to_end(
        body,
        "a backend transaction waited for the event loop on the database thread: "
        "its body must await only its transaction's statements",
    )


class InlineTransaction:
    """Statements in a transaction run whole on the database thread: the
    ``Transaction`` the backend's shared bodies are written against, on the raw
    sqlite3 connection (its coroutines return at once)."""

    def __init__(self, conn: sqlite3.Connection, woken: set[WakeKind]) -> None:
        self._conn = conn
        self._woken = woken

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """The rows of ``sql``."""
        return self._conn.execute(sql, params).fetchall()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run ``sql``; the rows it changed."""
        return self._conn.execute(sql, params).rowcount

    async def insert_tasks(self, tasks: Sequence[NewTask]) -> None:
        """Insert ``tasks`` (the workers are woken after the commit)."""
        if tasks:
            self._conn.executemany(SQL.insert_task, tasks)  # NewTask rows bind as they are
            self._woken.add("tasks")

    async def wake(self, kind: WakeKind) -> None:
        """Wake the waiters on ``kind`` after the commit."""
        self._woken.add(kind)
