"""The counts ``sitq status``, ``stats()`` and the dashboard read (``Backend.counts``)
equal a count of the task table after every kind of change, on every backend.

Since schema version 11 the finished tasks are counted as they end (by triggers;
on SQLite since version 12 by the statements that end running tasks, and one
trigger for the other moves), not by a scan: these tests compare the kept counts
with a brute-force COUNT over the table after each statement that moves tasks
between statuses. The clock is the backend's own, moved by hand (no sleeps):
leases expire and results age at once.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from support import (
    drop_postgres_schema,
    postgres_available,
    postgres_store_at,
    postgres_url,
    sqlite_store_at,
    task_ids_for,
)

from sitq.backends.base import STATUS_SQL, Backend, Dependency, NewTask, Outcome, StoreTransaction
from sitq.backends.sqlite import SQLiteBackend
from sitq.task import new_task_id

SUCCEEDED = Outcome("succeeded", result=b"r")
FAILED = Outcome("failed", error="ValueError: boom")
CANCELLED = Outcome("cancelled", error="cancelled by request")


class Clock:
    """The backend's clock, set by the test (``backend.now`` is replaced)."""

    def __init__(self) -> None:
        self.at = math.floor(time.time()) + 0.25

    def __call__(self) -> float:
        return self.at

    def tick(self, seconds: float = 1.0) -> None:
        self.at += seconds


@pytest.fixture
def clock(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(backend, "now", clock)
    monkeypatch.setattr("sitq.backends.common.RECLAIM_INTERVAL", 0.0)
    return clock


def task(
    backend: Backend, queue: str = "a", *, result_ttl: float | None = None, retries: int = 0
) -> NewTask:
    now = backend.now()
    return NewTask(
        task_ids_for(backend)[0],
        queue,
        "tests.job",
        b"p",
        0,
        now,
        now,
        retries,
        1.0,
        None,
        None,
        result_ttl,
    )


async def enqueue(backend: Backend, n: int, queue: str = "a", **options: Any) -> list[str]:
    tasks = [task(backend, queue, **options) for _ in range(n)]
    await backend.enqueue(tasks)
    return [t.id for t in tasks]


async def brute_force(
    backend: Backend, since: float | None = None
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Per (queue, status), every task and those finished at or after ``since``."""
    session = backend.store_session()
    table = "{s}.sitq_tasks" if session.dialect == "postgres" else "sitq_tasks"
    rows: Sequence[Sequence[Any]] = await session.fetch(
        f"SELECT queue, {STATUS_SQL} AS state, COUNT(*), "
        f"SUM(CASE WHEN finished_at >= {float(since or 0.0)!r} THEN 1 ELSE 0 END) "
        f"FROM {table} GROUP BY queue, state"
    )
    return (
        {(r[0], r[1]): int(r[2]) for r in rows},
        {(r[0], r[1]): int(r[3]) for r in rows if r[3]},
    )


async def agree(backend: Backend, clock: Clock) -> None:
    """The kept counts are the table's, and so are the finishes of the last
    seconds (counted by whole seconds), however far back the window reaches."""
    for back in (0.0, 1.0, 3.0, 120.0, 7200.0):
        since = math.floor(clock.at - back)
        counted = await backend.counts(finished_since=since)
        statuses, finished = await brute_force(backend, since)
        assert counted.statuses == statuses
        assert counted.finished == finished, back
    assert (await backend.counts()).statuses == statuses


async def claim(backend: Backend, n: int, queue: str = "a", *, lease: float = 60.0) -> list[Any]:
    return await backend.claim("w", [queue], n, lease)


async def test_counts_equal_the_table_after_every_kind_of_change(
    backend: Backend, clock: Clock
) -> None:
    await enqueue(backend, 6)
    await enqueue(backend, 3, "b", retries=1)
    await agree(backend, clock)

    claimed = await claim(backend, 4)  # claimed, not started: still queued
    await agree(backend, clock)
    await backend.finish((), [(claimed[0].lease, clock())])  # started: running
    await agree(backend, clock)

    clock.tick()
    assert await backend.finish(
        [(claimed[0].lease, SUCCEEDED), (claimed[1].lease, FAILED), (claimed[2].lease, CANCELLED)]
    ) == [True, True, True]
    await agree(backend, clock)
    assert await backend.release([claimed[3].lease]) == 1
    await agree(backend, clock)

    # A retry outcome (back to queued), then the retry of a failure by id.
    (held,) = await claim(backend, 1, "b")
    retry = Outcome("queued", error="boom", retry_at=clock() + 5)
    assert await backend.finish([(held.lease, retry)]) == [True]
    await agree(backend, clock)
    clock.tick(2)
    assert await backend.retry([claimed[1].id]) == [claimed[1].id]
    await agree(backend, clock)

    # Cancels: a queued task now, a running one by request, then its end.
    queued = await enqueue(backend, 2, "c")
    assert await backend.cancel(queued[0]) == "cancelled"
    await agree(backend, clock)
    (running,) = await claim(backend, 1, "c")
    await backend.finish((), [(running.lease, clock())])
    assert await backend.cancel(running.id) == "requested"
    assert await backend.release([running.lease]) == 1  # asked to cancel: ends cancelled
    await agree(backend, clock)

    # Leases that expire: one claimed (back to queued), one started and lost too
    # often (failed as WorkerLost), one asked to cancel (cancelled).
    lost = await claim(backend, 2, "b", lease=1.0)
    await backend.finish((), [(lost[0].lease, clock())])
    assert await backend.record_start(lost[0].lease)
    clock.tick(5)
    await claim(backend, 1, "elsewhere")  # a claim reclaims the expired leases
    await agree(backend, clock)
    for _ in range(10):
        again = await claim(backend, 3, "b", lease=1.0)
        for held in again:
            assert await backend.record_start(held.lease)
        clock.tick(5)
        await claim(backend, 1, "elsewhere")
        await agree(backend, clock)
        if not again:
            break

    # Dependencies: a failed parent cancels its dependents (transitively), a
    # purged queued parent settles its own.
    parent, child, grandchild = (task(backend, "d") for _ in range(3))
    await backend.enqueue_dependent(
        [parent, child, grandchild],
        [Dependency(child.id, (parent.id,)), Dependency(grandchild.id, (child.id,))],
    )
    (held,) = await claim(backend, 1, "d")
    clock.tick()
    assert await backend.finish([(held.lease, FAILED)]) == [True]
    await agree(backend, clock)
    waiting, dependent = task(backend, "e"), task(backend, "e")
    await backend.enqueue_dependent([waiting, dependent], [Dependency(dependent.id, (waiting.id,))])
    assert await backend.purge(["queued"], queue="e") >= 1
    await agree(backend, clock)

    # Purge, and prune of the results past their retention.
    assert await backend.purge(["cancelled"], queue="c") == 2
    await agree(backend, clock)
    await enqueue(backend, 3, "f", result_ttl=10.0)
    for held in await claim(backend, 3, "f"):
        assert await backend.finish([(held.lease, SUCCEEDED)]) == [True]
    clock.tick(11)
    assert await backend.prune() == 3
    await agree(backend, clock)


async def test_counts_stay_exact_where_a_running_task_ends_otherwise(
    backend: Backend, clock: Clock
) -> None:
    """The moves out of 'running' besides a plain finish: a parent's finish (its
    dependents settle or end in the same statement), a retry outcome for a task
    asked to cancel, a lost lease of one asked to cancel, and a failed parent whose
    cancelled dependents are parents too. On SQLite (schema version 12) the
    statement that ends a running task counts it and a trigger counts the rest, so
    each must count once."""
    parent, child = task(backend, "p"), task(backend, "p")
    await backend.enqueue_dependent([parent, child], [Dependency(child.id, (parent.id,))])
    (held,) = await claim(backend, 1, "p")
    clock.tick()
    assert await backend.finish([(held.lease, SUCCEEDED)]) == [True]  # the child is due
    await agree(backend, clock)
    (held,) = await claim(backend, 1, "p")
    assert held.id == child.id

    (asked,) = await enqueue(backend, 1, "r", retries=3)
    (running,) = await claim(backend, 1, "r")
    await backend.finish((), [(running.lease, clock())])
    assert await backend.cancel(asked) == "requested"
    retry = Outcome("queued", error="boom", retry_at=clock() + 5)
    assert await backend.finish([(running.lease, retry), (held.lease, FAILED)]) == [True, True]
    await agree(backend, clock)

    await enqueue(backend, 1, "l")
    (lost,) = await claim(backend, 1, "l", lease=1.0)
    await backend.finish((), [(lost.lease, clock())])
    assert await backend.cancel(lost.id) == "requested"
    clock.tick(5)
    await claim(backend, 1, "elsewhere")  # reclaims: asked to cancel, it ends cancelled
    await agree(backend, clock)

    # One finish of two tasks, one of whose leases was lost meanwhile.
    await enqueue(backend, 2, "s")
    (kept,) = await claim(backend, 1, "s")
    (gone,) = await claim(backend, 1, "s", lease=1.0)
    clock.tick(5)
    await claim(backend, 1, "elsewhere")  # reclaims the lost one: queued again
    assert await backend.finish([(kept.lease, SUCCEEDED), (gone.lease, SUCCEEDED)]) == [
        True,
        False,
    ]
    await agree(backend, clock)

    # A lease given twice in one finish, or in one release, ends one task.
    await enqueue(backend, 3, "twice")
    once, again, asked = await claim(backend, 3, "twice")
    assert await backend.finish(
        [(once.lease, SUCCEEDED), (once.lease, SUCCEEDED), (again.lease, FAILED)]
    ) == [True, True, True]
    await backend.finish((), [(asked.lease, clock())])
    assert await backend.cancel(asked.id) == "requested"
    assert await backend.release([asked.lease, asked.lease]) == 1
    await agree(backend, clock)

    # A failed parent, a 'cancel' child that is a parent, and its own child.
    top, middle, bottom = (task(backend, "d") for _ in range(3))
    await backend.enqueue_dependent(
        [top, middle, bottom],
        [Dependency(middle.id, (top.id,)), Dependency(bottom.id, (middle.id,))],
    )
    (held,) = await claim(backend, 1, "d")
    clock.tick()
    assert await backend.finish([(held.lease, CANCELLED)]) == [True]
    await agree(backend, clock)
    statuses, _ = await brute_force(backend)
    assert statuses[("d", "cancelled")] == 3


async def test_a_plain_finish_on_sqlite_fires_one_trigger_at_most(tmp_path: Path) -> None:
    """SQLite runs each row trigger on UPDATE OF a column as a sub-program for every
    row, whatever its WHEN says: the worker's finish writes finished_at, so one
    trigger at most may watch it (schema version 12; four cost a fifth of the SQL
    of a claim and finish)."""
    backend = SQLiteBackend(tmp_path / "t.db")
    await backend.connect()
    try:
        rows = await backend.store_session().fetch(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'sitq_tasks'"
        )
    finally:
        await backend.close()
    on_update = [name for name, sql in rows if "UPDATE" in sql.split("BEGIN")[0]]
    assert on_update == ["sitq_tasks_ended"]


async def test_counts_stay_exact_once_old_seconds_are_folded(
    backend: Backend, clock: Clock
) -> None:
    """prune folds the seconds of old finishes into one: the totals stay exact,
    and a task that finished long ago can still be retried or purged."""
    await enqueue(backend, 4, result_ttl=1e9)
    held = await claim(backend, 4)
    assert (
        await backend.finish(
            [(h.lease, FAILED if i % 2 else SUCCEEDED) for i, h in enumerate(held)]
        )
        == [True] * 4
    )
    clock.tick(3 * 86400)
    await backend.prune()
    await agree(backend, clock)
    assert await backend.retry([held[1].id]) == [held[1].id]
    assert await backend.purge(["succeeded"]) == 2
    await agree(backend, clock)
    clock.tick(3 * 86400)
    await backend.prune()
    await agree(backend, clock)
    (again,) = await claim(backend, 1)
    clock.tick()
    assert await backend.finish([(again.lease, SUCCEEDED)]) == [True]
    await agree(backend, clock)


async def test_finished_since_counts_by_whole_seconds(backend: Backend, clock: Clock) -> None:
    """A window starts at a whole second: one given inside a second starts at it."""
    await enqueue(backend, 3)
    held = await claim(backend, 3)
    assert await backend.finish([(held[0].lease, SUCCEEDED)]) == [True]
    clock.tick(1.0)
    assert await backend.finish([(held[1].lease, SUCCEEDED)]) == [True]
    clock.tick(0.5)
    assert await backend.finish([(held[2].lease, FAILED)]) == [True]
    second = math.floor(clock.at)
    assert (await backend.counts(finished_since=second)).finished == {
        ("a", "succeeded"): 1,
        ("a", "failed"): 1,
    }
    assert (await backend.counts(finished_since=second + 0.9)).finished == {
        ("a", "succeeded"): 1,
        ("a", "failed"): 1,
    }
    assert (await backend.counts(finished_since=second + 1)).finished == {}
    assert (await backend.counts(finished_since=second - 1)).finished == {
        ("a", "succeeded"): 2,
        ("a", "failed"): 1,
    }


@pytest.mark.parametrize("name", ["live_counts", "finished_counts", "finished_since"])
async def test_counting_reads_no_finished_task(backend: Backend, name: str) -> None:
    """What counts() reads by default, and the recent finishes, come from the live
    tasks' indexes and the kept counts: no plan scans the task table (which keeps
    every finished task for its retention)."""
    session = backend.store_session()
    module = "postgres" if session.dialect == "postgres" else "sqlite"
    sql = getattr(__import__(f"sitq.backends.{module}.schema", fromlist=["SQL"]).SQL, name)

    async def plan(tx: StoreTransaction) -> str:
        if session.dialect == "postgres":
            await tx.execute("SET LOCAL enable_seqscan = off")  # only where no index serves
            rows = await tx.fetch("EXPLAIN " + sql, (0,) if "$1" in sql else ())
        else:
            rows = await tx.fetch("EXPLAIN QUERY PLAN " + sql, (0,) if "?1" in sql else ())
        return "\n".join(str(row[-1]) for row in rows)

    text = await session.transaction(plan)
    if session.dialect == "postgres":
        assert "Seq Scan on sitq_tasks" not in text, text
    else:
        scans = [line for line in text.splitlines() if line.startswith("SCAN sitq_tasks")]
        assert all("USING" in line for line in scans), text


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_version_10_store_migrates_with_its_finished_tasks_counted(
    kind: str, tmp_path: Path
) -> None:
    """Version 11 fills the kept counts from the tasks already stored: those
    finished in the last hour by their second, older ones all together."""
    now = time.time()
    rows = [  # (id, queue, status, started_at, finished_at)
        *((new_task_id(), "a", "succeeded", now - 9, now - 5) for _ in range(3)),
        *((new_task_id(), "a", "failed", now - 9, now - 7200) for _ in range(2)),
        (new_task_id(), "b", "cancelled", None, now - 1),
        (new_task_id(), "b", "running", now - 2, None),
        (new_task_id(), "b", "running", None, None),  # claimed: counts as queued
        (new_task_id(), "b", "queued", None, None),
    ]
    insert = (
        "INSERT INTO {t}sitq_tasks (id, queue, func_name, payload, status, priority, "
        "enqueued_at, available_at, started_at, finished_at, lease_expires_at) "
        "VALUES ({p1}, {p2}, 'f', {blob}, {p3}, 0, 1.0, 1.0, {p4}, {p5}, "
        "CASE WHEN {p3} = 'running' THEN 1e12 END)"
    )
    if kind == "sqlite":
        path = tmp_path / "v10.db"
        conn = sqlite_store_at(path, 10)
        sql = insert.format(t="", p1="?1", p2="?2", p3="?3", p4="?4", p5="?5", blob="x'00'")
        for row in rows:
            conn.execute(sql, row)
        conn.close()
        backend: Backend = SQLiteBackend(path)
        schema = None
    else:
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        from sitq.backends.postgres import PostgresBackend

        schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
        pg = await postgres_store_at(schema, 10)
        try:
            t = f'"{schema}".'
            sql = insert.format(t=t, p1="$1", p2="$2", p3="$3::text", p4="$4", p5="$5", blob="'x'")
            for row in rows:
                await pg.execute(sql, *row)
        finally:
            await pg.close()
        backend = PostgresBackend(postgres_url(schema))
    await backend.connect()
    try:
        since = math.floor(now - 60)
        counted = await backend.counts(finished_since=since)
        assert counted.statuses == {
            ("a", "succeeded"): 3,
            ("a", "failed"): 2,
            ("b", "cancelled"): 1,
            ("b", "running"): 1,
            ("b", "queued"): 2,
        }
        assert (counted.statuses, counted.finished) == await brute_force(backend, since)
        assert counted.finished == {("a", "succeeded"): 3, ("b", "cancelled"): 1}
    finally:
        await backend.close()
        if schema:
            await drop_postgres_schema(schema)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_migrated_store_counts_the_finished_tasks_it_received(
    kind: str, tmp_path: Path
) -> None:
    """`sitq migrate` inserts finished tasks, which no enqueue does (no trigger
    counts an insert): the destination's counts are its table's. Through the
    command, as an operator runs it."""
    source = SQLiteBackend(tmp_path / "source.db")
    await source.connect()
    try:
        await enqueue(source, 5)
        await enqueue(source, 2, "b")
        held = await claim(source, 4)
        assert (
            await source.finish(
                [(held[0].lease, SUCCEEDED), (held[1].lease, FAILED), (held[2].lease, CANCELLED)]
            )
            == [True] * 3
        )
    finally:
        await source.close()
    if kind == "sqlite":
        destination, schema = str(tmp_path / "destination.db"), None
    else:
        reason = postgres_available()
        if reason:
            pytest.skip(reason)
        schema = "t_" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:16]
        await drop_postgres_schema(schema)
        destination = postgres_url(schema)
    try:
        command = "from sitq.cli import main; main()"
        done = subprocess.run(
            [sys.executable, "-c", command, "migrate", str(tmp_path / "source.db"), destination],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        from sitq.backends.postgres import PostgresBackend

        target: Backend = (
            SQLiteBackend(destination) if schema is None else PostgresBackend(destination)
        )
        await target.connect()
        try:
            since = math.floor(target.now() - 60)
            counted = await target.counts(finished_since=since)
            assert (counted.statuses, counted.finished) == await brute_force(target, since)
            assert counted.statuses == {
                ("a", "succeeded"): 1,
                ("a", "failed"): 1,
                ("a", "cancelled"): 1,
                ("a", "queued"): 2,  # one claimed and one not: both queued
                ("b", "queued"): 2,
            }
        finally:
            await target.close()
    finally:
        if schema:
            await drop_postgres_schema(schema)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # PostgreSQL: NOTIFY
async def test_counting_a_finish_wakes_no_worker_for_tasks(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count a finish adds to is no task made due: a batch of plain finishes
    wakes those waiting for results only (SQLite tells the two apart by the rows
    its statements changed, the triggers' included)."""
    await enqueue(backend, 3)
    held = await claim(backend, 3)
    woken: list[str] = []
    channel = backend._wakeup  # type: ignore[attr-defined]
    monkeypatch.setattr(channel, "notify", woken.append)
    assert await backend.finish([(held[0].lease, SUCCEEDED)]) == [True]
    assert await backend.finish([(h.lease, FAILED) for h in held[1:]]) == [True, True]
    assert woken == ["results", "results"]
