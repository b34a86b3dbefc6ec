"""Named batches and bulk status queries of the storage contract, on every backend.

The `backend` fixture (tests/backends/conftest.py) runs each test once per backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
from support import (
    drop_postgres_schema,
    postgres_available,
    postgres_store_at,
    postgres_url,
    sqlite_store_at,
    task_ids_for,
)

from sitq import sqlfiles
from sitq.backends.base import Backend, NewTask, Outcome, StoreTransaction
from sitq.backends.sqlite import SQLiteBackend
from sitq.backends.sqlite import schema as sqlite_schema
from sitq.batch import BatchSizeChanged, BatchStore
from sitq.task import new_task_id

LEASE = 60.0


def batches(backend: Backend) -> BatchStore:
    """The named batches of ``backend``'s database."""
    return BatchStore(backend.store_session())


async def enqueue_in_batch(
    backend: Backend, batch_id: str, tasks: list[NewTask], expected_size: int | None = None
) -> int:
    """Store ``tasks`` and append them to the batch in one transaction, as the
    enqueue path does; the position of the first one."""
    append = batches(backend).appender(batch_id, expected_size)

    async def body(tx: StoreTransaction) -> int:
        await tx.insert_tasks(tasks)
        return await append(tx, [task.id for task in tasks])

    return await backend.store_session().transaction(body)


def new_task(backend: Backend, queue: str = "default", task_id: str | None = None) -> NewTask:
    now = backend.now()
    return NewTask(
        id=task_id or task_ids_for(backend)[0],
        queue=queue,
        func_name="tests.backends.job",
        payload=b"payload",
        priority=0,
        enqueued_at=now,
        available_at=now,
        max_retries=0,
        retry_backoff=1.0,
        timeout=None,
        unique_key=None,
        result_ttl=None,
    )


async def into_batch(backend: Backend, batch_id: str, count: int, queue: str = "default") -> list:
    tasks = [new_task(backend, queue) for _ in range(count)]
    await enqueue_in_batch(backend, batch_id, tasks)
    return [task.id for task in tasks]


async def run_one(backend: Backend, queue: str, outcome: Outcome | None) -> str:
    """Claim the next task of ``queue`` and start it; finish it with ``outcome`` unless None."""
    [claimed] = await backend.claim("w1", [queue], 1, LEASE)
    await backend.finish((), [(claimed.lease, backend.now())])
    if outcome is not None:
        assert await backend.finish([(claimed.lease, outcome)]) == [True]
    return claimed.id


# -- membership ------------------------------------------------------------------


async def test_enqueue_in_batch_stores_claimable_tasks_and_their_order(backend):
    first = await into_batch(backend, "nightly", 3, queue="q")
    assert await batches(backend).batch_task_ids("nightly") == first
    claimed = await backend.claim("w1", ["q"], 10, LEASE)
    assert [task.id for task in claimed] == first


async def test_enqueue_in_batch_appends_after_the_existing_members(backend):
    first = await into_batch(backend, "nightly", 3)
    more = [new_task(backend) for _ in range(2)]
    assert await enqueue_in_batch(backend, "nightly", more) == 3
    assert await batches(backend).batch_task_ids("nightly") == first + [t.id for t in more]
    record = await batches(backend).get_batch("nightly")
    assert record is not None and (record.id, record.size) == ("nightly", 5)


async def test_batches_are_kept_apart(backend):
    a = await into_batch(backend, "a", 2)
    b = await into_batch(backend, "b", 3)
    assert await batches(backend).batch_task_ids("a") == a
    assert await batches(backend).batch_task_ids("b") == b


async def test_enqueue_in_batch_is_one_transaction(backend):
    existing = await into_batch(backend, "nightly", 1)
    clash = new_task(backend, task_id=existing[0])
    fresh = new_task(backend)
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its driver's error
        await enqueue_in_batch(backend, "nightly", [fresh, clash])
    assert await backend.get_tasks([fresh.id]) == {}
    assert await batches(backend).batch_task_ids("nightly") == existing
    record = await batches(backend).get_batch("nightly")
    assert record is not None and record.size == 1


async def test_concurrent_appends_to_one_batch_get_distinct_positions(backend, open_peer):
    peer = await open_peer()
    chunks = [[new_task(backend) for _ in range(20)] for _ in range(6)]
    starts = await asyncio.gather(
        *(
            enqueue_in_batch(backend if i % 2 else peer, "shared", chunk)
            for i, chunk in enumerate(chunks)
        )
    )
    assert sorted(starts) == [0, 20, 40, 60, 80, 100]
    stored = await batches(backend).batch_task_ids("shared")
    by_start = dict(zip(starts, chunks, strict=True))
    assert stored == [task.id for start in sorted(by_start) for task in by_start[start]]


async def test_enqueue_in_batch_with_expected_size_is_a_compare_and_set(backend):
    first = [new_task(backend) for _ in range(3)]
    assert await enqueue_in_batch(backend, "nightly", first, expected_size=0) == 0
    stale = [new_task(backend) for _ in range(2)]
    for expected in (0, 2, 5):  # not the size the batch has
        with pytest.raises(BatchSizeChanged) as caught:
            await enqueue_in_batch(backend, "nightly", stale, expected_size=expected)
        assert caught.value.expected_size == expected
    record = await batches(backend).get_batch("nightly")
    assert record is not None and record.size == 3
    assert await batches(backend).batch_task_ids("nightly") == [task.id for task in first]
    # The refused tasks were not stored either.
    assert await backend.get_tasks([task.id for task in stale]) == {}
    assert await enqueue_in_batch(backend, "nightly", stale, expected_size=3) == 3
    stored = await batches(backend).batch_task_ids("nightly")
    assert stored == [task.id for task in first + stale]
    # A missing batch has size 0 only.
    with pytest.raises(BatchSizeChanged):
        await enqueue_in_batch(backend, "gone", [new_task(backend)], expected_size=1)
    assert await batches(backend).get_batch("gone") is None


async def test_concurrent_compare_and_set_appends_one_wins(backend, open_peer):
    peer = await open_peer()
    await enqueue_in_batch(backend, "shared", [new_task(backend) for _ in range(4)])
    chunks = [[new_task(backend) for _ in range(10)] for _ in range(6)]
    outcomes = await asyncio.gather(
        *(
            enqueue_in_batch(backend if i % 2 else peer, "shared", chunk, expected_size=4)
            for i, chunk in enumerate(chunks)
        ),
        return_exceptions=True,
    )
    won = [i for i, outcome in enumerate(outcomes) if outcome == 4]
    assert len(won) == 1, outcomes
    assert all(
        isinstance(outcome, BatchSizeChanged) for i, outcome in enumerate(outcomes) if i != won[0]
    )
    record = await batches(backend).get_batch("shared")
    assert record is not None and record.size == 14
    stored = await batches(backend).batch_task_ids("shared")
    assert stored[4:] == [task.id for task in chunks[won[0]]]


async def test_create_batch_only_once(backend):
    assert await batches(backend).create_batch("nightly") is True
    assert await batches(backend).create_batch("nightly") is False
    record = await batches(backend).get_batch("nightly")
    assert record is not None and record.size == 0
    assert abs(record.created_at - backend.now()) < 60
    assert await batches(backend).batch_task_ids("nightly") == []


async def test_unknown_batch(backend):
    assert await batches(backend).get_batch("nope") is None
    assert await batches(backend).batch_task_ids("nope") == []
    assert await batches(backend).count_batch_statuses("nope") == {}
    assert await batches(backend).delete_batch("nope") is False


async def test_list_batches_newest_first(backend):
    await batches(backend).create_batch("old")
    await asyncio.sleep(0.01)
    await into_batch(backend, "new", 2)
    listed = await batches(backend).list_batches()
    assert [(b.id, b.size) for b in listed] == [("new", 2), ("old", 0)]


async def test_delete_batch_forgets_membership_but_keeps_the_tasks(backend):
    ids = await into_batch(backend, "nightly", 3)
    assert await batches(backend).delete_batch("nightly") is True
    assert await batches(backend).get_batch("nightly") is None
    assert await batches(backend).batch_task_ids("nightly") == []
    assert set(await backend.get_tasks(ids)) == set(ids)
    # The id can be used again, from position 0.
    again = await into_batch(backend, "nightly", 1)
    assert await batches(backend).batch_task_ids("nightly") == again


async def test_purged_tasks_leave_their_batch_but_still_count_in_its_size(backend):
    ids = await into_batch(backend, "nightly", 3, queue="p")
    done = await run_one(backend, "p", Outcome("failed", error="boom"))
    assert await backend.purge(["failed"]) == 1
    assert await batches(backend).batch_task_ids("nightly") == [i for i in ids if i != done]
    record = await batches(backend).get_batch("nightly")
    assert record is not None and record.size == 3
    assert sum((await batches(backend).count_batch_statuses("nightly")).values()) == 2


async def test_batch_members_keep_their_positions_when_tasks_leave(backend):
    ids = await into_batch(backend, "nightly", 3, queue="p")
    more = await into_batch(backend, "nightly", 2, queue="q")
    assert await batches(backend).batch_members("nightly") == list(enumerate(ids + more))
    done = await run_one(backend, "p", Outcome("failed", error="boom"))
    assert done == ids[0]  # the oldest is claimed first
    assert await backend.purge(["failed"]) == 1
    assert await batches(backend).batch_members("nightly") == [
        (1, ids[1]),
        (2, ids[2]),
        (3, more[0]),
        (4, more[1]),
    ]
    assert await batches(backend).batch_members("nope") == []


async def test_pruned_tasks_leave_their_batch(backend):
    tasks = [new_task(backend, "p")._replace(result_ttl=0.0) for _ in range(2)]
    await enqueue_in_batch(backend, "nightly", tasks)
    done = await run_one(backend, "p", Outcome("succeeded", result=b"r"))
    await asyncio.sleep(0.01)  # past its zero retention
    assert await backend.prune() == 1
    assert await batches(backend).batch_task_ids("nightly") == [t.id for t in tasks if t.id != done]


# -- bulk status ---------------------------------------------------------------------


async def test_status_counts_follow_the_tasks(backend):
    ids = await into_batch(backend, "nightly", 5, queue="c")
    expected = {"queued": 5}
    assert await batches(backend).count_batch_statuses("nightly") == expected
    assert await backend.count_statuses(ids) == expected
    await run_one(backend, "c", None)
    await run_one(backend, "c", Outcome("succeeded", result=b"r"))
    await run_one(backend, "c", Outcome("failed", error="boom"))
    await backend.cancel_queued(ids[3:4])
    expected = {"queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 1}
    assert await batches(backend).count_batch_statuses("nightly") == expected
    assert await backend.count_statuses(ids) == expected
    statuses = await backend.task_statuses(ids)
    outcomes = ["running", "succeeded", "failed", "cancelled", "queued"]
    assert statuses == dict(zip(ids, outcomes, strict=True))


async def test_status_queries_skip_unknown_ids_and_count_each_task_once(backend):
    ids = await into_batch(backend, "b", 2)
    query = [ids[0], ids[0], "unknown", ids[1]]
    assert await backend.count_statuses(query) == {"queued": 2}
    assert await backend.task_statuses(query) == {ids[0]: "queued", ids[1]: "queued"}
    assert await backend.count_statuses([]) == {}
    assert await backend.task_statuses([]) == {}


async def test_status_queries_take_many_ids_at_once(backend):
    tasks = [new_task(backend) for _ in range(3000)]
    await backend.enqueue(tasks)
    ids = [task.id for task in tasks]
    assert await backend.count_statuses(ids) == {"queued": 3000}
    assert len(await backend.task_statuses(ids)) == 3000


async def test_cancel_queued_cancels_only_what_has_not_started(backend):
    ids = await into_batch(backend, "b", 3, queue="x")
    running = await run_one(backend, "x", None)
    finished = await run_one(backend, "x", Outcome("succeeded", result=b"r"))
    cancelled = await backend.cancel_queued([*ids, "unknown"])
    assert cancelled == [ids[2]]
    statuses = await backend.task_statuses(ids)
    assert statuses == {running: "running", finished: "succeeded", ids[2]: "cancelled"}
    record = (await backend.get_tasks([ids[2]]))[ids[2]]
    assert record.finished_at is not None and record.error == "cancelled before it started"
    assert await backend.cancel_queued(ids) == []
    assert await backend.cancel_queued([]) == []


# -- schema version 2 migrates a version 1 store in place -----------------------------


def _v1_task_row(task_id: str) -> tuple:
    return (task_id, "default", "f", b"payload", 0, 1.0, 1.0, 0, 1.0, None, None, None)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_version_1_store_migrates_in_place(kind: str, tmp_path: Path) -> None:
    task_id = new_task_id()
    if kind == "sqlite":
        path = tmp_path / "v1.db"
        conn = sqlite_store_at(path, 1)
        conn.execute(
            "INSERT INTO sitq_tasks (id, queue, func_name, payload, status, priority, "
            "enqueued_at, available_at, max_retries, retry_backoff, timeout, unique_key, "
            "result_ttl) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
            _v1_task_row(task_id),
        )
        conn.close()
        backend: Backend = SQLiteBackend(path)
        schema = None
    else:
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        from sitq.backends.postgres import PostgresBackend

        schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
        pg = await postgres_store_at(schema, 1)
        try:
            await pg.execute(
                f'INSERT INTO "{schema}".sitq_tasks (id, queue, func_name, payload, status, '
                "priority, enqueued_at, available_at) "
                "VALUES ($1, 'default', 'f', 'payload', 'queued', 0, 1.0, 1.0)",
                task_id,
            )
        finally:
            await pg.close()
        backend = PostgresBackend(postgres_url(schema))
    try:
        await backend.connect()
        assert set(await backend.get_tasks([task_id])) == {task_id}
        ids = await into_batch(backend, "after-upgrade", 2)
        assert await batches(backend).batch_task_ids("after-upgrade") == ids
        await backend.close()
        # Opening again finds the latest version and changes nothing.
        await backend.connect()
        assert await batches(backend).batch_task_ids("after-upgrade") == ids
    finally:
        await backend.close()
        if schema is not None:
            await drop_postgres_schema(schema)
    if kind == "sqlite":
        conn = sqlite3.connect(path)
        version = conn.execute("SELECT value FROM sitq_meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == str(sqlite_schema.SCHEMA_VERSION)
        conn.close()


async def test_the_newest_batches_are_read_from_an_index_not_sorted(tmp_path: Path) -> None:
    """A page of the newest batches (the dashboard's overview) walks an index in
    order: its cost does not grow with the number of batches kept."""
    backend = SQLiteBackend(tmp_path / "tasks.db")
    await backend.connect()
    await backend.close()
    conn = sqlite3.connect(tmp_path / "tasks.db")
    plan = " ".join(
        str(row[-1])
        for row in conn.execute(
            "EXPLAIN QUERY PLAN " + sqlfiles.load_dialects("sitq.batch")["sqlite"]["list_batches"],
            (11, 0),
        )
    )
    conn.close()
    assert "sitq_batches_newest" in plan and "TEMP B-TREE" not in plan, plan
