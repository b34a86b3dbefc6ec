"""Enqueueing inside the application's own transaction (``queue.using(connection)``),
on every connection type sitq takes: sqlite3, aiosqlite, asyncpg, psycopg 3 and a
SQLAlchemy AsyncConnection over psycopg.

Each task is run by a real `sitq worker` started with a 30 s idle poll, so a task
it picks up within a few seconds was brought by the commit's wake-up (PostgreSQL's
transactional NOTIFY; on SQLite ``wake_workers()`` or the context manager), not
by a poll.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import jobs
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from support import (
    POSTGRES_URL,
    SITQ,
    WorkerProcess,
    await_until,
    drop_postgres_schema,
    postgres_available,
    postgres_url,
    until_listening,
)

from sitq import SyncTaskQueue, TaskQueue
from sitq.backends.sqlite.wakeup import wake_directory
from sitq.errors import (
    ConfigurationError,
    InvalidDependency,
    NotASitqDatabase,
    StorageError,
    TaskNotFound,
)
from sitq.serialization import SignedSerializer

KINDS = ["sqlite3", "aiosqlite", "asyncpg", "psycopg", "sqlalchemy"]
#: The worker's idle poll: far longer than any wait below, so only a wake-up is seen.
LONG_POLL = "30"
#: What "at once" allows on this busy 2-core machine (the poll is 30 s).
WAKE_BOUND = 5.0


class App:
    """The application's side: its own connection, its own `orders` table, and its
    own transaction, committed or rolled back as the driver does it."""

    def __init__(self, kind: str, db: str, schema: str | None) -> None:
        self.kind = kind
        self.db = db
        self.schema = schema
        self.table = "orders" if schema is None else f'"{schema}".orders'
        self.conn: Any = None
        self._engine: Any = None
        self._tx: Any = None

    @property
    def postgres(self) -> bool:
        return self.kind in ("asyncpg", "psycopg", "sqlalchemy")

    async def open(self) -> None:
        if self.kind == "sqlite3":
            self.conn = sqlite3.connect(self.db)
        elif self.kind == "aiosqlite":
            self.conn = await aiosqlite.connect(self.db)
        elif self.kind == "asyncpg":
            self.conn = await asyncpg.connect(POSTGRES_URL)
        elif self.kind == "psycopg":
            self.conn = await psycopg.AsyncConnection.connect(POSTGRES_URL)
        else:
            url = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)
            self._engine = create_async_engine(url)
            self.conn = await self._engine.connect()
        await self._run(f"CREATE TABLE IF NOT EXISTS {self.table} (id integer)")
        await self.commit()

    async def _run(self, sql: str) -> list[Any]:
        if self.kind == "sqlite3":
            return self.conn.execute(sql).fetchall()  # type: ignore[no-any-return]
        if self.kind == "aiosqlite":
            return list(await self.conn.execute_fetchall(sql))
        if self.kind == "asyncpg":
            if self._tx is None and not sql.startswith("SELECT"):
                self._tx = self.conn.transaction()
                await self._tx.start()
            return list(await self.conn.fetch(sql))
        if self.kind == "psycopg":
            cursor = await self.conn.execute(sql)
            return await cursor.fetchall() if cursor.description else []
        result = await self.conn.execute(text(sql))
        return list(result.fetchall()) if result.returns_rows else []

    async def begin_order(self, order_id: int) -> None:
        """The application's own write, opening its transaction."""
        await self._run(f"INSERT INTO {self.table} VALUES ({order_id})")

    async def commit(self) -> None:
        if self.kind == "sqlite3":
            self.conn.commit()
        elif self.kind == "asyncpg":
            if self._tx is not None:
                tx, self._tx = self._tx, None
                await tx.commit()
        else:
            await self.conn.commit()

    async def rollback(self) -> None:
        if self.kind == "sqlite3":
            self.conn.rollback()
        elif self.kind == "asyncpg":
            if self._tx is not None:
                tx, self._tx = self._tx, None
                await tx.rollback()
        else:
            await self.conn.rollback()

    async def orders(self) -> list[int]:
        rows = await self._run(f"SELECT id FROM {self.table} ORDER BY id")
        if self.kind != "asyncpg":
            await self.commit()  # end the read's implicit transaction
        return [row[0] for row in rows]

    async def close(self) -> None:
        if self.kind == "sqlite3":
            self.conn.close()
        else:
            await self.conn.close()
        if self._engine is not None:
            await self._engine.dispose()


@pytest.fixture(params=KINDS)
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[App]:
    """The queue's database and the application's connection to it, of each kind."""
    kind = request.param
    schema = None
    if kind in ("sqlite3", "aiosqlite"):
        db = str(tmp_path / "tasks.db")
    else:
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
        await drop_postgres_schema(schema)
        db = postgres_url(schema)
    async with TaskQueue(db):  # creates sitq's tables (and the schema) first
        pass
    application = App(kind, db, schema)
    await application.open()
    yield application
    await application.close()
    if schema is not None:
        await drop_postgres_schema(schema)


async def _worker_idle(app: App, worker: WorkerProcess) -> None:
    """Until the worker listens for wake-ups (so the next one reaches it)."""
    if app.postgres:
        schema = app.table.split(".")[0].strip('"')

        async def listening() -> bool:
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                name = f"sitq-listen-{schema}"
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
                    )
                )
            finally:
                await conn.close()

        await await_until(listening, 20, "the worker's LISTEN connection")
    else:
        # Its own socket (named by its pid), bound by its first idle wait, once
        # its first claim and look for due work are done; not one a process
        # of an earlier run on the same path left behind.
        sockets = wake_directory(app.db) / "t"
        own = f"{worker.process.pid}-"

        def bound() -> bool:
            return sockets.is_dir() and any(p.name.startswith(own) for p in sockets.iterdir())

        await await_until(lambda: asyncio.sleep(0, bound()), 20, "the worker's wake-up socket")
    assert worker.process.poll() is None, worker.output()


async def _task_count(queue: TaskQueue) -> int:
    """Every task stored, whatever its status."""
    statuses, _ = await queue.task_counts()
    return sum(statuses.values())


async def test_a_committed_task_runs_on_a_worker_woken_by_the_commit(
    app: App, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    worker = spawn_worker("--poll-interval", LONG_POLL, db=app.db).wait_started()
    await _worker_idle(app, worker)
    async with TaskQueue(app.db) as queue:
        await app.begin_order(7)
        task_id = await queue.using(app.conn).enqueue(jobs.add, 2, 3)
        # Not there for anyone else until the application commits.
        with pytest.raises(TaskNotFound):
            await queue.status(task_id)
        await app.commit()
        committed = time.monotonic()
        queue.wake_workers()  # SQLite's wake-up is not in the transaction: after the commit
        result = await queue.get_result(task_id, timeout=WAKE_BOUND * 2)
        waited = time.monotonic() - committed
        assert result is not None, f"not run within {WAKE_BOUND * 2} s:\n{worker.output()}"
        assert result.value == 5
        assert f"-{worker.pid}-" in (result.worker_id or "")
        assert waited < WAKE_BOUND, f"picked up after {waited:.1f} s: by the poll, not a wake-up"
        assert await app.orders() == [7]


async def test_rollback_leaves_no_task_and_wakes_no_one(app: App) -> None:
    async with TaskQueue(app.db) as queue, TaskQueue(app.db) as watcher:
        backend: Any = watcher._backend  # a second process-like listener for "tasks"
        await until_listening(backend)

        await app.begin_order(1)
        enqueuer = queue.using(app.conn)
        ids = [await enqueuer.enqueue(jobs.add, 1, 1)]
        ids += await enqueuer.with_options(priority=5).enqueue_many(jobs.add, [(1, 2), (3, 4)])
        await app.rollback()
        started = time.monotonic()
        await backend.wait_for_change("tasks", 1.0)
        quiet = time.monotonic() - started
        # PostgreSQL's NOTIFY went with the rolled-back transaction; SQLite's wake-up
        # is only ever sent after a commit.
        assert quiet >= 0.9, f"woken {quiet:.2f} s after a rollback"
        assert await _task_count(queue) == 0
        assert await queue.statuses(ids) == {}
        assert await app.orders() == []

        # The same listener does hear a commit (so the check above could fail).
        await app.begin_order(2)
        committed_id = await queue.using(app.conn).enqueue(jobs.add, 1, 1)
        await app.commit()
        queue.wake_workers()
        started = time.monotonic()
        await backend.wait_for_change("tasks", 5.0)
        assert time.monotonic() - started < 4.0
        assert await _task_count(queue) == 1
        assert (await queue.status(committed_id)).value == "queued"


async def test_the_context_manager_commits_and_wakes_or_rolls_back(
    app: App, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    worker = spawn_worker("--poll-interval", LONG_POLL, db=app.db).wait_started()
    await _worker_idle(app, worker)
    async with TaskQueue(app.db) as queue:
        with pytest.raises(KeyError):
            async with queue.using(app.conn) as enqueuer:
                await app.begin_order(1)
                await enqueuer.enqueue(jobs.add, 1, 1)
                raise KeyError("the order failed")
        assert await _task_count(queue) == 0
        assert await app.orders() == []

        async with queue.using(app.conn) as enqueuer:
            await app.begin_order(2)
            task_id = await enqueuer.with_options(max_retries=2).enqueue(jobs.add, 20, 22)
        committed = time.monotonic()
        result = await queue.get_result(task_id, timeout=WAKE_BOUND * 2)
        assert result is not None and result.value == 42, worker.output()
        assert time.monotonic() - committed < WAKE_BOUND
        assert await app.orders() == [2]


async def test_sqlite_without_the_wake_up_waits_for_the_poll(
    tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """The control for the tests above: a commit alone does not wake an SQLite
    worker; ``wake_workers()`` does."""
    db = str(tmp_path / "tasks.db")
    async with TaskQueue(db) as queue:
        worker = spawn_worker("--poll-interval", LONG_POLL, db=db).wait_started()
        app = App("sqlite3", db, None)
        await app.open()
        await _worker_idle(app, worker)
        await app.begin_order(1)
        task_id = await queue.using(app.conn).enqueue(jobs.add, 1, 2)
        await app.commit()
        assert await queue.get_result(task_id, timeout=1.5) is None  # the worker sleeps on
        queue.wake_workers()
        result = await queue.get_result(task_id, timeout=WAKE_BOUND)
        assert result is not None and result.value == 3, worker.output()
        await app.close()


async def test_options_signing_uniqueness_dependencies_and_compositions(
    app: App, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    key = "k" * 32
    worker = spawn_worker(db=app.db, env={"SITQ_SECRET_KEY": key}).wait_started()
    async with TaskQueue(app.db, SignedSerializer(key)) as queue:
        await app.begin_order(1)
        enqueuer = queue.using(app.conn)
        first = await enqueuer.with_options(priority=7, max_retries=3).enqueue(jobs.add, 1, 2)
        later = await enqueuer.with_options(delay=3600).enqueue(jobs.add, 0, 0)
        unique = await enqueuer.with_options(unique_key="order-1").enqueue(jobs.add, 2, 2)
        again = await enqueuer.with_options(unique_key="order-1").enqueue(jobs.add, 2, 2)
        dependent = await enqueuer.with_options(depends_on=[first]).enqueue(jobs.add, 3, 3)
        chain = await enqueuer.submit(
            queue.signature(jobs.add, 1, 1) | queue.signature(jobs.add, 5)
        )
        # A refused enqueue leaves the application's transaction usable.
        with pytest.raises(InvalidDependency):
            await enqueuer.with_options(depends_on=["0" * 32]).enqueue(jobs.add, 1, 1)
        await app.commit()
        assert again == unique and unique.created and not again.created

        record = await queue.task_record(first)
        assert (record.priority, record.max_retries) == (7, 3)
        assert (await queue.task_record(later)).available_at > time.time() + 3000
        for task_id, value in ((first, 3), (unique, 4), (dependent, 6), (chain, 7)):
            result = await queue.get_result(task_id, timeout=30)
            assert result is not None and result.value == value, worker.output()
        assert await _task_count(queue) == 6
        assert await app.orders() == [1]


async def test_bad_inputs_are_refused_and_nothing_is_enqueued(app: App, tmp_path: Path) -> None:
    async with TaskQueue(app.db) as queue:
        if app.postgres:
            other: Any = await asyncpg.connect(
                POSTGRES_URL.replace("postgres@", "postgres:s3cret-pw@").rsplit("/", 1)[0]
                + "/postgres"
            )
            kind = "asyncpg connection"
            expected = ["PostgreSQL database 'postgres'", "PostgreSQL database 'test'"]
            tx = other.transaction()
            await tx.start()
        else:
            other = sqlite3.connect(tmp_path / "other.db")
            kind = "sqlite3 connection"
            expected = [str(tmp_path / "other.db"), f"sqlite database {app.db}"]
            other.execute("CREATE TABLE orders (id integer)")
            other.execute("INSERT INTO orders VALUES (1)")
        with pytest.raises(ConfigurationError) as refused:
            await queue.using(other).enqueue(jobs.add, 1, 1)
        message = str(refused.value)
        assert f"the {kind} given to queue.using() is to" in message
        assert all(part in message for part in expected), message
        assert "s3cret" not in message
        if app.postgres:
            await tx.rollback()
        await other.close() if app.postgres else other.close()

        # An object of no supported driver: the supported ones are listed.
        wrong = sqlite3.connect(":memory:") if app.postgres else object()
        with pytest.raises(ConfigurationError, match=r"takes .*[cC]onnection.*; got "):
            queue.using(wrong)

        # A closed connection.
        await app.close()
        with pytest.raises(ConfigurationError, match="is closed: nothing was enqueued"):
            await queue.using(app.conn).enqueue(jobs.add, 1, 1)
        await app.open()
        assert await _task_count(queue) == 0


@pytest.mark.parametrize("app", ["asyncpg"], indirect=True)
async def test_asyncpg_outside_a_transaction_is_refused(app: App) -> None:
    """asyncpg commits every statement outside ``conn.transaction()``: the task would
    not be part of anything, so it is refused."""
    async with TaskQueue(app.db) as queue:
        with pytest.raises(ConfigurationError, match="has no transaction open"):
            await queue.using(app.conn).enqueue(jobs.add, 1, 1)
        assert await _task_count(queue) == 0


@pytest.mark.parametrize("driver", ["sqlite3", "psycopg"])
def test_sync_queue_using_a_blocking_connection(
    driver: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    if driver == "sqlite3":
        db, schema = str(tmp_path / "tasks.db"), None
    else:
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
        asyncio.run(drop_postgres_schema(schema))
        db = postgres_url(schema)
    worker: WorkerProcess | None = None
    try:
        with SyncTaskQueue(db) as queue:
            queue.connect()
            conn: Any = sqlite3.connect(db) if schema is None else psycopg.connect(POSTGRES_URL)
            worker = spawn_worker("--poll-interval", LONG_POLL, db=db).wait_started()
            app = App(driver, db, schema)
            asyncio.run(_worker_idle(app, worker))
            rolled_back = []
            with pytest.raises(KeyError), queue.using(conn) as enqueuer:
                rolled_back.append(enqueuer.enqueue(jobs.add, 1, 1))
                raise KeyError("rolled back")
            with pytest.raises(TaskNotFound):
                queue.status(rolled_back[0])
            with queue.using(conn) as enqueuer:
                task_id = enqueuer.with_options(priority=1).enqueue(jobs.add, 4, 5)
            committed = time.monotonic()
            result = queue.get_result(task_id, timeout=WAKE_BOUND * 2)
            assert result is not None and result.value == 9, worker.output()
            assert time.monotonic() - committed < WAKE_BOUND
            if driver == "sqlite3":
                with pytest.raises(ConfigurationError, match="needs an event loop"):
                    queue.using(asyncio.run(_async_sqlite(db)))
            conn.close()
    finally:
        # The worker first: a drop beside its transactions can deadlock with them.
        if worker is not None:
            worker.stop()
        if schema is not None:
            asyncio.run(drop_postgres_schema(schema))


async def _async_sqlite(db: str) -> Any:
    conn = await aiosqlite.connect(db)
    await conn.close()
    return conn


def _readme_blocks() -> list[str]:
    """The code blocks of README.md's section on the application's transaction."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Enqueueing in your application's transaction\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    return [
        "\n".join(line[2:] if line.startswith("  ") else line for line in block.splitlines())
        for block in re.findall(r"```python\n(.*?)```", section, re.S)
    ]


async def test_the_readme_sqlalchemy_example_commits_the_order_and_its_task(
    tmp_path: Path,
) -> None:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
    await drop_postgres_schema(schema)
    base = POSTGRES_URL.split("?", 1)[0]
    code = _readme_blocks()[0]
    code = code.replace(
        "postgresql+psycopg://app@db.internal/app",
        base.replace("postgresql://", "postgresql+psycopg://", 1)
        + f"?options=-csearch_path%3D{schema}",
    ).replace("postgresql://app@db.internal/app", postgres_url(schema))
    try:
        async with TaskQueue(postgres_url(schema)):
            pass
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f'CREATE TABLE "{schema}".orders (id integer)')
        await conn.close()
        namespace: dict[str, Any] = {"TaskQueue": TaskQueue, "send_receipt": jobs.echo_kwargs}
        exec(
            f"async def example():\n{textwrap.indent(code, '    ')}\n    return task_id", namespace
        )
        task_id = await namespace["example"]()
        async with TaskQueue(postgres_url(schema)) as queue:
            assert (await queue.status(task_id)).value == "queued"
        conn = await asyncpg.connect(POSTGRES_URL)
        assert await conn.fetchval(f'SELECT id FROM "{schema}".orders') == 42
        await conn.close()
    finally:
        await drop_postgres_schema(schema)


def test_the_readme_sqlite_example_commits_the_order_and_its_task(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    with SyncTaskQueue("tasks.db") as sync_queue:
        sync_queue.connect()
        with sqlite3.connect("tasks.db") as setup:
            setup.execute("CREATE TABLE orders (id integer)")
        setup.close()
        namespace: dict[str, Any] = {
            "sqlite3": sqlite3,
            "sync_queue": sync_queue,
            "send_receipt": jobs.echo_kwargs,
        }
        exec(_readme_blocks()[1], namespace)
        assert sync_queue.list_tasks().tasks[0].func_name.endswith("echo_kwargs")
        with sqlite3.connect("tasks.db") as check:
            assert check.execute("SELECT id FROM orders").fetchall() == [(42,)]
        check.close()


async def _refuse_queue(schema: str, queue: str) -> None:
    """Make PostgreSQL refuse every new task of ``queue`` (a trigger of the test's
    own): a statement the database refuses, whatever sitq checked before sending it."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(
            f'CREATE FUNCTION "{schema}".refuse_task() RETURNS trigger LANGUAGE plpgsql '
            "AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
        )
        await conn.execute(
            f'CREATE TRIGGER refuse_task BEFORE INSERT ON "{schema}".sitq_tasks '
            f"FOR EACH ROW WHEN (NEW.queue = '{queue}') "
            f'EXECUTE FUNCTION "{schema}".refuse_task()'
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("app", ["asyncpg", "psycopg", "sqlalchemy"], indirect=True)
async def test_a_failed_statement_leaves_the_application_transaction_usable(app: App) -> None:
    """An enqueue whose statement PostgreSQL refuses runs in a savepoint: the error
    is raised, and the application's transaction goes on."""
    assert app.schema is not None
    await _refuse_queue(app.schema, "refused")
    async with TaskQueue(app.db) as queue:
        await app.begin_order(5)
        enqueuer = queue.using(app.conn)
        with pytest.raises(StorageError, match="refused by the test"):
            await enqueuer.with_options(queue="refused").enqueue(jobs.add, 1, 1)
        task_id = await enqueuer.enqueue(jobs.add, 1, 1)
        await app.begin_order(6)
        await app.commit()
        assert await app.orders() == [5, 6]
        assert (await queue.status(task_id)).value == "queued"
        assert await _task_count(queue) == 1


def test_an_application_database_gets_sitqs_tables_alongside_its_own(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The outbox on SQLite, in the app's existing database: refused (with what
    to do) until `sitq init --alongside` adds sitq's tables; then an order and
    its task commit together, and the app's own rows are untouched throughout."""
    monkeypatch.chdir(tmp_path)
    with sqlite3.connect("app.db") as setup:
        setup.execute("CREATE TABLE orders (id integer)")
        setup.execute("INSERT INTO orders VALUES (1)")
    setup.close()
    before = Path("app.db").read_bytes()

    refused = subprocess.run([SITQ, "init", "--db", "app.db"], capture_output=True, text=True)
    assert refused.returncode != 0
    assert "holds tables that are not sitq's" in refused.stderr
    assert "sitq init --db app.db --alongside" in refused.stderr
    with pytest.raises(NotASitqDatabase, match="--alongside"):
        SyncTaskQueue("app.db").connect()
    assert Path("app.db").read_bytes() == before

    added = subprocess.run(
        [SITQ, "init", "--db", "app.db", "--alongside"], capture_output=True, text=True
    )
    assert added.returncode == 0, added.stderr
    with SyncTaskQueue("app.db") as queue:
        with sqlite3.connect("app.db") as conn, queue.using(conn) as enqueuer:
            conn.execute("INSERT INTO orders VALUES (2)")
            task_id = enqueuer.enqueue(jobs.add, 2, 3)
        conn.close()
        assert queue.status(task_id).value == "queued"
    with sqlite3.connect("app.db") as check:
        assert check.execute("SELECT id FROM orders ORDER BY id").fetchall() == [(1,), (2,)]
    check.close()
