"""The SQLite write hand-over (``writelock.py``) and the worker's one-hop
transactions (``direct.py``): writers take turns through a lock file in the
database's wake-up folder, a stuck or dead holder never stops the others, and a
failed transaction rolls back and lets the next writer in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiosqlite
import jobs
import pytest
from support import subprocess_env, until_listening, wait_until

from sitq import TaskQueue, TaskStatus, Worker
from sitq.backends.sqlite import SQLiteBackend, direct
from sitq.backends.sqlite.wakeup import wake_directory
from sitq.backends.sqlite.writelock import LOCK_NAME, WriteLock

HOLDER = """
import sys
from sitq.backends.sqlite.writelock import WriteLock
lock = WriteLock(__import__("pathlib").Path(sys.argv[1]))
assert lock.try_acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
"""


def _holder(folder: Path) -> subprocess.Popen[str]:
    """Another process that takes the write lock and keeps it."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def test_writers_take_turns_and_the_last_one_out_removes_the_file(tmp_path: Path) -> None:
    folder = wake_directory(str(tmp_path / "tasks.db"))
    first, second = WriteLock(folder), WriteLock(folder)
    try:
        assert first.try_acquire()
        assert not second.try_acquire()  # two open files: apart even in one process
        assert second.wait(0.02) == 0  # its patience ran out: it writes anyway
        first.release()
        assert second.try_acquire()
        assert not first.try_acquire()
        second.release()
    finally:
        first.close()
        second.close()
    assert not folder.exists()  # the wake-up folder is tidied away as before


def test_a_lock_file_removed_by_a_closing_process_is_opened_again(tmp_path: Path) -> None:
    """A process that closes the database while no one writes removes the file; a
    writer still holding the old one must queue on the new one, or it and a newcomer
    would both think they hold the lock."""
    folder = wake_directory(str(tmp_path / "tasks.db"))
    staying, leaving = WriteLock(folder), WriteLock(folder)
    assert staying.try_acquire()
    staying.release()
    assert leaving.try_acquire()
    leaving.release()
    leaving.close()
    assert not (folder / LOCK_NAME).exists()
    newcomer = WriteLock(folder)
    try:
        assert staying.try_acquire()
        assert (folder / LOCK_NAME).exists()
        assert not newcomer.try_acquire()
    finally:
        staying.close()
        newcomer.close()


async def test_a_holder_that_never_lets_go_delays_writers_only_by_their_patience(
    tmp_path: Path,
) -> None:
    """Another process keeps the lock (its loop is blocked, say): this process's
    writes each wait WRITE_PATIENCE (0.1 s), then go to SQLite, and the work gets
    done (a writer that waited for the lock without end would time out here). Once
    the holder is SIGKILLed, the lock is free at once."""
    db = tmp_path / "tasks.db"
    async with TaskQueue(db) as queue:
        child = _holder(wake_directory(str(db)))
        try:
            worker = Worker(db, concurrency=2)
            await worker.start()
            try:
                ids = [await queue.enqueue(jobs.add, i, 1) for i in range(5)]
                results = [await queue.get_result(task_id, timeout=30) for task_id in ids]
            finally:
                await worker.stop(timeout=10)
            assert [r.value if r else None for r in results] == [1, 2, 3, 4, 5]
            assert all(r is not None and r.status is TaskStatus.SUCCEEDED for r in results)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
        lock = WriteLock(wake_directory(str(db)))
        try:
            assert lock.try_acquire()  # the dead holder's lock went with its process
        finally:
            lock.close()


async def test_a_failed_hot_path_transaction_rolls_back_and_lets_the_next_writer_in(
    tmp_path: Path,
) -> None:
    db = tmp_path / "tasks.db"
    async with TaskQueue(db):
        pass  # creates the schema
    folder = wake_directory(str(db))
    lock = WriteLock(folder)

    def body(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO sitq_meta (key, value) VALUES ('probe', 'x')")
        raise ValueError("the body failed")

    async with aiosqlite.connect(db, isolation_level=None) as conn:
        assert direct.supported(conn)  # else every worker would refuse to start
        other = WriteLock(folder)
        try:
            assert other.try_acquire()
            assert not lock.try_acquire()  # another process wants it: contended
            other.release()
            with pytest.raises(ValueError, match="the body failed"):
                await direct.transaction(conn, lock, body)
            assert other.try_acquire()  # let go on the database thread, despite the error
            other.release()
            assert not conn.in_transaction
            selected = await direct.transaction(
                conn, lock, lambda c: c.execute("SELECT 1").fetchall()
            )
            assert selected == [(1,)]
        finally:
            other.close()
            lock.close()
    with sqlite3.connect(db) as check:
        probes = check.execute("SELECT count(*) FROM sitq_meta WHERE key = 'probe'").fetchone()
    assert probes == (0,)


async def test_a_refused_statement_lets_the_next_writer_in(tmp_path: Path) -> None:
    """The aiosqlite path releases on the database thread right after the statement,
    also when SQLite refuses it."""
    db = tmp_path / "tasks.db"
    backend = SQLiteBackend(db)
    await backend.connect()
    try:
        with pytest.raises(sqlite3.IntegrityError):
            await backend._execute(
                "INSERT INTO sitq_meta (key, value) VALUES ('schema_version', 0)"
            )
        other = WriteLock(wake_directory(str(db)))
        try:
            assert other.try_acquire()
        finally:
            other.close()
        assert await backend._execute("UPDATE sitq_meta SET value = value WHERE 0") == 0
    finally:
        await backend.close()


def _status_on_disk(db: Path, task_id: str) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (status,) = conn.execute(
            "SELECT status FROM sitq_tasks WHERE id = ?", (task_id,)
        ).fetchone()
    return str(status)


async def test_the_backend_s_own_transactions_commit_while_the_event_loop_is_stalled(
    tmp_path: Path,
) -> None:
    """A cancel (one of the backend's own multi-statement transactions, like a
    heartbeat or a reclaim) that waited for SQLite's lock runs to its commit on the
    database thread once the lock frees, with the event loop stalled: it does not
    hold the file's write lock until its loop gets round to the next statement."""
    db = tmp_path / "tasks.db"
    async with TaskQueue(db) as queue:
        task_id = await queue.enqueue(jobs.add, 1, 2)
        other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        let_go = threading.Timer(0.1, other.execute, ("COMMIT",))
        try:
            other.execute("BEGIN IMMEDIATE")  # another process's writer holds the file
            cancel = asyncio.ensure_future(queue.cancel(task_id))
            for _ in range(20):  # loop turns, no waiting: the cancel reaches its thread
                await asyncio.sleep(0)
            assert not cancel.done()  # it waits for the lock
            let_go.start()
            # The loop stalls here (a blocking poll on the loop's own thread).
            wait_until(
                lambda: _status_on_disk(db, task_id) == "cancelled",
                timeout=5.0,
                what="the cancel to commit while the event loop is stalled",
            )
            assert await cancel is True
        finally:
            let_go.cancel()
            if let_go.is_alive():
                let_go.join()
            other.close()


async def test_a_backend_transaction_that_waits_for_the_loop_is_refused_and_rolled_back(
    tmp_path: Path,
) -> None:
    """The one-hop bodies must await only their statements: one that waits for
    anything else is a bug, named as such, and leaves nothing behind."""
    db = tmp_path / "tasks.db"
    backend = SQLiteBackend(db)
    await backend.connect()
    try:

        async def body(tx: Any) -> None:
            await tx.execute("INSERT INTO sitq_meta (key, value) VALUES ('probe', 'x')")
            await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="waited for the event loop"):
            await backend._transaction(body)
        assert await backend._fetch("SELECT value FROM sitq_meta WHERE key = 'probe'") == []
        assert await backend._execute("UPDATE sitq_meta SET value = value WHERE 0") == 0
    finally:
        await backend.close()


async def test_a_transaction_whose_caller_is_cancelled_still_commits_and_wakes(
    tmp_path: Path,
) -> None:
    """A cancel whose caller gives up while it waits for the lock still commits
    on the database thread, and its wake-up still reaches a listener."""
    db = tmp_path / "tasks.db"
    listener = SQLiteBackend(db)
    async with TaskQueue(db) as queue:
        await listener.connect()
        other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        try:
            task_id = await queue.enqueue(jobs.add, 1, 2)
            await until_listening(listener, "results")
            heard = asyncio.ensure_future(listener.wait_for_change("results", 30.0))
            other.execute("BEGIN IMMEDIATE")  # the cancel waits for this writer
            cancel = asyncio.ensure_future(queue.cancel(task_id))
            for _ in range(20):  # loop turns, no waiting: the cancel reaches its thread
                await asyncio.sleep(0)
            cancel.cancel()  # its caller gives up
            other.execute("COMMIT")
            started = time.monotonic()
            await asyncio.wait_for(heard, 15.0)
            assert time.monotonic() - started < 10.0  # woken, not timed out
            assert await queue.status(task_id) == TaskStatus.CANCELLED
        finally:
            other.close()
            await listener.close()


async def test_a_read_snapshot_whose_body_raises_ends_and_raises_that_error(
    tmp_path: Path,
) -> None:
    db = tmp_path / "tasks.db"
    backend = SQLiteBackend(db)
    await backend.connect()
    try:

        async def body(tx: Any) -> None:
            await tx.fetch("SELECT 1")
            raise LookupError("the body's own error")

        with pytest.raises(LookupError, match="the body's own error"):
            await backend._snapshot(body)
        assert not backend._connection().in_transaction  # the snapshot ended
    finally:
        await backend.close()
