"""Workflow run state in the storage contract (schema version 5), on every backend.

The `backend` fixture (tests/backends/conftest.py) runs each test once per backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from pathlib import Path

import pytest
from support import (
    drop_postgres_schema,
    postgres_available,
    postgres_store_at,
    postgres_url,
    sqlite_store_at,
)

from sitq.backends.base import Backend, NewTask
from sitq.backends.sqlite import SQLiteBackend
from sitq.backends.sqlite import schema as sqlite_schema
from sitq.errors import ConfigurationError
from sitq.task import new_task_id
from sitq.workflow.store import NewWorkflowRun, WorkflowStore


def workflows(backend: Backend) -> WorkflowStore:
    """The workflow runs of ``backend``'s database."""
    return WorkflowStore(backend.store_session())


def new_run(run_id: str = "run-1", **changes: object) -> NewWorkflowRun:
    run = NewWorkflowRun(
        id=run_id,
        source="flow.yaml",
        name="flow",
        text="steps: {}\n",
        params=b"\x80params",
        params_preview="{'x': 1}",
        host="host-a",
        pid=123,
    )
    return run._replace(**changes)


async def begin(backend: Backend, run_id: str, step: str, count: int, position: int = 0) -> bool:
    previews = [f"item {i}" for i in range(count)]
    return await workflows(backend).begin_workflow_step(
        run_id, step, position, b"items-bytes", previews, has_items=True
    )


# -- runs -------------------------------------------------------------------------


async def test_a_run_is_recorded_once_and_read_back(backend: Backend) -> None:
    before = backend.now()
    assert await workflows(backend).create_workflow_run(new_run()) is True
    assert await workflows(backend).create_workflow_run(new_run(source="other.yaml")) is False
    run = await workflows(backend).get_workflow_run("run-1")
    assert run is not None
    assert (run.id, run.source, run.name, run.text) == ("run-1", "flow.yaml", "flow", "steps: {}\n")
    assert run.params == b"\x80params" and isinstance(run.params, bytes)
    assert (run.params_preview, run.status, run.error) == ("{'x': 1}", "running", None)
    assert (run.host, run.pid, run.finished_at) == ("host-a", 123, None)
    assert before <= run.created_at == run.updated_at <= backend.now()
    assert await workflows(backend).get_workflow_run("nope") is None


async def test_runs_are_listed_newest_first(backend: Backend) -> None:
    for n in range(3):
        await workflows(backend).create_workflow_run(new_run(f"run-{n}"))
        await asyncio.sleep(0.002)
    assert [r.id for r in await workflows(backend).list_workflow_runs()] == [
        "run-2",
        "run-1",
        "run-0",
    ]
    assert [r.id for r in await workflows(backend).list_workflow_runs(limit=2)] == [
        "run-2",
        "run-1",
    ]


@pytest.mark.parametrize("limit", [0, -1, True, "2"])
async def test_a_listing_limit_that_is_not_a_positive_int_is_refused(
    backend: Backend, limit: object
) -> None:
    with pytest.raises(ConfigurationError, match="limit must be an int >= 1"):
        await workflows(backend).list_workflow_runs(limit)  # type: ignore[arg-type]


async def test_a_run_finishes_and_is_taken_over(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    assert (
        await workflows(backend).update_workflow_run("run-1", "failed", "step 'a' failed") is True
    )
    run = await workflows(backend).get_workflow_run("run-1")
    assert run is not None and (run.status, run.error) == ("failed", "step 'a' failed")
    assert run.finished_at is not None and run.finished_at >= run.created_at
    assert (run.host, run.pid) == ("host-a", 123)  # the owner stays unless given

    assert await workflows(backend).update_workflow_run("run-1", "running", host="host-b", pid=456)
    run = await workflows(backend).get_workflow_run("run-1")
    assert run is not None and (run.status, run.error, run.finished_at) == ("running", None, None)
    assert (run.host, run.pid) == ("host-b", 456)
    assert await workflows(backend).update_workflow_run("nope", "failed") is False


# -- steps ------------------------------------------------------------------------


async def test_a_step_begins_with_its_items_pending_only_once(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    assert await begin(backend, "run-1", "split", 3) is True
    assert await begin(backend, "run-1", "split", 5) is False  # nothing changes
    steps = await workflows(backend).list_workflow_steps("run-1")
    assert [(s.name, s.position, s.status, s.total, s.has_items) for s in steps] == [
        ("split", 0, "running", 3, True)
    ]
    assert steps[0].items is None and steps[0].result is None  # bytes only when asked for
    step = await workflows(backend).get_workflow_step("run-1", "split")
    assert step is not None and step.items == b"items-bytes" and step.finished_at is None
    items = await workflows(backend).list_workflow_items("run-1", "split")
    assert [(i.index, i.item_preview, i.status, i.attempts) for i in items] == [
        (0, "item 0", "pending", 0),
        (1, "item 1", "pending", 0),
        (2, "item 2", "pending", 0),
    ]
    assert all(i.task_id is None and i.started_at is None for i in items)
    assert await workflows(backend).get_workflow_step("run-1", "later") is None


async def test_a_plain_step_has_one_item_without_preview(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    await workflows(backend).begin_workflow_step(
        "run-1", "only", 0, b"[None]", [None], has_items=False
    )
    steps = await workflows(backend).list_workflow_steps("run-1")
    assert [(s.total, s.has_items) for s in steps] == [(1, False)]
    items = await workflows(backend).list_workflow_items("run-1", "only")
    assert [(i.index, i.item_preview) for i in items] == [(0, None)]


async def test_an_empty_step_has_no_items(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    assert await begin(backend, "run-1", "empty", 0)
    assert await workflows(backend).list_workflow_items("run-1", "empty") == []
    assert [s.total for s in await workflows(backend).list_workflow_steps("run-1")] == [0]


async def test_steps_are_listed_by_position_and_runs_are_apart(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    await workflows(backend).create_workflow_run(new_run("run-2"))
    await begin(backend, "run-1", "second", 1, position=1)
    await begin(backend, "run-1", "first", 2, position=0)
    await begin(backend, "run-2", "first", 4, position=0)
    assert [s.name for s in await workflows(backend).list_workflow_steps("run-1")] == [
        "first",
        "second",
    ]
    assert len(await workflows(backend).list_workflow_items("run-1", "first")) == 2
    assert len(await workflows(backend).list_workflow_items("run-2", "first")) == 4


async def test_a_step_finishes_and_restarts(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    await begin(backend, "run-1", "s", 2)
    assert await workflows(backend).update_workflow_step(
        "run-1", "s", "failed", b"res", "[1, None]", "boom"
    )
    step = await workflows(backend).get_workflow_step("run-1", "s")
    assert step is not None
    assert (step.status, step.result, step.result_preview, step.error) == (
        "failed",
        b"res",
        "[1, None]",
        "boom",
    )
    assert step.finished_at is not None and step.finished_at >= step.started_at
    assert await workflows(backend).update_workflow_step("run-1", "s", "running")
    step = await workflows(backend).get_workflow_step("run-1", "s")
    assert step is not None and (step.status, step.error, step.finished_at) == (
        "running",
        None,
        None,
    )
    assert step.items == b"items-bytes"  # fixed when it began
    assert await workflows(backend).update_workflow_step("run-1", "nope", "failed") is False


# -- items ------------------------------------------------------------------------


async def test_an_item_is_started_attempted_submitted_and_finished(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    await begin(backend, "run-1", "s", 2)
    await workflows(backend).workflow_item_started("run-1", "s", 1, "workers")
    await workflows(backend).workflow_item_attempt("run-1", "s", 1, 1)
    await workflows(backend).workflow_item_submitted("run-1", "s", 1, "task-abc")
    item = (await workflows(backend).list_workflow_items("run-1", "s"))[1]
    assert (item.status, item.attempts, item.task_id, item.ran_on) == (
        "running",
        1,
        "task-abc",
        "workers",
    )
    assert item.started_at is not None and item.finished_at is None

    await workflows(backend).workflow_item_finished(
        "run-1", "s", 1, "succeeded", attempts=3, result=b"value", result_preview="42"
    )
    first, second = await workflows(backend).list_workflow_items("run-1", "s")
    assert first.status == "pending"  # the other item is untouched
    assert (second.status, second.attempts, second.result_preview, second.error) == (
        "succeeded",
        3,
        "42",
        None,
    )
    assert second.result is None  # results only when asked for
    assert second.finished_at is not None and second.finished_at >= second.started_at
    with_results = await workflows(backend).list_workflow_items("run-1", "s", with_results=True)
    assert [i.result for i in with_results] == [None, b"value"]


async def test_a_failed_item_keeps_its_error_until_it_starts_again(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    await begin(backend, "run-1", "s", 1)
    await workflows(backend).workflow_item_started("run-1", "s", 0, "local")
    await workflows(backend).workflow_item_finished(
        "run-1", "s", 0, "failed", attempts=2, error="ValueError: bad", traceback="Traceback..."
    )
    (item,) = await workflows(backend).list_workflow_items("run-1", "s")
    assert (item.status, item.attempts, item.error, item.traceback, item.result_preview) == (
        "failed",
        2,
        "ValueError: bad",
        "Traceback...",
        None,
    )
    await workflows(backend).workflow_item_started("run-1", "s", 0, "local")  # a resume redoes it
    (item,) = await workflows(backend).list_workflow_items("run-1", "s")
    assert (item.status, item.error, item.traceback, item.finished_at) == (
        "running",
        None,
        None,
        None,
    )
    assert item.attempts == 2  # until the next attempt is recorded


async def test_every_change_is_visible_to_another_connection_at_once(
    backend: Backend, open_peer
) -> None:
    """Committed when the call returns: a second connection (another process's view)
    sees each change without waiting."""
    peer = await open_peer()
    await workflows(backend).create_workflow_run(new_run())
    assert await workflows(peer).get_workflow_run("run-1") is not None
    await begin(backend, "run-1", "s", 2)
    assert len(await workflows(peer).list_workflow_items("run-1", "s")) == 2
    await workflows(backend).workflow_item_started("run-1", "s", 0, "local")
    await workflows(backend).workflow_item_attempt("run-1", "s", 0, 1)
    await workflows(backend).workflow_item_submitted("run-1", "s", 0, "t1")
    item = (await workflows(peer).list_workflow_items("run-1", "s"))[0]
    assert (item.status, item.attempts, item.task_id) == ("running", 1, "t1")
    await workflows(backend).workflow_item_finished(
        "run-1", "s", 0, "succeeded", attempts=1, result=b"r"
    )
    item = (await workflows(peer).list_workflow_items("run-1", "s", with_results=True))[0]
    assert (item.status, item.result) == ("succeeded", b"r")


async def test_thousands_of_items_are_cheap(backend: Backend) -> None:
    """A step of 5,000 items begins in one call, and an item change costs one
    statement (bounds a regression, not a benchmark)."""
    await workflows(backend).create_workflow_run(new_run())
    started = time.perf_counter()
    await begin(backend, "run-1", "big", 5000)
    assert len(await workflows(backend).list_workflow_items("run-1", "big")) == 5000
    for index in range(200):
        await workflows(backend).workflow_item_started("run-1", "big", index, "local")
        await workflows(backend).workflow_item_finished(
            "run-1", "big", index, "succeeded", attempts=1
        )
    assert time.perf_counter() - started < 10.0
    items = await workflows(backend).list_workflow_items("run-1", "big")
    assert sum(i.status == "succeeded" for i in items) == 200


# -- schema version 5 migrates a version 4 store in place -------------------------------


def _task(task_id: str) -> NewTask:
    now = time.time()
    return NewTask(task_id, "default", "f", b"payload", 0, now, now, 0, 1.0, None, None, None)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_version_4_store_migrates_in_place(kind: str, tmp_path: Path) -> None:
    task_id = new_task_id()
    schema = None
    if kind == "sqlite":
        path = tmp_path / "v4.db"
        conn = sqlite_store_at(path, 4)
        conn.execute(sqlite_schema.SQL.insert_task, _task(task_id))
        conn.close()
        backend: Backend = SQLiteBackend(path)
    else:
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        from sitq.backends.postgres import PostgresBackend

        schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
        pg = await postgres_store_at(schema, 4)
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
        assert set(await backend.get_tasks([task_id])) == {task_id}  # the tasks stay
        await workflows(backend).create_workflow_run(new_run())
        await begin(backend, "run-1", "s", 2)
        await backend.close()
        # Opening again finds the current version and changes nothing.
        await backend.connect()
        assert len(await workflows(backend).list_workflow_items("run-1", "s")) == 2
    finally:
        await backend.close()
        if schema is not None:
            await drop_postgres_schema(schema)
    if kind == "sqlite":
        conn = sqlite3.connect(path)
        version = conn.execute("SELECT value FROM sitq_meta WHERE key = 'schema_version'")
        assert version.fetchone()[0] == str(sqlite_schema.SCHEMA_VERSION)
        conn.close()


# -- SQLite: item writes are group-committed, and wait out another writer ---------------


@pytest.mark.parametrize("durable", [False, True])
async def test_sqlite_item_writes_wait_for_a_locked_database(tmp_path: Path, durable: bool) -> None:
    """Another process holding the write lock delays an item write (it goes to the
    database thread, which waits) but never loses or fails it; with ``durable`` every
    write takes that path."""
    backend = SQLiteBackend(tmp_path / "tasks.db", durable=durable)
    await backend.connect()
    try:
        await workflows(backend).create_workflow_run(new_run())
        await begin(backend, "run-1", "s", 20)
        await asyncio.gather(
            *(
                workflows(backend).workflow_item_started("run-1", "s", i, "local", 1)
                for i in range(10)
            )
        )
        other = sqlite3.connect(tmp_path / "tasks.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        writes = asyncio.gather(
            *(workflows(backend).workflow_item_finished("run-1", "s", i, "succeeded", attempts=1)
              for i in range(10))
        )  # fmt: skip
        await asyncio.sleep(0.2)
        assert not writes.done()
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(writes, 30)
        items = await workflows(backend).list_workflow_items("run-1", "s")
        assert [i.status for i in items[:10]] == ["succeeded"] * 10
        assert [i.attempts for i in items[:10]] == [1] * 10
    finally:
        await backend.close()
    # Committed before close returned: a fresh connection sees every write.
    rows = sqlite3.connect(tmp_path / "tasks.db").execute(
        "SELECT count(*) FROM sitq_workflow_items WHERE status = 'succeeded'"
    )
    assert rows.fetchone()[0] == 10


async def test_a_step_is_reset_with_its_items_and_begins_again(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    await workflows(backend).create_workflow_run(new_run("run-2"))
    assert await begin(backend, "run-1", "a", 3)
    assert await begin(backend, "run-2", "a", 2)
    await workflows(backend).workflow_item_finished(
        "run-1", "a", 0, "succeeded", attempts=1, result=b"r"
    )
    assert await workflows(backend).reset_workflow_step("run-1", "a") is True
    assert await workflows(backend).get_workflow_step("run-1", "a") is None
    assert await workflows(backend).list_workflow_items("run-1", "a") == []
    assert await workflows(backend).reset_workflow_step("run-1", "a") is False
    assert (
        len(await workflows(backend).list_workflow_items("run-2", "a")) == 2
    )  # other runs untouched
    assert await begin(backend, "run-1", "a", 1)
    (item,) = await workflows(backend).list_workflow_items("run-1", "a", with_results=True)
    assert (item.status, item.attempts, item.result) == ("pending", 0, None)


async def test_a_run_lease_is_renewed_only_by_its_owner(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    created = (await workflows(backend).get_workflow_run("run-1")).updated_at
    assert await workflows(backend).heartbeat_workflow_run("run-1", "host-a", 123) is True
    assert (await workflows(backend).get_workflow_run("run-1")).updated_at >= created
    assert await workflows(backend).heartbeat_workflow_run("run-1", "host-b", 123) is False
    assert await workflows(backend).heartbeat_workflow_run("run-1", "host-a", 124) is False
    assert await workflows(backend).heartbeat_workflow_run("nope", "host-a", 123) is False
    await workflows(backend).update_workflow_run("run-1", "failed", "boom")
    assert await workflows(backend).heartbeat_workflow_run("run-1", "host-a", 123) is False


async def test_a_running_run_is_taken_over_only_once_its_lease_expired(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    take = workflows(backend).take_over_workflow_run
    assert await take("run-1", "host-b", 9, stale_after=3600) is False  # lease held
    assert await take("run-1", "host-b", 9, stale_after=3600, dead_owner=("host-a", 1)) is False
    run = await workflows(backend).get_workflow_run("run-1")
    assert (run.status, run.host, run.pid) == ("running", "host-a", 123)
    # Its owner is known gone, or its lease is older than stale_after, or forced.
    assert await take("run-1", "host-b", 9, stale_after=3600, dead_owner=("host-a", 123))
    assert await take("run-1", "host-c", 8, stale_after=-1.0)
    assert await take("run-1", "host-d", 7, stale_after=None)
    run = await workflows(backend).get_workflow_run("run-1")
    assert (run.status, run.host, run.pid, run.finished_at) == ("running", "host-d", 7, None)
    assert await workflows(backend).heartbeat_workflow_run("run-1", "host-c", 8) is False  # lost it
    await workflows(backend).update_workflow_run("run-1", "interrupted", "killed")
    assert await take("run-1", "host-e", 6, stale_after=3600)  # not running: free
    run = await workflows(backend).get_workflow_run("run-1")
    assert (run.status, run.error, run.host, run.pid) == ("running", None, "host-e", 6)
    assert await take("nope", "host-e", 6, stale_after=None) is False


async def test_a_refused_take_over_changes_nothing(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    await workflows(backend).heartbeat_workflow_run("run-1", "host-a", 123)
    before = await workflows(backend).get_workflow_run("run-1")
    take = workflows(backend).take_over_workflow_run
    assert await take("run-1", "host-b", 9, stale_after=3600) is False
    # A dead owner refuses unless both its host and its pid match.
    assert await take("run-1", "host-b", 9, stale_after=3600, dead_owner=("host-b", 123)) is False
    assert await take("run-1", "host-b", 9, stale_after=3600, dead_owner=("host-a", 124)) is False
    assert await workflows(backend).get_workflow_run("run-1") == before
    assert (
        await workflows(backend).heartbeat_workflow_run("run-1", "host-a", 123) is True
    )  # still its


async def test_a_forced_take_over_reopens_a_finished_run(backend: Backend) -> None:
    await workflows(backend).create_workflow_run(new_run())
    await workflows(backend).update_workflow_run("run-1", "failed", "step 'a' failed")
    ended = await workflows(backend).get_workflow_run("run-1")
    assert ended is not None and ended.finished_at is not None
    assert await workflows(backend).take_over_workflow_run("run-1", "host-b", 9, stale_after=None)
    run = await workflows(backend).get_workflow_run("run-1")
    assert run is not None
    assert (run.status, run.error, run.finished_at, run.host, run.pid) == (
        "running",
        None,
        None,
        "host-b",
        9,
    )
    assert run.updated_at >= ended.updated_at and run.created_at == ended.created_at
    # A forced take-over of a run another process holds succeeds too.
    assert await workflows(backend).take_over_workflow_run("run-1", "host-c", 8, stale_after=None)
    assert await workflows(backend).heartbeat_workflow_run("run-1", "host-b", 9) is False
    assert await workflows(backend).heartbeat_workflow_run("run-1", "host-c", 8) is True
