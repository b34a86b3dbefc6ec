"""A dead worker's tasks are charged an attempt only if it had started them (20.5),
checked on every backend: prefetched bystanders go back as if released, and a
task that kills its worker at once is still stopped by the lost-lease limit."""

from __future__ import annotations

import asyncio
import time

from support import task_ids_for

from sitq.backends.base import LOST_LEASE_LIMIT, Backend, ClaimedTask, Lease, NewTask, Outcome

SHORT_LEASE = 0.05
LONG_LEASE = 60.0


async def enqueue(backend: Backend, queue: str, max_retries: int = 0) -> str:
    now = backend.now()
    task = NewTask(
        id=task_ids_for(backend)[0],
        queue=queue,
        func_name="tests.backends.job",
        payload=b"payload",
        priority=0,
        enqueued_at=now,
        available_at=now,
        max_retries=max_retries,
        retry_backoff=1.0,
        timeout=None,
        unique_key=None,
        result_ttl=None,
    )
    await backend.enqueue([task])
    return task.id


async def lose_and_take_back(backend: Backend, task: ClaimedTask, worker: str) -> ClaimedTask:
    """Let ``task``'s short lease run out, then claim it again as ``worker``."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        claimed = await backend.claim(worker, [task.queue], 1, SHORT_LEASE)
        if claimed:
            assert claimed[0].id == task.id
            return claimed[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the expired lease was not taken back")


async def settled_status(backend: Backend, task: ClaimedTask) -> tuple[str, int, str | None]:
    """(status, attempts, error) once the task's expired lease has been dealt with."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        await backend.claim("bystander", ["elsewhere"], 1, LONG_LEASE)  # reclaims
        record = (await backend.get_tasks([task.id]))[task.id]
        if record.status != "running" and not record.claimed:  # no longer held
            return record.status, record.attempts, record.error
        await asyncio.sleep(0.01)
    raise AssertionError("the expired lease was not dealt with")


async def test_a_prefetched_task_of_a_lost_worker_is_not_charged(backend, reclaim_immediately):
    task_id = await enqueue(backend, "q")
    [held] = await backend.claim("w1", ["q"], 1, SHORT_LEASE)  # claimed, never started
    assert held.recorded_start == 0
    assert await settled_status(backend, held) == ("queued", 0, None)
    [again] = await backend.claim("w2", ["q"], 1, LONG_LEASE)
    assert (again.id, again.attempts) == (task_id, 1)
    assert again.recorded_start != 0  # it was lost unstarted: record its start first
    assert await backend.finish([(again.lease, Outcome("succeeded", result=b"r"))]) == [True]


async def test_a_bystander_lost_again_and_again_never_fails(backend, reclaim_immediately):
    await enqueue(backend, "q")
    held = (await backend.claim("w0", ["q"], 1, SHORT_LEASE))[0]
    for n in range(LOST_LEASE_LIMIT + 3):
        held = await lose_and_take_back(backend, held, f"w{n + 1}")
        assert held.attempts == 1
    assert await settled_status(backend, held) == ("queued", 0, None)


async def test_a_started_task_is_charged_and_a_task_that_kills_at_once_still_ends(
    backend, reclaim_immediately
):
    """A task killing its worker before any start is recorded: its first loss is
    free, after which every worker records its start before running it."""
    await enqueue(backend, "q")
    held = (await backend.claim("w0", ["q"], 1, SHORT_LEASE))[0]
    held = await lose_and_take_back(backend, held, "w1")  # lost before a recorded start
    assert held.attempts == 1 and held.recorded_start != 0
    for n in range(LOST_LEASE_LIMIT):
        assert await backend.record_start(held.lease)
        held = await lose_and_take_back(backend, held, f"w{n + 2}")
        assert held.attempts == n + 2
    assert await backend.record_start(held.lease)
    status, attempts, error = await settled_status(backend, held)
    assert (status, attempts) == ("failed", 1 + LOST_LEASE_LIMIT)
    assert error and "WorkerLost" in error


async def test_record_start_needs_the_lease(backend):
    await enqueue(backend, "q")
    [held] = await backend.claim("w1", ["q"], 1, LONG_LEASE)
    assert not await backend.record_start(Lease(held.id, "w2", held.attempts))
    assert not await backend.record_start(Lease(held.id, "w1", held.attempts + 1))
    assert await backend.record_start(held.lease)
    assert await backend.finish([(held.lease, Outcome("succeeded", result=b"r"))]) == [True]
    assert not await backend.record_start(held.lease)  # finished: no longer held
