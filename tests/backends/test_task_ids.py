"""Task ids on SQLite: a new file keeps tasks under integer row ids, handed out in
blocks each producer reserves; a file that already held tasks keeps its text ids.
Real files, real processes, a real fork."""

from __future__ import annotations

import asyncio
import multiprocessing
import operator
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import sqlite_store_at, subprocess_env

from sitq import SyncTaskQueue, TaskNotFound, TaskQueue, TaskStatus, Worker
from sitq.backends.sqlite import SQLiteBackend
from sitq.backends.sqlite import schema as sqlite_schema
from sitq.backends.sqlite.layout import ID_BLOCK


def _layout(path: Path) -> tuple[str, list[str]]:
    """The id column's type, and the tasks table's indexes."""
    with sqlite3.connect(path) as conn:
        (kind,) = conn.execute(sqlite_schema.SQL.task_id_column_type).fetchone()
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sitq_tasks'"
            )
        ]
    return kind, names


def test_a_new_file_keeps_tasks_under_integer_row_ids(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with SyncTaskQueue(path) as queue:
        one = queue.enqueue(operator.add, 1, 2)
        many = queue.enqueue_many(operator.add, [(i, i) for i in range(5)])
        assert queue.get_results([one]) == {}  # found, not finished
    ids = [one, *many]
    assert all(isinstance(task_id, str) and task_id.isdigit() for task_id in ids)
    assert [int(task_id) for task_id in ids] == list(range(int(one), int(one) + 6))
    assert int(one) > 2**32  # a random start, so two files' ids do not meet
    kind, indexes = _layout(path)
    assert kind == "INTEGER"
    assert not [name for name in indexes if name.startswith("sqlite_autoindex")]  # no text id index
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT rowid FROM sitq_tasks WHERE id = ?", (one,)).fetchone() == (
            int(one),
        )


async def test_two_producers_hand_out_distinct_blocks_and_a_worker_runs_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tasks.db"
    async with TaskQueue(path) as first, TaskQueue(path) as second:
        a = await first.enqueue(operator.add, 1, 1)
        b = await second.enqueue(operator.add, 2, 2)
        a_more = await first.enqueue_many(operator.add, [(i, 1) for i in range(ID_BLOCK + 10)])
        assert abs(int(a) - int(b)) >= ID_BLOCK  # each from its own block
        ids = [a, b, *a_more]
        assert len(set(ids)) == len(ids)
        worker = Worker(path, concurrency=4)
        await worker.start()
        try:
            results = [await first.get_result(task_id, timeout=30) for task_id in (a, b)]
        finally:
            await worker.stop()
        assert [r.value for r in results if r is not None] == [2, 4]


def _enqueue_in_child(path: str, pipe: multiprocessing.connection.Connection) -> None:
    queue = _forked_queue
    assert queue is not None
    pipe.send([queue.enqueue(operator.add, i, i) for i in range(3)])


_forked_queue: SyncTaskQueue | None = None


def test_a_forked_child_does_not_reuse_the_parents_ids(tmp_path: Path) -> None:
    """The parent holds a block when it forks: the child reserves its own."""
    global _forked_queue
    path = tmp_path / "tasks.db"
    with SyncTaskQueue(path) as queue:
        _forked_queue = queue
        first = queue.enqueue(operator.add, 0, 0)  # the parent now holds a block
        context = multiprocessing.get_context("fork")
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_enqueue_in_child, args=(str(path), sending))
        child.start()
        child_ids = receiving.recv()
        child.join(timeout=30)
        assert child.exitcode == 0
        parent_ids = [queue.enqueue(operator.add, i, i) for i in range(3)]
        _forked_queue = None
    assert int(parent_ids[0]) == int(first) + 1  # the parent goes on with its block
    assert not set(child_ids) & {first, *parent_ids}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sitq_tasks").fetchone() == (7,)


def _id_counter(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (value,) = conn.execute("SELECT value FROM sitq_meta WHERE key = 'next_task_id'").fetchone()
    return int(value)


async def test_producers_that_run_short_together_share_one_reservation(tmp_path: Path) -> None:
    """100 coroutines enqueueing at once: each block is reserved once for them
    all (each reserving its own block made concurrent enqueue 4x slower)."""
    path = tmp_path / "tasks.db"
    async with TaskQueue(path) as queue:
        await queue.enqueue(operator.add, 0, 0)
        before = _id_counter(path)

        async def producer() -> None:
            for i in range(30):
                await queue.enqueue(operator.add, i, i)

        await asyncio.gather(*(producer() for _ in range(100)))
    # 3,000 ids: the 1,023 left of the block held, then two blocks more.
    assert _id_counter(path) - before == 2 * ID_BLOCK


def test_threads_that_run_short_together_share_one_reservation(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    with SyncTaskQueue(path) as queue:
        queue.enqueue(operator.add, 0, 0)
        before = _id_counter(path)
        start = threading.Barrier(8)

        def producer() -> None:
            start.wait()
            for i in range(375):
                queue.enqueue(operator.add, i, i)

        threads = [threading.Thread(target=producer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(DISTINCT id) FROM sitq_tasks").fetchone() == (3001,)
    assert _id_counter(path) - before == 2 * ID_BLOCK


def _version_12_file_with_a_task(path: Path) -> None:
    """A file as sitq's schema 12 left it, holding one task under a text id."""
    conn = sqlite_store_at(path, 12)
    conn.execute(
        sqlite_schema.SQL.insert_task,
        (OLD_ID, "default", "f", b"p", 0, 1.0, 1.0, 0, 1.0, None, None, None, None),
    )
    conn.close()


#: A text id as sitq made them before schema version 13.
OLD_ID = "0" * 31 + "1"


async def test_a_file_with_tasks_keeps_its_text_ids_after_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_12_file_with_a_task(path)
    async with TaskQueue(path) as queue:
        task_id = await queue.enqueue(operator.add, 20, 22)
        assert len(task_id) == 32 and not task_id.isdigit()  # a text id, as before
        assert (await queue.stats())["totals"]["queued"] == 2
        worker = Worker(path)
        await worker.start()
        try:
            result = await queue.get_result(task_id, timeout=30)
        finally:
            await worker.stop()
        assert result is not None and result.value == 42
    assert _layout(path)[0] == "TEXT"


async def test_an_empty_file_of_an_older_sitq_keeps_text_ids(tmp_path: Path) -> None:
    """A process of the older sitq may still write to it: its text ids must fit."""
    path = tmp_path / "old.db"
    sqlite_store_at(path, 12).close()
    async with TaskQueue(path) as queue:
        assert not (await queue.enqueue(operator.add, 1, 2)).isdigit()
    assert _layout(path)[0] == "TEXT"


def test_the_rebuilt_tables_keep_every_index_and_trigger(tmp_path: Path) -> None:
    """A new file's tables are made at version 1 and rebuilt at 13: what versions
    2 to 12 added to them is all there, as in a file that kept text ids."""
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    with SyncTaskQueue(new) as made:
        made.connect()
    sqlite_store_at(old, 13).close()  # the statements only: text ids

    def schema(path: Path) -> set[tuple[str, str]]:
        with sqlite3.connect(path) as conn:
            return set(conn.execute("SELECT type, name FROM sqlite_master WHERE sql IS NOT NULL"))

    assert schema(new) == schema(old)
    assert _layout(new)[0] == "INTEGER" and _layout(old)[0] == "TEXT"


async def test_ids_reserved_in_a_rolled_back_transaction_are_never_used(tmp_path: Path) -> None:
    """A connection the application holds reserves ids in its own transaction (it
    holds the write lock once it wrote its own rows, so another connection could
    not reserve until it commits): a rollback takes them back with the tasks, and
    nothing collides afterwards."""
    path = tmp_path / "app.db"
    async with TaskQueue(SQLiteBackend(path, busy_timeout=1.0)) as queue:
        conn = sqlite3.connect(path, timeout=1.0)
        try:
            conn.execute("CREATE TABLE orders (n INTEGER)")
            conn.execute("BEGIN")
            conn.execute("INSERT INTO orders VALUES (1)")
            dropped = await queue.using(conn).enqueue(operator.add, 1, 1)
            conn.rollback()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO orders VALUES (2)")
            kept = await queue.using(conn).enqueue(operator.add, 2, 2)
            conn.commit()
        finally:
            conn.close()
        assert dropped.isdigit() and kept.isdigit()
        assert await queue.status(kept)
        ours = await queue.enqueue_many(operator.add, [(3, 3)] * 3)
        assert kept not in ours
        assert (await queue.stats())["totals"]["queued"] == 4


def test_sqlite_to_new_sqlite_file_keeps_integer_ids_and_the_counter_moves_past_them(
    tmp_path: Path,
) -> None:
    source, destination = tmp_path / "source.db", tmp_path / "destination.db"
    with SyncTaskQueue(source) as queue:
        ids = queue.enqueue_many(operator.add, [(i, i) for i in range(10)])
    with SyncTaskQueue(destination) as empty:  # made empty, its counter set below the source's
        empty.connect()
    with sqlite3.connect(destination) as conn:
        conn.execute("UPDATE sitq_meta SET value = '4294967296' WHERE key = 'next_task_id'")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sitq.cli import main; main()",
            "migrate",
            str(source),
            str(destination),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _layout(destination)[0] == "INTEGER"
    with SyncTaskQueue(destination) as queue:
        assert {queue.status(task_id).value for task_id in ids} == {"queued"}
        new = queue.enqueue(operator.add, 0, 0)
        assert new not in ids
    with sqlite3.connect(destination) as conn:
        (counter,) = conn.execute(
            "SELECT value FROM sitq_meta WHERE key = 'next_task_id'"
        ).fetchone()
    assert int(counter) > max(int(task_id) for task_id in ids)


async def test_text_ids_go_into_a_new_file_as_text_and_are_refused_by_one_with_tasks(
    tmp_path: Path,
) -> None:
    """A source with text ids (a file from before version 13 here; PostgreSQL makes
    them too) migrates into a new file, which then keeps text ids; a file that
    keeps integer ids and holds tasks refuses them, naming why."""
    source = tmp_path / "old.db"
    _version_12_file_with_a_task(source)
    async with TaskQueue(source):  # upgraded in place, keeping its text ids
        pass

    def migrate(destination: Path, *flags: str) -> subprocess.CompletedProcess[str]:
        command = "from sitq.cli import main; main()"
        return subprocess.run(
            [sys.executable, "-c", command, "migrate", str(source), str(destination), *flags],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            check=False,
        )

    fresh = tmp_path / "fresh.db"
    done = migrate(fresh)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _layout(fresh)[0] == "TEXT"
    async with TaskQueue(fresh) as queue:
        assert await queue.status(OLD_ID)
        assert not (await queue.enqueue(operator.add, 1, 1)).isdigit()

    # A queue connected to an empty new file before the migration switched it
    # to text ids still finds the tasks by their text ids.
    watched = tmp_path / "watched.db"
    async with TaskQueue(watched) as early:
        done = migrate(watched, "--into-existing")
        assert done.returncode == 0, done.stdout + done.stderr
        assert _layout(watched)[0] == "TEXT"
        assert await early.status(OLD_ID) is TaskStatus.QUEUED
        assert await early.task_links(OLD_ID) is not None
        assert not (await early.enqueue(operator.add, 1, 1)).isdigit()

    busy = tmp_path / "busy.db"
    async with TaskQueue(busy) as queue:
        await queue.enqueue(operator.add, 1, 1)
    refused = migrate(busy, "--into-existing")
    assert refused.returncode != 0
    assert "keeps integer task ids and already holds tasks" in refused.stdout + refused.stderr
    assert "migrate into a new file" in refused.stdout + refused.stderr
    with sqlite3.connect(busy) as conn:
        assert conn.execute("SELECT count(*) FROM sitq_tasks").fetchone() == (1,)


@pytest.mark.parametrize("layout", ["integer", "text"])
async def test_a_listing_pages_through_every_task(tmp_path: Path, layout: str) -> None:
    """Cursors compare as the ids do: integers in order, not as text."""
    backend = SQLiteBackend(tmp_path / "tasks.db")
    async with TaskQueue(backend) as queue:
        if layout == "text":
            assert await backend.use_text_ids()
        ids = await queue.enqueue_many(operator.add, [(i, i) for i in range(25)])
        seen: list[str] = []
        cursor = None
        for _ in range(5):  # 3 pages; a cursor compared wrongly repeats or skips them
            page = await queue.list_tasks(limit=10, cursor=cursor)
            seen += [task.id for task in page.tasks]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == ids[::-1]  # newest first


@pytest.mark.parametrize("spelling", ["0{}", " {}", "{} ", "+{}", "{}.0"])
async def test_an_id_spelled_otherwise_names_no_task(tmp_path: Path, spelling: str) -> None:
    """SQLite converts ``'0123'`` to 123 when it compares it with an integer id:
    every lookup by id must still treat it as the unknown id it is."""
    async with TaskQueue(tmp_path / "tasks.db") as queue:
        task_id = await queue.enqueue(operator.add, 1, 2)
        cancelled = await queue.enqueue(operator.add, 3, 4)
        assert await queue.cancel(cancelled)
        other, cancelled_other = spelling.format(task_id), spelling.format(cancelled)
        with pytest.raises(TaskNotFound):
            await queue.cancel(other)
        with pytest.raises(TaskNotFound):
            await queue.status(other)
        with pytest.raises(TaskNotFound):
            await queue.get_result(other, timeout=0)
        with pytest.raises(TaskNotFound):
            await queue.progress(other)
        with pytest.raises(TaskNotFound):
            await queue.retry(cancelled_other)
        assert await queue.retry_many([cancelled_other]) == 0
        assert await queue.task_record(other) is None
        assert await queue.task_links(other) is None
        assert await queue.statuses([other]) == {}
        assert (await queue.status_counts([other]))["queued"] == 0
        assert await queue.cancel_many([other]) == []
        # The tasks themselves were never touched.
        assert await queue.status(task_id) is TaskStatus.QUEUED
        assert await queue.status(cancelled) is TaskStatus.CANCELLED


@pytest.mark.parametrize("other", ["1" * 5000, str(2**63), "", "0", "\u0661\u0662"])
async def test_an_id_no_row_can_have_names_no_task(tmp_path: Path, other: str) -> None:
    """Digits past a row id's range (or past int()'s 4,300-digit limit), none, zero,
    or digits of another script: not found, not a crash."""
    async with TaskQueue(tmp_path / "tasks.db") as queue:
        await queue.enqueue(operator.add, 1, 2)
        assert await queue.task_record(other) is None
        with pytest.raises(TaskNotFound):
            await queue.status(other)
        with pytest.raises(TaskNotFound):
            await queue.cancel(other)


def test_a_child_forked_while_a_thread_reserves_ids_can_reserve(tmp_path: Path) -> None:
    """A lock another thread holds at the fork stays held in the child, where that
    thread does not exist: the child's reservation must not wait for it."""
    global _forked_queue
    path = tmp_path / "tasks.db"
    with SyncTaskQueue(path) as queue:
        _forked_queue = queue
        queue.enqueue(operator.add, 0, 0)
        backend = queue._queue._backend
        assert isinstance(backend, SQLiteBackend)
        context = multiprocessing.get_context("fork")
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(target=_enqueue_in_child, args=(str(path), sending))
        try:
            with backend._ids.reserving:  # as a thread reserving at the moment of the fork
                child.start()
            assert receiving.poll(30), "the forked child could not reserve ids"
            assert len(receiving.recv()) == 3
            child.join(timeout=30)
            assert child.exitcode == 0
        finally:
            _forked_queue = None
            if child.is_alive():
                child.kill()
