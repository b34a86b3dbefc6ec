"""Backend.next_due: when an idle worker must look at the queue again on its own
(no wake-up comes when a delayed task, a retry or a lease falls due)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from support import until_listening
from test_conformance import DEFAULT, LONG_LEASE, SUCCEEDED, enqueue, new_task, record

from sitq.backends.base import Lease, LimitRecord, NewTask
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


def limited(backend, key: str = "api", **options) -> NewTask:
    return new_task(backend, **options)._replace(limit_key=key)


async def test_a_limited_task_with_room_is_due_at_its_time(backend):
    """Room under its limit: the task's own time, in the worker's queues only (an
    idle worker polled 20 times a second while any limited task waited)."""
    await backend.set_limit(LimitRecord("api", 2, 5, 60.0))
    await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)  # reads the limits
    assert await backend.next_due([DEFAULT]) is None
    task = limited(backend, delay=300)
    await backend.enqueue([task, limited(backend, queue="other", delay=100)])
    assert await backend.next_due([DEFAULT]) == (await record(backend, task.id)).available_at
    await backend.enqueue([limited(backend)])
    due = await backend.next_due([DEFAULT])
    assert due is not None and due <= backend.now()


async def test_a_full_concurrency_limit_waits_for_an_end_not_a_time(backend):
    """Room frees when a running task under the limit ends (its finish wakes the
    workers) or its lease runs out (a time next_due already gives)."""
    await backend.set_limit(LimitRecord("api", 1, None, None))
    await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)  # reads the limits
    await backend.enqueue([limited(backend)])
    [held] = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    await backend.enqueue([limited(backend)])
    assert held.lease.limited
    due = await backend.next_due([DEFAULT])
    assert due is not None and due >= backend.now() + LONG_LEASE - 5  # the lease, not now


async def test_a_used_up_rate_limit_is_due_when_its_window_moves(backend):
    await backend.set_limit(LimitRecord("api", None, 1, 60.0))
    await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)  # reads the limits
    await backend.enqueue([limited(backend)])
    before = backend.now()
    [held] = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    after = backend.now()
    await backend.finish([(held.lease, SUCCEEDED)])
    await backend.enqueue([limited(backend)])
    due = await backend.next_due([DEFAULT])
    assert due is not None and before + 60.0 <= due <= after + 60.0 + 1


async def test_the_end_of_a_limited_task_wakes_the_workers(backend, open_peer):
    """Idle workers do not poll for a limit's room: the finish that frees it wakes
    them, as a retry does; an ordinary task's finish does not."""
    await backend.set_limit(LimitRecord("api", 1, None, None))
    await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)  # reads the limits
    await backend.enqueue([limited(backend), new_task(backend)])
    claimed = await backend.claim("w1", [DEFAULT], 2, LONG_LEASE)
    [plain] = [task for task in claimed if not task.lease.limited]
    [held] = [task for task in claimed if task.lease.limited]
    idle = await open_peer()  # an idle worker's backend, listening from here on

    async def finish_wakes(lease: Lease) -> bool:
        await until_listening(idle)  # it hears wake-ups, and any earlier are drained
        await backend.finish([(lease, SUCCEEDED)])
        started = time.monotonic()
        await idle.wait_for_change("tasks", 1.0)
        return time.monotonic() - started < 0.5

    assert not await finish_wakes(plain.lease)
    assert await finish_wakes(held.lease)


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
            ("limited_due", (1.0, '["default"]')),
        )
    }
    conn.close()
    assert "sitq_tasks_ready" in plans["next_due_in_queue"], plans
    assert "sitq_tasks_running" in plans["next_lease_expiry"], plans
    assert "sitq_tasks_limited_ready" in plans["limited_due"], plans
    assert "sitq_tasks_limited_running" in plans["limited_due"], plans
    for plan in plans.values():
        assert "SCAN sitq_tasks" not in plan.replace("SCAN sitq_tasks USING", ""), plan
