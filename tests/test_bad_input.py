"""Every bad input ends in a clear error naming the problem, and the worker survives."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import jobs
import pytest
from support import ServingWorker, WorkerProcess

from sitq import TaskQueue, TaskStatus, Worker
from sitq.errors import (
    ConfigurationError,
    DatabaseError,
    InvalidTask,
    NotASitqDatabase,
    SchemaVersionError,
    SerializationError,
)


async def assert_worker_still_serves(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(jobs.add, 40, 2)
    result = await queue.get_result(task_id, timeout=15)
    assert result is not None and result.value == 42


async def test_non_callable_is_rejected(queue: TaskQueue) -> None:
    with pytest.raises(InvalidTask, match="must be a callable.*got int 5"):
        await queue.enqueue(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # InvalidTask is a TypeError too
        await queue.enqueue_many("not a function", [1])  # type: ignore[arg-type]


async def test_unpicklable_argument_is_named(queue: TaskQueue) -> None:
    with pytest.raises(SerializationError, match=r"argument 2 \(lock\) cannot be serialized"):
        await queue.enqueue(jobs.add, 1, threading.Lock())
    with pytest.raises(SerializationError, match="keyword argument 'b'"):
        await queue.enqueue(jobs.add, 1, b=threading.Lock())
    assert (await queue.stats())["totals"]["queued"] == 0


async def test_unpicklable_return_value_fails_only_that_task(
    queue: TaskQueue, worker: ServingWorker
) -> None:
    task_id = await queue.enqueue(jobs.unpicklable_result)
    result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status is TaskStatus.FAILED
    assert (
        result.error
        and "return value" in result.error
        and "could not be serialized" in result.error
    )
    await assert_worker_still_serves(queue)


async def test_corrupted_payload_row_fails_only_that_task(queue: TaskQueue, db_path: Path) -> None:
    task_id = await queue.enqueue(jobs.add, 1, 2)
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE sitq_tasks SET payload = x'deadbeef' WHERE id = ?", (task_id,))
    w = Worker(db_path)
    await w.start()
    try:
        result = await queue.get_result(task_id, timeout=10)
        assert result is not None and result.status is TaskStatus.FAILED
        assert result.error and "could not be deserialized" in result.error
        assert "corrupt" in result.error
        assert result.attempts == 1  # not retried: it would fail the same way
        await assert_worker_still_serves(queue)
    finally:
        await w.stop()


async def test_function_the_worker_cannot_import(
    db_path: Path, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "hidden_tasks.py").write_text("def secret():\n    return 'found'\n")
    sys.path.insert(0, str(hidden))
    try:
        import hidden_tasks  # type: ignore[import-not-found]

        async with TaskQueue(db_path) as queue:
            task_id = await queue.enqueue(hidden_tasks.secret)
            worker = spawn_worker("--lease", "5").wait_started()
            result = await queue.get_result(task_id, timeout=20)
            assert result is not None and result.status is TaskStatus.FAILED
            assert result.error and "hidden_tasks" in result.error
            assert "--import" in result.error
            await assert_worker_still_serves(queue)
            assert worker.process.poll() is None
    finally:
        sys.path.remove(str(hidden))
        sys.modules.pop("hidden_tasks", None)


async def test_negative_delay_and_naive_eta(queue: TaskQueue) -> None:
    with pytest.raises(ConfigurationError, match="delay must be >= 0"):
        queue.with_options(delay=-1)
    with pytest.raises(ConfigurationError, match="naive"):
        queue.with_options(eta=datetime.now() + timedelta(minutes=1))
    with pytest.raises(ConfigurationError, match="unknown task option"):
        queue.with_options(retries=3)
    with pytest.raises(ConfigurationError, match="max_retries"):
        queue.with_options(max_retries=-1)
    with pytest.raises(ConfigurationError, match="timeout must be > 0"):
        queue.with_options(timeout=0)


async def test_database_in_a_missing_directory(tmp_path: Path) -> None:
    queue = TaskQueue(tmp_path / "no" / "such" / "dir" / "tasks.db")
    with pytest.raises(DatabaseError, match="directory .* does not exist"):
        await queue.connect()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory no one may create files in. Root ignores permission bits, so
    as root it is made immutable (chattr +i) instead."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(locked)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make a read-only directory as root: {made.stderr!r}")
        yield locked
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    else:
        locked.chmod(0o555)
        yield locked
        locked.chmod(0o755)


async def test_database_in_a_read_only_directory(read_only_dir: Path) -> None:
    target = read_only_dir / "tasks.db"
    with pytest.raises(DatabaseError, match=f"cannot create sqlite database {target}"):
        await TaskQueue(target).connect()
    assert not target.exists()


async def test_incompatible_schema_version(db_path: Path) -> None:
    async with TaskQueue(db_path) as queue:
        await queue.enqueue(jobs.noop)
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE sitq_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="schema version 99.*upgrade sitq"):
        await TaskQueue(db_path).connect()


async def test_a_file_that_is_not_a_sitq_database(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(NotASitqDatabase, match="not a sitq database"):
        await TaskQueue(garbage).connect()
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    with pytest.raises(NotASitqDatabase, match="tables that are not sitq's"):
        await TaskQueue(foreign).connect()


@pytest.mark.parametrize(
    "url, message",
    [("redis://localhost", "unknown database URL scheme 'redis'"), (":memory:", "database file")],
)
def test_unusable_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TaskQueue(url)
