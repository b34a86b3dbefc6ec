"""The contract for unique keys, limits, paused queues and schedules, on every backend."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from test_conformance import DEFAULT, FAILED, LONG_LEASE, SUCCEEDED, new_task

from sitq.backends.base import Backend, LimitRecord, Outcome


def lifted(key: str) -> LimitRecord:
    """A limit that limits nothing: set, it lifts the key's limit."""
    return LimitRecord(key, None, None, None)


async def test_unique_key_returns_the_live_holder(backend: Backend) -> None:
    first = replace(new_task(backend), unique_key="report:7")
    assert await backend.enqueue_unique(first) == (first.id, True)
    second = replace(new_task(backend), unique_key="report:7")
    assert await backend.enqueue_unique(second) == (first.id, False)
    assert set(await backend.get_tasks([first.id, second.id])) == {first.id}
    other = replace(new_task(backend), unique_key="report:8")
    assert await backend.enqueue_unique(other) == (other.id, True)


async def test_unique_key_is_free_again_once_its_task_finished(backend: Backend) -> None:
    first = replace(new_task(backend), unique_key="k")
    await backend.enqueue_unique(first)
    (claimed,) = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    again = replace(new_task(backend), unique_key="k")
    assert await backend.enqueue_unique(again) == (first.id, False)  # running holds it too
    assert await backend.finish([(claimed.lease, SUCCEEDED)]) == [True]
    assert await backend.enqueue_unique(again) == (again.id, True)


async def test_concurrent_unique_enqueues_create_one_task(backend: Backend, open_peer) -> None:
    peers = [backend, await open_peer(), await open_peer()]
    tasks = [replace(new_task(backend), unique_key="once") for _ in range(12)]
    outcomes = await asyncio.gather(
        *(peers[i % 3].enqueue_unique(task) for i, task in enumerate(tasks))
    )
    created = [task_id for task_id, was_created in outcomes if was_created]
    assert len(created) == 1
    assert {task_id for task_id, _ in outcomes} == set(created)


async def test_retry_leaves_a_failed_task_whose_key_is_taken(backend: Backend) -> None:
    failed = replace(new_task(backend), unique_key="k")
    await backend.enqueue_unique(failed)
    (claimed,) = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    await backend.finish([(claimed.lease, FAILED)])
    holder = replace(new_task(backend), unique_key="k")
    await backend.enqueue_unique(holder)
    assert len(await backend.retry([failed.id])) == 0
    assert (await backend.get_tasks([failed.id]))[failed.id].status == "failed"


async def test_paused_queue_is_not_claimed_until_resumed(backend: Backend) -> None:
    await backend.enqueue([new_task(backend), new_task(backend, queue="other")])
    assert await backend.set_paused(DEFAULT, True)
    assert not await backend.set_paused(DEFAULT, True)  # pausing twice is fine
    assert await backend.paused_queues() == [DEFAULT]
    claimed = await backend.claim("w1", [DEFAULT, "other"], 10, LONG_LEASE)
    assert [task.queue for task in claimed] == ["other"]
    assert await backend.set_paused(DEFAULT, False)
    assert not await backend.set_paused(DEFAULT, False)
    assert await backend.paused_queues() == []
    assert [t.queue for t in await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)] == [DEFAULT]


async def test_concurrency_limit_caps_running_tasks_of_its_key(backend: Backend) -> None:
    await backend.set_limit(LimitRecord("render", 2, None, None))
    limited = [replace(new_task(backend), limit_key="render") for _ in range(5)]
    free = [new_task(backend) for _ in range(2)]
    await backend.enqueue([*limited, *free])
    claimed = await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)
    assert sorted(t.id for t in claimed) == sorted([*(t.id for t in free), *_ids(limited)[:2]])
    assert await backend.claim("w2", [DEFAULT], 10, LONG_LEASE) == []
    done = next(t for t in claimed if t.id == limited[0].id)
    assert await backend.finish([(done.lease, SUCCEEDED)]) == [True]
    (next_one,) = await backend.claim("w2", [DEFAULT], 10, LONG_LEASE)
    assert next_one.id == limited[2].id


async def test_rate_limit_caps_starts_per_window(backend: Backend) -> None:
    await backend.set_limit(LimitRecord("api", None, 3, 0.5))
    await backend.enqueue([replace(new_task(backend), limit_key="api") for _ in range(5)])
    first = await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)
    assert len(first) == 3
    await backend.finish([(t.lease, SUCCEEDED) for t in first])
    assert await backend.claim("w1", [DEFAULT], 10, LONG_LEASE) == []  # finished still count
    await asyncio.sleep(0.6)
    assert len(await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)) == 2


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # PostgreSQL: the server's clock
async def test_a_limited_claim_that_waited_for_the_lock_counts_its_starts_when_it_took_them(
    backend: Backend, tmp_path: Path
) -> None:
    """A claimer that waits for another writer must not stamp its starts with the
    time it began waiting: they would leave the window early and let a second
    claimer start too many (seen as 20 starts in one second, limit 10)."""
    await backend.set_limit(LimitRecord("api", None, 3, 1.0))
    await backend.enqueue([replace(new_task(backend), limit_key="api") for _ in range(6)])
    holder = sqlite3.connect(tmp_path / "tasks.db", check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    held = threading.Event()
    release = threading.Timer(1.3, lambda: (holder.rollback(), held.set()))
    release.start()
    try:
        first = await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)  # waits about 1.3 s
        assert held.is_set() and len(first) == 3
        # At once: those 3 starts are a moment old, so the window is full.
        assert await backend.claim("w2", [DEFAULT], 10, LONG_LEASE) == []
    finally:
        release.join()
        holder.close()


async def test_limits_are_listed_replaced_and_deleted(backend: Backend) -> None:
    await backend.set_limit(LimitRecord("b", 1, None, None))
    await backend.set_limit(LimitRecord("a", None, 10, 1.0))
    await backend.set_limit(LimitRecord("b", 4, None, None))
    assert await backend.list_limits() == [
        LimitRecord("a", None, 10, 1.0),
        LimitRecord("b", 4, None, None),
    ]
    assert await backend.set_limit(lifted("a")) and not await backend.set_limit(lifted("a"))
    # A key with no limit is an ordinary task.
    task = replace(new_task(backend), limit_key="a")
    await backend.enqueue([task])
    assert [t.id for t in await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)] == [task.id]


async def test_a_schedule_run_is_recorded_and_enqueued_once(backend: Backend, open_peer) -> None:
    assert await backend.advance_schedule("nightly", "0 3 * * *", 100.0, 200.0, None)
    peers = [backend, await open_peer(), await open_peer()]
    tasks = [new_task(backend) for _ in peers]
    won = await asyncio.gather(
        *(peer.advance_schedule("nightly", "0 3 * * *", 200.0, 300.0, task)
          for peer, task in zip(peers, tasks, strict=True))
    )  # fmt: skip
    assert sorted(won) == [False, False, True]
    winner = tasks[won.index(True)]
    assert set(await backend.get_tasks([t.id for t in tasks])) == {winner.id}
    assert not await backend.advance_schedule("nightly", "0 3 * * *", 150.0, 300.0, None)
    (record,) = await backend.list_schedules()
    assert (record.name, record.spec, record.last_run_at, record.next_run_at) == (
        "nightly",
        "0 3 * * *",
        200.0,
        300.0,
    )


def replace(task: Any, **changes: Any) -> Any:
    """A NewTask (a named tuple) with ``changes``."""
    return task._replace(**changes)


def _ids(tasks: list) -> list[str]:
    return [task.id for task in tasks]


async def test_a_retried_start_counts_against_the_rate_limit(backend: Backend) -> None:
    await backend.set_limit(LimitRecord("api", None, 2, 10.0))
    first = replace(new_task(backend), limit_key="api", max_retries=3)
    await backend.enqueue([first])
    (claimed,) = await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)
    retry_now = Outcome("queued", error="E: again", retry_at=backend.now())
    assert await backend.finish([(claimed.lease, retry_now)]) == [True]
    (again,) = await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)  # start number 2
    assert again.id == first.id
    await backend.enqueue([replace(new_task(backend), limit_key="api")])
    assert await backend.claim("w1", [DEFAULT], 10, LONG_LEASE) == []  # 2 starts in 10 s


async def test_limited_tasks_are_not_starved_by_a_backlog_of_others(backend: Backend) -> None:
    await backend.set_limit(LimitRecord("render", 5, None, None))
    await backend.enqueue([new_task(backend) for _ in range(50)])
    urgent = replace(new_task(backend, priority=10), limit_key="render")
    await backend.enqueue([urgent])
    claimed = await backend.claim("w1", [DEFAULT], 5, LONG_LEASE)
    assert urgent.id in [task.id for task in claimed]


async def test_set_limit_says_whether_one_was_set_and_a_replaced_limit_keeps_its_starts(
    backend: Backend,
) -> None:
    assert await backend.set_limit(LimitRecord("api", None, 1, 3600.0)) is False
    await backend.enqueue([replace(new_task(backend), limit_key="api") for _ in range(2)])
    assert len(await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)) == 1  # the hour's start
    assert await backend.set_limit(LimitRecord("api", 5, 1, 3600.0)) is True
    assert await backend.list_limits() == [LimitRecord("api", 5, 1, 3600.0)]
    assert await backend.claim("w1", [DEFAULT], 10, LONG_LEASE) == []  # that start counts
    assert await backend.set_limit(lifted("api")) is True
    assert await backend.list_limits() == []
    assert len(await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)) == 1  # an ordinary task
    assert await backend.set_limit(lifted("api")) is False


async def test_lifting_a_limit_frees_its_waiting_tasks(backend: Backend) -> None:
    await backend.set_limit(LimitRecord("render", 1, None, None))
    tasks = [replace(new_task(backend), limit_key="render") for _ in range(3)]
    await backend.enqueue(tasks)
    assert len(await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)) == 1
    assert await backend.set_limit(lifted("render"))
    assert len(await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)) == 2


async def test_retry_brings_back_one_of_several_finished_tasks_sharing_a_key(
    backend: Backend,
) -> None:
    ids = []
    for _ in range(2):
        task = replace(new_task(backend), unique_key="k")
        await backend.enqueue_unique(task)
        (claimed,) = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
        await backend.finish([(claimed.lease, FAILED)])
        ids.append(task.id)
    assert len(await backend.retry(ids)) == 1
    assert len(await backend.retry(None, queue=DEFAULT)) == 0
    statuses = sorted(r.status for r in (await backend.get_tasks(ids)).values())
    assert statuses == ["failed", "queued"]


async def test_deleting_a_limit_leaves_the_others_and_forgets_its_starts(backend: Backend) -> None:
    assert await backend.set_limit(lifted("never-set")) is False
    await backend.set_limit(LimitRecord("api", None, 1, 3600.0))
    await backend.set_limit(LimitRecord("render", 1, None, None))
    await backend.enqueue([replace(new_task(backend), limit_key="api")])
    assert len(await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)) == 1  # the hour's start
    assert await backend.set_limit(lifted("api")) is True
    assert await backend.list_limits() == [LimitRecord("render", 1, None, None)]
    # Set again, the limit counts from nothing: the deleted limit's starts are gone.
    await backend.set_limit(LimitRecord("api", None, 1, 3600.0))
    fresh = replace(new_task(backend), limit_key="api")
    await backend.enqueue([fresh])
    assert [t.id for t in await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)] == [fresh.id]
    # The other limit still holds.
    await backend.enqueue([replace(new_task(backend), limit_key="render") for _ in range(2)])
    assert len(await backend.claim("w1", [DEFAULT], 10, LONG_LEASE)) == 1
