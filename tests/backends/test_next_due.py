"""Backend.next_due: when an idle worker must look at the queue again on its own
(no wake-up comes when a delayed task, a retry or a lease falls due)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_conformance import DEFAULT, LONG_LEASE, enqueue, new_task, record

from sitq.backends.base import LimitRecord
from sitq.backends.sqlite import SQLiteBackend
from sitq.backends.sqlite.schema import SQL


async def test_nothing_waiting_is_none(backend):
    assert await backend.next_due([DEFAULT]) is None


async def test_the_earliest_delayed_task_of_the_queues_across_priorities(backend):
    """The earliest time wins whatever the priorities (the ready index is read
    priority by priority), and only the given queues count."""
    late_high = await enqueue(backend, priority=5, delay=300)
    soon_low = await enqueue(backend, priority=-3, delay=60)
    await enqueue(backend, priority=0, delay=200)
    other = await enqueue(backend, queue="other", delay=10)
    assert await backend.next_due([DEFAULT]) == (await record(backend, soon_low)).available_at
    assert await backend.next_due([DEFAULT, "other"]) == (await record(backend, other)).available_at
    assert await backend.next_due(["empty"]) is None
    assert (await record(backend, late_high)).available_at > (
        await record(backend, soon_low)
    ).available_at


async def test_a_queue_of_many_priorities_is_read_only_so_far(backend):
    """At most 32 priorities are read (one index seek each): past that the time
    is unknown, as if nothing waited, and the poll interval bounds the wait."""
    await backend.enqueue([new_task(backend, priority=p, delay=100 + p) for p in range(32)])
    assert await backend.next_due([DEFAULT]) == pytest.approx(backend.now() + 100, abs=5)
    await enqueue(backend, priority=-1, delay=50)  # a 33rd priority, the earliest
    assert await backend.next_due([DEFAULT]) is None
    await enqueue(backend, queue="other", delay=10)
    assert await backend.next_due([DEFAULT, "other"]) == pytest.approx(backend.now() + 10, abs=5)


async def test_a_ready_task_is_due_now(backend):
    await enqueue(backend, delay=300)
    before = backend.now()
    await enqueue(backend, priority=-1)
    due = await backend.next_due([DEFAULT])
    assert due is not None and due <= before + 0.01


async def test_a_held_lease_is_due_when_it_expires_in_any_queue(backend):
    """A dead worker's task comes back when its lease expires: that time counts
    for every worker, whatever queues it serves."""
    await enqueue(backend, queue="other")
    before = backend.now()
    assert len(await backend.claim("w1", ["other"], 1, LONG_LEASE)) == 1
    after = backend.now()
    due = await backend.next_due([DEFAULT])
    assert due is not None and before + LONG_LEASE <= due <= after + LONG_LEASE


async def test_while_a_limited_task_waits_the_answer_is_now(backend):
    """A limit's window frees room with no wake-up: keep looking while a task
    under a limit waits, and only then (an idle worker polled 20 times a second
    wherever a limit was merely defined)."""
    await backend.set_limit(LimitRecord("api", None, 1, 60.0))
    await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)  # reads the limits
    assert await backend.next_due([DEFAULT]) is None
    await backend.enqueue([new_task(backend, delay=300)._replace(limit_key="api")])
    due = await backend.next_due([DEFAULT])
    assert due is not None and due <= backend.now()


async def test_a_paused_queue_is_left_out_until_resumed(backend):
    """Resuming a queue wakes the workers, so its tasks need no polling meanwhile
    (an idle worker polled 20 times a second while a paused queue held any)."""
    await enqueue(backend)
    other = await enqueue(backend, queue="other", delay=60)
    await backend.set_paused(DEFAULT, True)
    assert await backend.next_due([DEFAULT]) is None
    assert await backend.next_due([DEFAULT, "other"]) == (await record(backend, other)).available_at
    await backend.set_paused(DEFAULT, False)
    due = await backend.next_due([DEFAULT, "other"])
    assert due is not None and due <= backend.now()


async def test_sqlite_reads_next_due_from_indexes_without_a_scan(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "tasks.db")
    await backend.connect()
    await backend.close()
    conn = sqlite3.connect(tmp_path / "tasks.db")
    plans = {
        name: " ".join(
            str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + SQL[name], params)
        )
        for name, params in (
            ("next_due_in_queue", ("default",)),
            ("next_lease_expiry", ()),
            ("limited_task_queued", ()),
        )
    }
    conn.close()
    assert "sitq_tasks_ready" in plans["next_due_in_queue"], plans
    assert "sitq_tasks_running" in plans["next_lease_expiry"], plans
    assert "sitq_tasks_limited_ready" in plans["limited_task_queued"], plans
    for plan in plans.values():
        assert "SCAN sitq_tasks" not in plan.replace("SCAN sitq_tasks USING", ""), plan
