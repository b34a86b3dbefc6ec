"""Every bad input ends in a clear error naming the problem, and the worker survives."""

from __future__ import annotations

import functools
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jobs
import pytest
from support import SITQ, ServingWorker, WorkerProcess, subprocess_env

from sitq import TaskQueue, TaskStatus, Worker
from sitq.errors import (
    ConfigurationError,
    CorruptRow,
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


async def test_a_call_the_function_cannot_take_is_refused_at_enqueue(queue: TaskQueue) -> None:
    """Python's own reason, the function's signature, and nothing stored: the task
    could only have failed in the worker."""
    refusals: list[tuple[Callable[[], Any], str]] = [
        (lambda: queue.enqueue(jobs.add, 1), r"jobs\.add\(a, b\): missing .* 'b'"),
        (lambda: queue.enqueue(jobs.add, 1, 2, 3), "too many positional arguments"),
        (lambda: queue.enqueue(jobs.add, 1, c=3), "missing a required argument: 'b'"),
        (lambda: queue.enqueue(jobs.add, 1, 2, c=3), "unexpected keyword argument 'c'"),
        (lambda: queue.enqueue(jobs.keyword_only, 1), "missing a required argument: 'key'"),
        (lambda: queue.enqueue(jobs.Counter().bump), "missing a required argument: 'by'"),
        (
            lambda: queue.enqueue_many(jobs.add, [(1, 2), (1, 2, 3)]),
            r"\(item 1 of enqueue_many\): too many .* wrap a tuple meant as one argument",
        ),
        (lambda: queue.with_options(queue="other").enqueue_many(jobs.add, [1, 2]), "item 0"),
    ]
    for attempt, message in refusals:
        with pytest.raises(InvalidTask, match=message):
            await attempt()
    with pytest.raises(InvalidTask, match="missing"):
        queue.schedule(jobs.add, 1, every=60, name="bad-args")
    handle = queue.task(jobs.add, name="test_bad_input.add")
    with pytest.raises(InvalidTask, match="too many positional"):
        await handle.enqueue(1, 2, 3)
    assert (await queue.stats())["totals"]["queued"] == 0
    # What binds is accepted, and callables without a readable code are left alone.
    accepted = [
        await queue.enqueue(jobs.add, 1, b=2),
        await queue.enqueue(jobs.keyword_only, 1, key=2),
        await queue.enqueue(jobs.echo_kwargs, 1, 2, 3, x=4),
        await queue.enqueue(jobs.Counter().bump, 3),
        await queue.enqueue(functools.partial(jobs.add, 1), 2, 3),
        await queue.enqueue(max, 1, 2),
        *await queue.enqueue_many(jobs.add, [(1, 2), (3, 4)]),
    ]
    assert (await queue.stats())["totals"]["queued"] == len(accepted)


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


FRAGILE_IMPORTS = {
    "raise": ("raise RuntimeError('FRAGILE_CONFIG is not set')", "RuntimeError: FRAGILE_CONFIG"),
    # SystemExit is no Exception: it once ended the worker itself.
    "exit": ("sys.exit('FRAGILE_CONFIG is not set')", "SystemExit: FRAGILE_CONFIG"),
    "dependency": ("import fragile_missing_dependency", "ModuleNotFoundError: No module"),
}


@pytest.mark.parametrize(
    ("pool", "failure"),
    [("thread", "raise"), ("thread", "exit"), ("thread", "dependency"), ("process", "raise")],
)
async def test_a_module_that_fails_to_import_in_the_worker_is_named_with_its_line(
    db_path: Path,
    tmp_path: Path,
    spawn_worker: Callable[..., WorkerProcess],
    pool: str,
    failure: str,
) -> None:
    """Not "the payload may be corrupt": the module raised as the worker imported
    it (a setting missing where the worker runs), and the error says which, where
    and what, with the import's traceback; retried, as another worker may have
    what this one lacks."""
    statement, raised = FRAGILE_IMPORTS[failure]
    app = tmp_path / "app"
    app.mkdir()
    (app / "fragile_tasks.py").write_text(
        "import os, sys\n"
        "if os.environ.get('FRAGILE_BREAK'):\n"
        f"    {statement}\n"
        "def work():\n"
        "    return 'ok'\n"
    )
    sys.path.insert(0, str(app))
    try:
        import fragile_tasks  # type: ignore[import-not-found]

        async with TaskQueue(db_path) as queue:
            # Retried like an UnknownTask: another worker may have what this one lacks.
            retried = queue.with_options(max_retries=1, retry_backoff=0.05)
            task_id = await retried.enqueue(fragile_tasks.work)
            spawn_worker("--pool", pool, cwd=app, env={"FRAGILE_BREAK": "1"}).wait_started()
            result = await queue.get_result(task_id, timeout=20)
            assert result is not None and result.status is TaskStatus.FAILED
            assert result.error, result
            assert f"importing module 'fragile_tasks' raised {raised}" in result.error, result.error
            assert f"({app / 'fragile_tasks.py'}, line 3)" in result.error
            assert "corrupt" not in result.error and "--import" not in result.error
            if failure == "dependency":
                assert "install 'fragile_missing_dependency' where this runs" in result.error
            assert result.traceback and statement in result.traceback
            assert result.attempts == 2
            await assert_worker_still_serves(queue)
    finally:
        sys.path.remove(str(app))
        sys.modules.pop("fragile_tasks", None)


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


# -- issue 20 item 16: numeric options, ids, rows and URLs ---------------------------


async def test_an_open_file_as_an_argument_is_refused(queue: TaskQueue, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("secret contents\n")
    with notes.open() as handle:
        with pytest.raises(SerializationError, match=r"argument 1 \(TextIOWrapper\).*open file"):
            await queue.enqueue(jobs.discard, handle)
        with pytest.raises(SerializationError, match="pass its path"):
            await queue.enqueue(lambda: handle.read())
    assert (await queue.stats())["totals"]["queued"] == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"priority": 2**70}, "priority must be at most 2147483647, got 1180591620717411303424"),
        ({"priority": -(2**40)}, "priority must be an int from -2147483648"),
        ({"priority": 1.5}, "priority must be an int"),
        ({"max_retries": 2**40}, "max_retries must be at most"),
        ({"delay": float("inf")}, "delay must be >= 0 seconds .*finite.*got inf"),
        ({"delay": float("nan")}, "delay must be >= 0 seconds .*got nan"),
        ({"delay": "5"}, "delay must be >= 0 seconds .*got '5'"),
        ({"timeout": float("inf")}, "timeout must be > 0 seconds .*None for no limit"),
        ({"retry_backoff": float("nan")}, "retry_backoff must be >= 0 seconds"),
        ({"result_ttl": float("inf")}, "result_ttl must be >= 0 seconds"),
    ],
)
async def test_numeric_task_options_are_checked_for_type_and_range(
    queue: TaskQueue, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        queue.with_options(**options)


@pytest.mark.parametrize("option", ["queue", "unique_key", "limit_key"])
async def test_a_nul_character_in_a_name_is_refused(
    queue: TaskQueue, db_path: Path, option: str
) -> None:
    """A queue name or key with NUL would be stored by SQLite and refused by
    PostgreSQL later (`sitq migrate`, a worker's query): refused at once instead."""
    with pytest.raises(ConfigurationError, match=f"{option} 'a\\\\x00b' contains a NUL"):
        queue.with_options(**{option: "a\x00b"})
    with pytest.raises(ConfigurationError, match="queue 'a\\\\x00' contains a NUL"):
        Worker(db_path, queues=["ok", "a\x00"])
    assert (await queue.stats())["totals"]["queued"] == 0


async def test_enqueue_many_without_an_iterable_says_what_to_pass(queue: TaskQueue) -> None:
    with pytest.raises(ConfigurationError, match=r"iterable of items.*got int 5.*enqueue\(fn"):
        await queue.enqueue_many(jobs.add, 5)  # type: ignore[arg-type]
    assert (await queue.stats())["totals"]["queued"] == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lease_seconds": float("nan")}, "lease_seconds must be > 0 seconds .*got nan"),
        ({"lease_seconds": float("inf")}, "lease_seconds must be > 0 seconds .*got inf"),
        ({"lease_seconds": "30"}, "lease_seconds must be > 0 seconds .*got '30'"),
        ({"grace_period": float("nan")}, "grace_period must be >= 0 seconds .*got nan"),
        ({"poll_interval": -1}, "poll_interval must be > 0 seconds .*got -1$"),
        ({"concurrency": 2**40}, "concurrency must be at most"),
        ({"prefetch": -1}, "prefetch must be an int >= 0, got -1"),
        ({"max_concurrency": 4}, "no max_concurrency option .*concurrency=N"),
    ],
)
def test_worker_options_are_checked_for_type_and_range(
    db_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Worker(db_path, **options)  # type: ignore[arg-type]


async def test_worker_command_refuses_a_nan_lease(queue: TaskQueue, db_path: Path) -> None:
    run = subprocess.run(
        [SITQ, "worker", "--db", str(db_path), "--lease", "nan"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "lease_seconds must be > 0 seconds (a finite number), got nan" in run.stderr
    assert "Traceback" not in run.stderr


def test_postgres_url_with_an_unencoded_at_in_the_password() -> None:
    with pytest.raises(ConfigurationError, match="percent-encode an @ .* as %40"):
        TaskQueue("postgresql://app:p@ss@db.example:5432/app")


async def test_postgres_url_with_a_setting_asyncpg_refuses(tmp_path: Path) -> None:
    """A bad query-string setting (caught by asyncpg before any connection) is a
    ConfigurationError naming it, never a raw asyncpg error or the password."""
    pytest.importorskip("asyncpg")
    url = "postgresql://app:s3cret-pw@127.0.0.1:5432/test?sslmode=bogus"
    with pytest.raises(ConfigurationError, match="sslmode.*fix it in the URL") as caught:
        async with TaskQueue(url):
            pass
    assert "s3cret-pw" not in str(caught.value)
    result = subprocess.run(
        [SITQ, "status", "--db", url], capture_output=True, text=True, env=subprocess_env()
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "sslmode" in result.stderr and "s3cret-pw" not in result.stdout + result.stderr


async def test_task_ids_must_be_strings_on_every_backend(db_url: str) -> None:
    async with TaskQueue(db_url) as queue:
        for call in (queue.get_result, queue.status, queue.cancel, queue.retry):
            with pytest.raises(ConfigurationError, match="a task id is a str .*got int 12345"):
                await call(12345)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="got int 7"):
            await queue.get_results(["a", 7])  # type: ignore[list-item]


async def test_a_row_with_an_unknown_status_is_named(db_url: str) -> None:
    async with TaskQueue(db_url) as queue:
        task_id = await queue.enqueue(jobs.noop)
        await set_status(queue, db_url, task_id, "exploded")
        for call in (queue.status, queue.get_result):
            with pytest.raises(CorruptRow, match=f"task {task_id} has status 'exploded'"):
                await call(task_id)
        with pytest.raises(CorruptRow, match="'exploded'"):
            await queue.statuses([task_id])


async def set_status(queue: TaskQueue, db_url: str, task_id: str, status: str) -> None:
    """Write a status sitq never writes, as a hand edit of the database would."""
    if db_url.startswith("postgresql"):
        import asyncpg
        from support import POSTGRES_URL

        schema = queue._backend.schema  # type: ignore[attr-defined]
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(
                f'UPDATE "{schema}".sitq_tasks SET status = $1 WHERE id = $2', status, task_id
            )
        finally:
            await conn.close()
        return
    with sqlite3.connect(db_url) as conn:
        conn.execute("UPDATE sitq_tasks SET status = ? WHERE id = ?", (status, task_id))
