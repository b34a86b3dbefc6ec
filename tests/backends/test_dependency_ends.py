"""Conformance: what purge and expiry do to a dependency graph, on every backend.

A parent purged before it finished settles its dependents in the purge's own
transaction, as a parent that ended without a result ("cancel" dependents end
cancelled naming it, "run" ones count it as done); expiry keeps a finished
parent until its dependents have finished, so they still receive its result;
and a parent whose row is gone anyway shows up, in its place, as missing.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from support import (
    drop_postgres_schema,
    postgres_available,
    postgres_store_at,
    postgres_url,
    sqlite_store_at,
    until_listening,
)
from test_dependencies import run_one, statuses, task

from sitq.backends.base import Backend, Dependency, NewTask, Outcome
from sitq.backends.sqlite import SQLiteBackend
from sitq.task import new_task_id


def in_queue(backend: Backend, queue: str, result_ttl: float | None = None) -> NewTask:
    return task(backend)._replace(queue=queue, result_ttl=result_ttl)


async def claim_ids(backend: Backend, queue: str = "default") -> set[str]:
    """The ids due in ``queue`` (claimed, then released)."""
    claimed = await backend.claim("peek", [queue], 50, 30.0)
    if claimed:
        await backend.release([c.lease for c in claimed])
    return {c.id for c in claimed}


async def test_purging_a_queued_parent_settles_its_dependents(backend: Backend) -> None:
    """ "cancel" dependents end cancelled naming the purged parent, transitively;
    "run" ones (and those of the cancelled) count it as done and become due."""
    parent = in_queue(backend, "parents")
    doomed, after_doomed, runs, runs_after_doomed = (task(backend) for _ in range(4))
    await backend.enqueue_dependent(
        [parent, doomed, after_doomed, runs, runs_after_doomed],
        [
            Dependency(doomed.id, (parent.id,)),
            Dependency(after_doomed.id, (doomed.id,)),
            Dependency(runs.id, (parent.id,), "run"),
            Dependency(runs_after_doomed.id, (doomed.id,), "run"),
        ],
    )
    assert await backend.purge(["queued"], queue="parents") == 1
    assert await statuses(backend, [doomed.id, after_doomed.id, runs.id]) == [
        "cancelled",
        "cancelled",
        "queued",
    ]
    records = await backend.get_tasks([doomed.id, after_doomed.id])
    for record in records.values():
        assert parent.id in (record.error or "") and "purged" in (record.error or "")
        links = await backend.task_links(record.id)
        assert links is not None and links.cancelled_by == parent.id
    assert await claim_ids(backend) == {runs.id, runs_after_doomed.id}
    links = await backend.task_links(runs.id, with_results=True)
    assert links is not None and links.results is not None
    # In its place among the results: purged, no result (as a parent that failed).
    assert [(r.id, r.status, r.result) for r in links.results] == [(parent.id, "purged", None)]


async def test_purging_a_running_parent_settles_its_dependents(backend: Backend) -> None:
    parent = in_queue(backend, "parents")
    child = task(backend)
    await backend.enqueue_dependent([parent, child], [Dependency(child.id, (parent.id,), "run")])
    assert [c.id for c in await backend.claim("w", ["parents"], 1, 30.0)] == [parent.id]
    assert await backend.purge(["running"], queue="parents") == 1
    assert await claim_ids(backend) == {child.id}


async def test_purging_a_parent_with_its_dependents_leaves_nothing_behind(
    backend: Backend,
) -> None:
    parent, child, grandchild = task(backend), task(backend), task(backend)
    await backend.enqueue_dependent(
        [parent, child, grandchild],
        [Dependency(child.id, (parent.id,)), Dependency(grandchild.id, (child.id,), "run")],
    )
    assert await backend.purge(["queued"]) == 3
    assert await backend.get_tasks([parent.id, child.id, grandchild.id]) == {}
    assert await backend.claim("w", ["default"], 5, 30.0) == []


async def test_expiry_keeps_a_parent_until_its_dependents_have_finished(
    backend: Backend,
) -> None:
    early = in_queue(backend, "default", result_ttl=0.0)
    late = in_queue(backend, "late")
    child = task(backend)
    await backend.enqueue_dependent(
        [early, late, child], [Dependency(child.id, (early.id, late.id))]
    )
    assert await run_one(backend, result=b"early") == early.id
    assert await backend.prune() == 0  # expired, but its dependent has not run
    (claimed,) = await backend.claim("w", ["late"], 1, 30.0)
    assert await backend.finish([(claimed.lease, Outcome("succeeded", result=b"late"))])
    links = await backend.task_links(child.id, with_results=True)
    assert links is not None and links.results is not None
    assert [(r.id, r.result) for r in links.results] == [(early.id, b"early"), (late.id, b"late")]
    assert await run_one(backend) == child.id
    assert await backend.prune() == 1  # its dependents are done: it goes now
    assert await backend.get_tasks([early.id]) == {}


async def test_a_parent_gone_since_it_finished_shows_up_missing_in_its_place(
    backend: Backend,
) -> None:
    first, second = in_queue(backend, "members"), in_queue(backend, "members")
    child = task(backend)
    await backend.enqueue_dependent(
        [first, second, child], [Dependency(child.id, (first.id, second.id))]
    )
    assert await run_one_in(backend, "members") == first.id
    assert await backend.purge(["succeeded"], queue="members") == 1
    assert await run_one_in(backend, "members") == second.id
    links = await backend.task_links(child.id, with_results=True)
    assert links is not None and links.results is not None
    assert [(r.id, r.status, r.result) for r in links.results] == [
        (first.id, "missing", None),
        (second.id, "succeeded", b"r"),
    ]


async def run_one_in(backend: Backend, queue: str) -> str:
    (claimed,) = await backend.claim("w", [queue], 1, 30.0)
    assert await backend.finish([(claimed.lease, Outcome("succeeded", result=b"r"))]) == [True]
    return claimed.id


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_version_9_store_with_a_waiting_chain_migrates_and_settles_it(
    kind: str, tmp_path: Path
) -> None:
    """Version 10 replaces PostgreSQL's settling trigger and adds purged parents:
    a chain stored waiting under version 9 settles under version 10."""
    parent, child, other = new_task_id(), new_task_id(), new_task_id()
    rows = [  # (id, has_children, waiting, parent_mode, available_at, queue)
        (parent, True, 0, None, 1.0, "default"),
        (child, False, 2, "cancel", 1.0 + 1e11, "default"),
        (other, True, 0, None, 1.0, "other"),
    ]
    insert = (
        "INSERT INTO {t}sitq_tasks (id, queue, func_name, payload, status, priority, "
        "enqueued_at, available_at, has_children, waiting, parent_mode) "
        "VALUES ({p1}, {p6}, 'f', {blob}, 'queued', 0, 1.0, {p5}, {p2}, {p3}, {p4})"
    )
    links = "INSERT INTO {t}sitq_dependencies VALUES ({p1}, {p2}, {p3})"
    if kind == "sqlite":
        path = tmp_path / "v9.db"
        conn = sqlite_store_at(path, 9)
        sql = insert.format(
            t="", p1="?1", p2="?2", p3="?3", p4="?4", p5="?5", p6="?6", blob="x'00'"
        )
        for row in rows:
            conn.execute(sql, row)
        for position, parent_id in enumerate((parent, other)):
            conn.execute(links.format(t="", p1="?", p2="?", p3="?"), (child, position, parent_id))
        conn.close()
        backend: Backend = SQLiteBackend(path)
        schema = None
    else:
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        from sitq.backends.postgres import PostgresBackend

        schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
        pg = await postgres_store_at(schema, 9)
        try:
            t = f'"{schema}".'
            sql = insert.format(
                t=t, p1="$1", p2="$2", p3="$3", p4="$4", p5="$5", p6="$6", blob="'x'"
            )
            for row in rows:
                await pg.execute(sql, *row)
            for position, parent_id in enumerate((parent, other)):
                await pg.execute(
                    links.format(t=t, p1="$1", p2="$2", p3="$3"), child, position, parent_id
                )
        finally:
            await pg.close()
        backend = PostgresBackend(postgres_url(schema))
    try:
        await backend.connect()
        (claimed,) = [c for c in await backend.claim("w", ["default"], 5, 30.0) if c.id == parent]
        assert await backend.finish([(claimed.lease, Outcome("succeeded", result=b"r"))])
        links_now = await backend.task_links(child)
        assert links_now is not None and links_now.waiting == 1
        assert await backend.purge(["queued"], queue="other") == 1
        record = (await backend.get_tasks([child]))[child]
        assert record.status == "cancelled" and other in (record.error or "")
        assert "purged" in (record.error or "")
    finally:
        await backend.close()
        if schema is not None:
            await drop_postgres_schema(schema)


async def test_the_purge_that_makes_a_dependent_due_wakes_the_workers(backend: Backend) -> None:
    parent = in_queue(backend, "parents")
    child = task(backend)
    await backend.enqueue_dependent([parent, child], [Dependency(child.id, (parent.id,), "run")])
    await until_listening(backend)
    assert await backend.purge(["queued"], queue="parents") == 1
    woken = time.monotonic()
    await backend.wait_for_change("tasks", 10.0)
    assert time.monotonic() - woken < 5.0, "no wake-up: the dependent waits for a poll"
    assert await claim_ids(backend) == {child.id}
