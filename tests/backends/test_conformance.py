"""The storage contract of sitq.backends.base.Backend, checked on every backend.

The `backend` fixture (tests/backends/conftest.py) runs each test once per backend.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import pytest
from support import task_ids_for, until_listening

from sitq.backends.base import (
    LOST_LEASE_LIMIT,
    Backend,
    ClaimedTask,
    Lease,
    NewTask,
    Outcome,
    TaskCounts,
    TaskRecord,
    WorkerRecord,
)
from sitq.task import new_task_id

T = TypeVar("T")

LONG_LEASE = 60.0
SHORT_LEASE = 0.05
DEFAULT = "default"

SUCCEEDED = Outcome("succeeded", result=b"the result")
FAILED = Outcome("failed", error="ValueError: boom", traceback="Traceback ...")
CANCELLED = Outcome("cancelled", error="cancelled by request")


# -- helpers ---------------------------------------------------------------------


def new_task(
    backend: Backend,
    *,
    queue: str = DEFAULT,
    priority: int = 0,
    delay: float = 0.0,
    enqueued_at: float | None = None,
    max_retries: int = 0,
    result_ttl: float | None = None,
    task_id: str | None = None,
    payload: bytes = b"payload",
) -> NewTask:
    now = backend.now()
    return NewTask(
        id=task_id or task_ids_for(backend)[0],
        queue=queue,
        func_name="tests.backends.job",
        payload=payload,
        priority=priority,
        enqueued_at=now if enqueued_at is None else enqueued_at,
        available_at=now + delay,
        max_retries=max_retries,
        retry_backoff=1.0,
        timeout=None,
        unique_key=None,
        result_ttl=result_ttl,
    )


async def enqueue(backend: Backend, **options) -> str:
    task = new_task(backend, **options)
    await backend.enqueue([task])
    return task.id


async def enqueue_many(backend: Backend, count: int, **options) -> list[str]:
    tasks = [new_task(backend, **options) for _ in range(count)]
    await backend.enqueue(tasks)
    return [task.id for task in tasks]


async def record(backend: Backend, task_id: str) -> TaskRecord:
    return (await backend.get_tasks([task_id]))[task_id]


async def start(
    backend: Backend, *, worker: str = "w1", lease: float = LONG_LEASE, **options
) -> ClaimedTask:
    """Enqueue one task (on a queue of its own unless given), claim it and start
    it: its start recorded (a lost lease then counts the attempt) and marked (it
    reads as running)."""
    options.setdefault("queue", f"solo-{new_task_id()}")
    task_id = await enqueue(backend, **options)
    [claimed] = await backend.claim(worker, [options["queue"]], 1, lease)
    assert claimed.id == task_id
    assert await backend.record_start(claimed.lease)
    await backend.finish((), [(claimed.lease, backend.now())])
    return claimed


async def finished(backend: Backend, outcome: Outcome, **options) -> str:
    """A task that ran once and ended with ``outcome``."""
    claimed = await start(backend, **options)
    assert await backend.finish([(claimed.lease, outcome)]) == [True]
    return claimed.id


async def eventually(probe: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def take_over(
    backend: Backend, queue: str, worker: str, lease: float = LONG_LEASE
) -> ClaimedTask:
    """Claim from ``queue`` until a task comes (e.g. once an expired lease is taken back)."""
    [claimed] = await eventually(lambda: backend.claim(worker, [queue], 1, lease))
    return claimed


async def settled(backend: Backend, task: ClaimedTask) -> TaskRecord:
    """The task's record once it stops running (claims meanwhile, to find expired leases)."""

    async def probe() -> TaskRecord | None:
        await backend.claim("bystander", [task.queue], 1, LONG_LEASE)
        current = await record(backend, task.id)
        return None if current.status == "running" or current.claimed else current

    return await eventually(probe)


def claimed_ids(batch: list[ClaimedTask]) -> list[str]:
    return [task.id for task in batch]


def worker_record(worker_id: str, started_at: float, **fields) -> WorkerRecord:
    values = {
        "hostname": "host-1",
        "pid": 4242,
        "queues": (DEFAULT, "mail"),
        "concurrency": 4,
        "heartbeat_at": started_at,
        "stopped_at": None,
        **fields,
    }
    return WorkerRecord(id=worker_id, started_at=started_at, **values)


WRONG_LEASES = {
    "other-worker": lambda lease: replace(lease, worker_id="intruder"),
    "older-attempt": lambda lease: replace(lease, attempt=lease.attempt - 1),
    "newer-attempt": lambda lease: replace(lease, attempt=lease.attempt + 1),
}
wrong_lease = pytest.mark.parametrize("spoil", WRONG_LEASES.values(), ids=WRONG_LEASES.keys())


# -- enqueue and get_tasks ---------------------------------------------------------


async def test_enqueued_batch_is_visible_in_full_to_another_connection(backend, open_peer):
    ids = await enqueue_many(backend, 200)
    records = await (await open_peer()).get_tasks(ids)
    assert set(records) == set(ids)
    assert {r.status for r in records.values()} == {"queued"}


async def test_enqueue_of_a_batch_is_one_transaction(backend):
    existing = await enqueue(backend)
    batch = [new_task(backend) for _ in range(3)]
    clash = new_task(backend, task_id=existing, payload=b"clash")
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its driver's error
        await backend.enqueue([*batch[:2], clash, batch[2]])
    assert await backend.get_tasks([t.id for t in batch]) == {}
    assert (await backend.get_tasks([existing], with_payload=True))[existing].payload == b"payload"


async def test_get_tasks_returns_the_stored_fields(backend):
    task = new_task(backend, queue="mail", priority=3, max_retries=2, delay=10.0)
    await backend.enqueue([task])
    stored = await record(backend, task.id)
    assert (stored.id, stored.queue, stored.func_name) == (task.id, "mail", task.func_name)
    assert (stored.status, stored.priority, stored.attempts, stored.max_retries) == (
        "queued",
        3,
        0,
        2,
    )
    assert (stored.enqueued_at, stored.available_at) == (task.enqueued_at, task.available_at)
    assert (stored.started_at, stored.finished_at, stored.worker_id) == (None, None, None)
    assert (stored.result, stored.error, stored.traceback) == (None, None, None)


async def test_get_tasks_leaves_unknown_ids_out(backend):
    known = await enqueue(backend)
    assert set(await backend.get_tasks([known, new_task_id(), "nonsense"])) == {known}


async def test_get_tasks_includes_the_payload_only_when_asked(backend):
    task_id = await enqueue(backend, payload=b"\x00\xffbytes")
    assert (await backend.get_tasks([task_id]))[task_id].payload is None
    with_payload = await backend.get_tasks([task_id], with_payload=True)
    assert with_payload[task_id].payload == b"\x00\xffbytes"


# -- claim -------------------------------------------------------------------------


async def test_claim_returns_at_most_limit_tasks(backend):
    await enqueue_many(backend, 5)
    assert len(await backend.claim("w1", [DEFAULT], 3, LONG_LEASE)) == 3
    assert len(await backend.claim("w1", [DEFAULT], 3, LONG_LEASE)) == 2
    assert await backend.claim("w1", [DEFAULT], 3, LONG_LEASE) == []


async def test_claim_takes_by_priority_then_available_at_then_enqueue_order(backend):
    now = backend.now()
    # Ids in order c < b < d < a < e, so the a-d tie is not id order; enqueued b, a, e, d, c.
    c, b, d, a, e = task_ids_for(backend, 5)
    tasks = {
        b: new_task(backend, task_id=b, priority=5, delay=-1.0),
        a: new_task(backend, task_id=a, priority=0, delay=-10.0),
        e: new_task(backend, task_id=e, priority=0, delay=-20.0),
        d: new_task(backend, task_id=d, priority=0, delay=-10.0),
        c: new_task(backend, task_id=c, priority=5, delay=-5.0),
    }
    tasks[d] = tasks[d]._replace(available_at=tasks[a].available_at)  # a tie, broken by order
    assert all(t.available_at < now for t in tasks.values())
    await backend.enqueue(list(tasks.values()))
    taken = [claimed_ids(await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)) for _ in tasks]
    # Integer ids (a new SQLite file) are the enqueue order as a producer hands
    # them out: the tie then goes by id.
    tie = [[d], [a]] if getattr(backend, "integer_ids", False) else [[a], [d]]
    assert taken == [[c], [b], [e], *tie]


async def test_claim_takes_equal_tasks_in_enqueue_order_not_id_order(backend):
    """Where ids are text (made by each producer), ties go by enqueue order, not id
    order. Where they are the rows' integer keys, by id: ids are handed out in
    order, so one producer's ties still go in its enqueue order."""
    ids = task_ids_for(backend, 5)
    if not getattr(backend, "integer_ids", False):
        ids.reverse()
    now = backend.now()
    for task_id in ids:
        await backend.enqueue([new_task(backend, task_id=task_id)._replace(available_at=now)])
    assert claimed_ids(await backend.claim("w1", [DEFAULT], 5, LONG_LEASE)) == ids


async def test_claim_with_a_limit_takes_the_best_tasks(backend):
    await enqueue_many(backend, 3, priority=0)
    best = await enqueue_many(backend, 2, priority=9)
    await enqueue_many(backend, 3, priority=1)
    assert set(claimed_ids(await backend.claim("w1", [DEFAULT], 2, LONG_LEASE))) == set(best)


async def test_claim_leaves_a_future_task_until_its_time(backend):
    task_id = await enqueue(backend, delay=0.3)
    available_at = (await record(backend, task_id)).available_at
    assert await backend.claim("w1", [DEFAULT], 1, LONG_LEASE) == []
    claimed = await take_over(backend, DEFAULT, "w1")
    assert claimed.id == task_id
    assert backend.now() >= available_at


async def test_claim_takes_only_from_the_given_queues(backend):
    wanted = [await enqueue(backend, queue="a"), await enqueue(backend, queue="c")]
    await enqueue(backend, queue="b")
    taken = await backend.claim("w1", ["a", "c"], 10, LONG_LEASE)
    assert sorted(claimed_ids(taken)) == sorted(wanted)


async def test_claimed_task_carries_its_data_and_lease(backend):
    task = new_task(backend, queue="mail", max_retries=2, payload=b"args")
    await backend.enqueue([task])
    [claimed] = await backend.claim("w1", ["mail"], 1, LONG_LEASE)
    assert (claimed.id, claimed.queue, claimed.func_name) == (task.id, "mail", task.func_name)
    assert (claimed.payload, claimed.max_retries, claimed.attempts) == (b"args", 2, 1)
    assert claimed.lease == Lease(task.id, "w1", 1)


async def test_claimed_task_reads_queued_and_claimed_under_its_worker_until_it_starts(backend):
    task_id = await enqueue(backend)
    before = backend.now()
    [claimed] = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    assert before <= claimed.claimed_at <= backend.now()
    stored = await record(backend, task_id)
    assert (stored.status, stored.claimed, stored.worker_id, stored.attempts) == (
        "queued",
        True,
        "w1",
        1,
    )
    assert stored.started_at is None
    assert await backend.task_statuses([task_id]) == {task_id: "queued"}
    assert await backend.count_statuses([task_id]) == {"queued": 1}


async def test_start_mark_makes_a_claimed_task_running_with_its_start_time(backend):
    task_id = await enqueue(backend)
    [claimed] = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    started_at = backend.now() + 0.5  # the worker's own reading of its clock
    await backend.finish((), [(claimed.lease, started_at)])
    stored = await record(backend, task_id)
    assert (stored.status, stored.claimed, stored.started_at) == ("running", False, started_at)
    assert await backend.task_statuses([task_id]) == {task_id: "running"}
    assert [r.id for r in (await backend.activity(0)).running] == [task_id]
    assert (await backend.activity(0)).claimed == {}


@wrong_lease
async def test_start_mark_with_a_wrong_lease_changes_nothing(backend, spoil):
    task_id = await enqueue(backend)
    [claimed] = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    await backend.finish((), [(spoil(claimed.lease), backend.now())])
    stored = await record(backend, task_id)
    assert (stored.status, stored.claimed, stored.started_at) == ("queued", True, None)


async def test_finish_stores_the_start_given_with_the_outcome(backend):
    ids = await enqueue_many(backend, 2)
    done, retried = await backend.claim("w1", [DEFAULT], 2, LONG_LEASE)
    retry = Outcome("queued", error="E", retry_at=backend.now() + 60)
    starts = [(done.lease, backend.now() + 1.0), (retried.lease, backend.now() + 2.0)]
    assert await backend.finish([(done.lease, SUCCEEDED), (retried.lease, retry)], starts) == [
        True,
        True,
    ]
    records = await backend.get_tasks(ids)
    assert (records[done.id].status, records[done.id].started_at) == ("succeeded", starts[0][1])
    assert (records[retried.id].status, records[retried.id].started_at) == (
        "queued",
        starts[1][1],
    )
    assert not records[retried.id].claimed


async def test_finish_writes_start_marks_of_tasks_still_running_with_the_outcomes(backend):
    await enqueue_many(backend, 3)
    done, running, waiting = await backend.claim("w1", [DEFAULT], 3, LONG_LEASE)
    started_at = backend.now()
    marks = [(done.lease, started_at), (running.lease, started_at + 0.25)]
    assert await backend.finish([(done.lease, SUCCEEDED)], marks) == [True]
    records = await backend.get_tasks([done.id, running.id, waiting.id])
    assert (records[done.id].status, records[done.id].started_at) == ("succeeded", started_at)
    assert (records[running.id].status, records[running.id].started_at) == (
        "running",
        started_at + 0.25,
    )
    assert (records[waiting.id].status, records[waiting.id].claimed) == ("queued", True)
    assert (await backend.activity(0)).claimed == {(DEFAULT, "w1"): 1}


async def test_finish_without_a_start_keeps_the_stored_one(backend):
    claimed = await start(backend)
    stored_start = (await record(backend, claimed.id)).started_at
    assert stored_start is not None
    assert await backend.finish([(claimed.lease, SUCCEEDED)]) == [True]
    assert (await record(backend, claimed.id)).started_at == stored_start


async def test_claimed_task_of_a_lost_worker_goes_back_to_the_queue(backend, reclaim_immediately):
    task_id = await enqueue(backend, queue="lost")
    [lost] = await backend.claim("w1", ["lost"], 1, SHORT_LEASE)  # claimed, never started
    again = await take_over(backend, "lost", "w2")
    assert (again.id, again.attempts) == (task_id, 1)  # lost unstarted: not charged
    assert await backend.finish([(lost.lease, SUCCEEDED)], [(lost.lease, 1.0)]) == [False]
    await backend.finish((), [(lost.lease, 1.0)])  # the lost worker's late mark
    stored = await record(backend, task_id)
    assert (stored.status, stored.claimed, stored.worker_id) == ("queued", True, "w2")
    assert stored.started_at is None


async def test_release_of_a_claimed_task_queues_it_again(backend):
    task_id = await enqueue(backend)
    [claimed] = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    assert await backend.release([claimed.lease]) == 1
    stored = await record(backend, task_id)
    assert (stored.status, stored.claimed, stored.attempts) == ("queued", False, 0)


async def test_claim_does_not_take_a_task_under_a_live_lease(backend, reclaim_immediately):
    held = await start(backend, worker="w1")
    assert await backend.claim("w2", [held.queue], 1, LONG_LEASE) == []


async def test_concurrent_claims_from_two_connections_take_each_task_once(backend, open_peer):
    other = await open_peer()
    ids = await enqueue_many(backend, 500)

    async def drain(store: Backend, worker: str) -> list[str]:
        taken: list[str] = []
        while batch := await store.claim(worker, [DEFAULT], 7, LONG_LEASE):
            taken.extend(claimed_ids(batch))
        return taken

    drains = [
        drain(store, f"w{i}-{n}") for i in range(20) for n, store in enumerate([backend, other])
    ]
    taken = [task_id for batch in await asyncio.gather(*drains) for task_id in batch]
    assert sorted(taken) == sorted(ids)


# -- finish ------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [SUCCEEDED, FAILED, CANCELLED], ids=lambda o: o.status)
async def test_finish_stores_the_outcome(backend, outcome):
    claimed = await start(backend)
    before = backend.now()
    assert await backend.finish([(claimed.lease, outcome)]) == [True]
    stored = await record(backend, claimed.id)
    assert stored.status == outcome.status
    assert (stored.result, stored.error, stored.traceback) == (
        outcome.result,
        outcome.error,
        outcome.traceback,
    )
    assert before <= stored.finished_at <= backend.now()


@wrong_lease
async def test_finish_with_a_wrong_lease_changes_nothing(backend, spoil):
    claimed = await start(backend)
    assert await backend.finish([(spoil(claimed.lease), SUCCEEDED)]) == [False]
    stored = await record(backend, claimed.id)
    assert (stored.status, stored.result, stored.finished_at) == ("running", None, None)
    assert await backend.finish([(claimed.lease, FAILED)]) == [True]


async def test_second_finish_of_a_lease_is_refused_and_keeps_the_result(backend):
    claimed = await start(backend)
    assert await backend.finish([(claimed.lease, SUCCEEDED)]) == [True]
    assert await backend.finish([(claimed.lease, FAILED)]) == [False]
    stored = await record(backend, claimed.id)
    assert (stored.status, stored.result, stored.error) == ("succeeded", b"the result", None)


async def test_finish_of_a_batch_applies_each_item_on_its_own_lease(backend):
    good, bad = await start(backend), await start(backend)
    results = await backend.finish(
        [(good.lease, SUCCEEDED), (replace(bad.lease, worker_id="intruder"), SUCCEEDED)]
    )
    assert results == [True, False]
    assert (await record(backend, good.id)).status == "succeeded"
    assert (await record(backend, bad.id)).status == "running"


async def test_finish_of_a_batch_refuses_an_already_finished_lease(backend):
    done, fresh = await start(backend), await start(backend)
    assert await backend.finish([(done.lease, SUCCEEDED)]) == [True]
    results = await backend.finish([(fresh.lease, SUCCEEDED), (done.lease, FAILED)])
    assert (await record(backend, done.id)).status == "succeeded"
    assert results == [True, False]


async def test_finish_of_hundreds_applies_each_on_its_own_lease_and_a_repeat_ends_once(
    backend,
):
    """More outcomes than one statement takes (SQLite: 64), not a power of two."""
    await enqueue_many(backend, 300, queue="many")
    claimed = await backend.claim("w1", ["many"], 300, LONG_LEASE)
    assert len(claimed) == 300
    await backend.finish((), [(task.lease, backend.now()) for task in claimed])  # running
    outcomes = [SUCCEEDED if i % 3 else FAILED for i in range(300)]
    items = [(task.lease, outcome) for task, outcome in zip(claimed, outcomes, strict=True)]
    items[7] = (replace(claimed[7].lease, attempt=9), SUCCEEDED)  # not its lease
    items[299] = (replace(claimed[299].lease, worker_id="intruder"), SUCCEEDED)
    # Given twice (SQLite: in another statement, in the same one): each ends once.
    twice = (10, 290)
    items += [(claimed[i].lease, CANCELLED) for i in twice]
    results = await backend.finish(items)
    once = [i for i in range(300) if i not in twice]
    assert [results[i] for i in once] == [i not in (7, 299) for i in once]
    records = await backend.get_tasks([task.id for task in claimed])
    for i in once:
        expected = "running" if i in (7, 299) else outcomes[i].status
        assert records[claimed[i].id].status == expected, i
    for i in twice:
        stored = records[claimed[i].id]
        assert (stored.status, stored.result) in {("succeeded", b"the result"), ("cancelled", None)}
    # The counts kept by the finish (schema 11 on) see each repeated lease once.
    since = (await backend.counts(finished_since=0.0)).finished
    assert since is not None and sum(since.values()) == 298


async def test_retry_outcome_requeues_the_task_for_retry_at(backend):
    claimed = await start(backend, max_retries=1)
    retry_at = backend.now() + 0.3
    outcome = Outcome("queued", error="ValueError: boom", retry_at=retry_at)
    assert await backend.finish([(claimed.lease, outcome)]) == [True]
    stored = await record(backend, claimed.id)
    assert (stored.status, stored.finished_at, stored.available_at) == ("queued", None, retry_at)
    assert await backend.claim("w2", [claimed.queue], 1, LONG_LEASE) == []
    again = await take_over(backend, claimed.queue, "w2")
    assert backend.now() >= retry_at
    assert again.lease == Lease(claimed.id, "w2", 2)


# -- release -----------------------------------------------------------------------


async def test_release_requeues_the_task_without_counting_the_attempt(backend):
    claimed = await start(backend)
    assert await backend.release([claimed.lease]) == 1
    stored = await record(backend, claimed.id)
    assert (stored.status, stored.attempts, stored.worker_id) == ("queued", 0, None)
    [again] = await backend.claim("w2", [claimed.queue], 1, LONG_LEASE)
    assert again.lease == Lease(claimed.id, "w2", 1)


async def test_release_restores_the_previous_attempt_count(backend):
    first = await start(backend, max_retries=3)
    retry = Outcome("queued", error="boom", retry_at=backend.now())
    assert await backend.finish([(first.lease, retry)]) == [True]
    [second] = await backend.claim("w1", [first.queue], 1, LONG_LEASE)
    assert second.attempts == 2
    assert await backend.release([second.lease]) == 1
    assert (await record(backend, first.id)).attempts == 1


@wrong_lease
async def test_release_with_a_wrong_lease_changes_nothing(backend, spoil):
    claimed = await start(backend)
    assert await backend.release([spoil(claimed.lease)]) == 0
    stored = await record(backend, claimed.id)
    assert (stored.status, stored.attempts, stored.worker_id) == ("running", 1, "w1")


async def test_release_after_finish_changes_nothing(backend):
    task_id = await finished(backend, SUCCEEDED)
    lease = Lease(task_id, "w1", 1)
    assert await backend.release([lease]) == 0
    assert (await record(backend, task_id)).status == "succeeded"


# -- expired leases ----------------------------------------------------------------


async def test_expired_lease_is_taken_back_by_another_worker(backend, reclaim_immediately):
    lost = await start(backend, worker="w1", lease=SHORT_LEASE)
    again = await take_over(backend, lost.queue, "w2")
    assert again.lease == Lease(lost.id, "w2", 2)


async def test_old_holder_cannot_finish_after_its_lease_was_taken_back(
    backend, reclaim_immediately
):
    lost = await start(backend, worker="w1", lease=SHORT_LEASE)
    again = await take_over(backend, lost.queue, "w2")
    assert await backend.finish([(lost.lease, FAILED)]) == [False]
    assert await backend.finish([(again.lease, SUCCEEDED)]) == [True]
    assert (await record(backend, lost.id)).status == "succeeded"


async def test_batch_with_a_stale_and_a_fresh_lease_of_one_task_applies_only_the_fresh(
    backend, reclaim_immediately
):
    # The same worker lost its lease (its loop was blocked) and took the task back.
    stale = await start(backend, worker="w1", lease=SHORT_LEASE)
    fresh = await take_over(backend, stale.queue, "w1")
    assert fresh.id == stale.id and fresh.attempts == stale.attempts + 1
    assert await backend.finish([(stale.lease, FAILED), (fresh.lease, SUCCEEDED)]) == [
        False,
        True,
    ]
    assert (await record(backend, stale.id)).status == "succeeded"


async def test_finish_of_a_batch_refuses_a_lease_that_expired(backend, reclaim_immediately):
    lost = await start(backend, worker="w1", lease=SHORT_LEASE)
    fresh = await start(backend, worker="w1")

    async def requeued() -> bool:
        await backend.claim("w2", ["elsewhere"], 1, LONG_LEASE)  # looks for expired leases
        return (await record(backend, lost.id)).status == "queued"

    await eventually(requeued)
    results = await backend.finish([(fresh.lease, SUCCEEDED), (lost.lease, SUCCEEDED)])
    assert (await record(backend, lost.id)).status == "queued"
    assert results == [True, False]


async def test_task_lost_too_often_ends_failed_with_worker_lost(backend, reclaim_immediately):
    max_retries = 1
    limit = max_retries + 1 + LOST_LEASE_LIMIT
    claimed = await start(backend, worker="w1", lease=SHORT_LEASE, max_retries=max_retries)
    while claimed.attempts < limit:
        claimed = await take_over(backend, claimed.queue, f"w{claimed.attempts + 1}", SHORT_LEASE)
        assert await backend.record_start(claimed.lease)
    stored = await settled(backend, claimed)
    assert (stored.status, stored.attempts) == ("failed", limit)
    assert "WorkerLost" in stored.error
    assert stored.finished_at is not None


async def after_reclaim(backend: Backend, task: ClaimedTask) -> TaskRecord:
    """The task's record once its expired lease was dealt with (claims elsewhere find it)."""

    async def probe() -> TaskRecord | None:
        await backend.claim("bystander", [f"elsewhere-{task.queue}"], 1, LONG_LEASE)
        current = await record(backend, task.id)
        return None if current.status == "running" else current

    return await eventually(probe)


async def test_task_failed_as_worker_lost_shows_its_recorded_start(backend, reclaim_immediately):
    """Its start was recorded, never marked: the record alone gives started_at."""
    max_retries = 0
    limit = max_retries + 1 + LOST_LEASE_LIMIT
    task_id = await enqueue(backend, queue="killer", max_retries=max_retries)
    [claimed] = await backend.claim("w0", ["killer"], 1, SHORT_LEASE)  # lost unstarted
    while True:
        claimed = await take_over(backend, "killer", f"w{claimed.attempts}", SHORT_LEASE)
        before = backend.now()
        assert await backend.record_start(claimed.lease)
        assert (await record(backend, task_id)).started_at >= before  # reads running
        if claimed.attempts == limit:
            break
    stored = await after_reclaim(backend, claimed)
    assert (stored.status, stored.attempts) == ("failed", limit)
    assert stored.started_at is not None and before <= stored.started_at <= stored.finished_at


async def test_lost_task_with_only_a_start_mark_is_not_charged_and_queued_without_it(
    backend, reclaim_immediately
):
    """A start mark is shown, not charged: a task that ran beside the one that
    killed its worker goes back uncharged (only a recorded start is charged);
    back in the queue it has neither the lost run's start nor its holder."""
    task_id = await enqueue(backend, queue="marked")
    [claimed] = await backend.claim("w1", ["marked"], 1, SHORT_LEASE)
    await backend.finish((), [(claimed.lease, backend.now())])
    stored = await after_reclaim(backend, claimed)
    assert (stored.status, stored.attempts, stored.claimed) == ("queued", 0, False)
    assert (stored.started_at, stored.worker_id) == (None, None)
    again = await take_over(backend, "marked", "w2")
    assert (again.id, again.attempts) == (task_id, 1)


async def test_running_task_asked_to_cancel_whose_lease_expires_ends_cancelled(
    backend, reclaim_immediately
):
    claimed = await start(backend, worker="w1", lease=SHORT_LEASE)
    assert await backend.cancel(claimed.id) == "requested"
    stored = await settled(backend, claimed)
    assert (stored.status, stored.attempts) == ("cancelled", 1)
    assert stored.finished_at is not None


# -- heartbeat ---------------------------------------------------------------------


async def test_heartbeat_keeps_a_task_past_its_original_lease(backend, reclaim_immediately):
    lease_seconds = 0.3
    held = await start(backend, worker="w1", lease=lease_seconds)
    until = backend.now() + 3 * lease_seconds
    while backend.now() < until:
        assert await backend.heartbeat("w1", [held.lease], lease_seconds) == set()
        assert await backend.claim("w2", [held.queue], 1, LONG_LEASE) == []
        await asyncio.sleep(0.05)  # lets the original lease run out
    stored = await record(backend, held.id)
    assert (stored.status, stored.worker_id, stored.attempts) == ("running", "w1", 1)
    assert await backend.finish([(held.lease, SUCCEEDED)]) == [True]


async def test_heartbeat_does_not_renew_another_workers_lease(backend, reclaim_immediately):
    mine = await start(backend, worker="w1")
    theirs = await start(backend, worker="w2", lease=SHORT_LEASE)

    async def heartbeat_then_claim() -> list[ClaimedTask]:
        await backend.heartbeat("w1", [mine.lease], LONG_LEASE)
        return await backend.claim("w3", [theirs.queue], 1, LONG_LEASE)

    [again] = await eventually(heartbeat_then_claim)
    assert again.lease == Lease(theirs.id, "w3", 2)


async def test_heartbeat_renews_only_the_leases_it_is_given(backend, reclaim_immediately):
    dropped = await start(backend, worker="w1", lease=SHORT_LEASE)
    kept = await start(backend, worker="w1", lease=SHORT_LEASE)

    async def heartbeat_then_claim() -> list[ClaimedTask]:
        await backend.heartbeat("w1", [kept.lease], LONG_LEASE)
        return await backend.claim("w2", [kept.queue, dropped.queue], 2, LONG_LEASE)

    [again] = await eventually(heartbeat_then_claim)
    assert again.lease == Lease(dropped.id, "w2", 2)
    assert (await record(backend, kept.id)).worker_id == "w1"


async def test_heartbeat_returns_the_held_tasks_asked_to_cancel(backend):
    await enqueue_many(backend, 3)
    held = await backend.claim("w1", [DEFAULT], 3, LONG_LEASE)
    assert await backend.cancel(held[1].id) == "requested"
    leases = [task.lease for task in held]
    assert await backend.heartbeat("w1", leases, LONG_LEASE) == {held[1].id}


async def test_heartbeat_refreshes_the_workers_liveness(backend):
    started = backend.now() - 50.0
    await backend.register_worker(worker_record("w1", started))
    await backend.heartbeat("w1", [], LONG_LEASE)
    [worker] = await backend.list_workers()
    assert worker.heartbeat_at > started + 49.0


# -- cancel ------------------------------------------------------------------------


async def test_cancel_of_a_queued_task_cancels_it_now(backend):
    task_id = await enqueue(backend)
    assert await backend.cancel(task_id) == "cancelled"
    stored = await record(backend, task_id)
    assert stored.status == "cancelled"
    assert stored.finished_at is not None
    assert await backend.claim("w1", [DEFAULT], 1, LONG_LEASE) == []


async def test_cancel_of_a_running_task_is_requested(backend):
    claimed = await start(backend)
    assert await backend.cancel(claimed.id) == "requested"
    assert (await record(backend, claimed.id)).status == "running"


@pytest.mark.parametrize("outcome", [SUCCEEDED, FAILED, CANCELLED], ids=lambda o: o.status)
async def test_cancel_of_a_finished_task_is_too_late(backend, outcome):
    task_id = await finished(backend, outcome)
    assert await backend.cancel(task_id) == "finished"
    stored = await record(backend, task_id)
    assert (stored.status, stored.result) == (outcome.status, outcome.result)


async def test_cancel_of_an_unknown_task_returns_none(backend):
    assert await backend.cancel(new_task_id()) is None


async def test_retry_outcome_after_a_cancel_request_ends_cancelled(backend):
    claimed = await start(backend, max_retries=3)
    assert await backend.cancel(claimed.id) == "requested"
    retry = Outcome("queued", error="boom", retry_at=backend.now())
    assert await backend.finish([(claimed.lease, retry)]) == [True]
    stored = await record(backend, claimed.id)
    assert stored.status == "cancelled"
    assert stored.finished_at is not None
    assert await backend.claim("w2", [claimed.queue], 1, LONG_LEASE) == []


# -- retry -------------------------------------------------------------------------


async def test_retry_by_ids_requeues_failed_and_cancelled_tasks(backend):
    failed = await finished(backend, FAILED, max_retries=2)
    cancelled = await finished(backend, CANCELLED)
    assert sorted(await backend.retry([failed, cancelled])) == sorted([failed, cancelled])
    for task_id in (failed, cancelled):
        stored = await record(backend, task_id)
        assert (stored.status, stored.attempts, stored.finished_at) == ("queued", 0, None)
        assert (stored.error, stored.traceback, stored.worker_id) == (None, None, None)


async def test_retried_task_is_claimed_again_as_a_first_attempt(backend):
    task_id = await finished(backend, FAILED, queue="mail")
    assert len(await backend.retry([task_id])) == 1
    [again] = await backend.claim("w2", ["mail"], 1, LONG_LEASE)
    assert again.lease == Lease(task_id, "w2", 1)


async def test_retry_by_ids_leaves_unfinished_and_succeeded_tasks_alone(backend):
    succeeded = await finished(backend, SUCCEEDED)
    running = (await start(backend)).id
    queued = await enqueue(backend)
    assert len(await backend.retry([succeeded, running, queued])) == 0
    statuses = {i: r.status for i, r in (await backend.get_tasks([succeeded, running])).items()}
    assert statuses == {succeeded: "succeeded", running: "running"}
    assert (await record(backend, succeeded)).result == b"the result"
    assert (await record(backend, queued)).status == "queued"


async def test_retry_without_ids_requeues_every_failed_task(backend):
    failed = [await finished(backend, FAILED, queue=q) for q in ("a", "b")]
    cancelled = await finished(backend, CANCELLED, queue="a")
    succeeded = await finished(backend, SUCCEEDED, queue="a")
    assert len(await backend.retry()) == 2
    statuses = {i: r.status for i, r in (await backend.get_tasks(failed)).items()}
    assert statuses == dict.fromkeys(failed, "queued")
    assert (await record(backend, cancelled)).status == "cancelled"
    assert (await record(backend, succeeded)).status == "succeeded"


async def test_retry_without_ids_can_keep_to_one_queue(backend):
    in_a = await finished(backend, FAILED, queue="a")
    in_b = await finished(backend, FAILED, queue="b")
    assert len(await backend.retry(queue="a")) == 1
    assert (await record(backend, in_a)).status == "queued"
    assert (await record(backend, in_b)).status == "failed"


# -- counts, workers ---------------------------------------------------------------


async def test_counts_tasks_per_queue_and_status(backend):
    await enqueue_many(backend, 3, queue="a")
    await enqueue(backend, queue="b")
    running = await backend.claim("w1", ["a"], 2, LONG_LEASE)
    await backend.finish((), [(running[1].lease, backend.now())])
    assert await backend.finish([(running[0].lease, SUCCEEDED)]) == [True]
    assert (await backend.counts()).statuses == {
        ("a", "queued"): 1,
        ("a", "running"): 1,
        ("a", "succeeded"): 1,
        ("b", "queued"): 1,
    }


async def test_counts_a_claimed_task_as_queued_and_claimed_counts_it_per_worker(backend):
    await enqueue_many(backend, 4, queue="a")
    first = await backend.claim("w1", ["a"], 2, LONG_LEASE)
    second = await backend.claim("w2", ["a"], 1, LONG_LEASE)
    await backend.finish((), [(first[0].lease, backend.now())])
    assert (await backend.counts()).statuses == {("a", "queued"): 3, ("a", "running"): 1}
    assert (await backend.activity(0)).claimed == {("a", "w1"): 1, ("a", "w2"): 1}
    assert [r.id for r in (await backend.activity(0)).running] == [first[0].id]
    page = await backend.list_tasks(status="running")
    assert [t.id for t in page.tasks] == [first[0].id]
    queued = await backend.list_tasks(status="queued")
    claimed = {t.id for t in queued.tasks if t.claimed}
    assert claimed == {first[1].id, second[0].id} and len(queued.tasks) == 3


async def test_counts_of_an_empty_store_is_empty(backend):
    counted = await backend.counts(finished_since=0.0, retrying=True)
    assert counted == TaskCounts({}, {}, {})
    assert await backend.counts() == TaskCounts({}, None, {})


async def test_counts_finished_since_in_the_same_pass(backend, monkeypatch):
    """Counted by whole seconds (schema version 11 keeps the finishes per second)."""
    clock = [math.floor(time.time()) + 0.5]
    monkeypatch.setattr(backend, "now", lambda: clock[0])
    await finished(backend, SUCCEEDED, queue="a")
    clock[0] += 1.0
    since = clock[0] - 0.25  # inside the second of the finishes below: counted from it
    await finished(backend, SUCCEEDED, queue="a")
    await finished(backend, FAILED, queue="b")
    await enqueue(backend, queue="a")
    counted = await backend.counts(finished_since=since)
    assert counted.statuses == {("a", "queued"): 1, ("a", "succeeded"): 2, ("b", "failed"): 1}
    assert counted.finished == {("a", "succeeded"): 1, ("b", "failed"): 1}
    assert counted.retrying == {}


async def test_counts_the_tasks_waiting_for_a_retry_per_queue(backend):
    claimed = await start(backend, queue="a")
    retry = Outcome("queued", error="boom", retry_at=backend.now() + 3600)
    assert await backend.finish([(claimed.lease, retry)]) == [True]
    await enqueue(backend, queue="a")  # queued, never ran: not retrying
    await finished(backend, FAILED, queue="b")
    only = await backend.counts(statuses=False, retrying=True)
    assert only == TaskCounts({}, None, {"a": 1})
    both = await backend.counts(retrying=True)
    assert both.statuses == {("a", "queued"): 2, ("b", "failed"): 1}
    assert both.retrying == {"a": 1}


async def test_running_tasks_lists_what_runs_longest_first(backend):
    await enqueue_many(backend, 3)
    first = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
    second = await backend.claim("w2", [DEFAULT], 1, LONG_LEASE)
    assert await backend.finish([(second[0].lease, SUCCEEDED)]) == [True]
    third = await backend.claim("w2", [DEFAULT], 1, LONG_LEASE)
    now = backend.now()
    await backend.finish((), [(third[0].lease, now), (first[0].lease, now - 1)])
    running = (await backend.activity(0)).running
    assert [(r.id, r.worker_id, r.status) for r in running] == [
        (first[0].id, "w1", "running"),
        (third[0].id, "w2", "running"),
    ]


async def test_recent_failures_newest_first_up_to_the_limit(backend):
    ids = await enqueue_many(backend, 4)
    for index in range(4):
        (claimed,) = await backend.claim("w1", [DEFAULT], 1, LONG_LEASE)
        outcome = FAILED if index != 2 else SUCCEEDED
        assert await backend.finish([(claimed.lease, outcome)]) == [True]
        await asyncio.sleep(0.002)  # distinct finish times, in order
    failures = (await backend.activity(2)).failures
    assert [r.id for r in failures] == [ids[3], ids[1]]
    assert failures[0].error == FAILED.error and failures[0].traceback == FAILED.traceback
    assert [r.id for r in (await backend.activity(10)).failures] == [ids[3], ids[1], ids[0]]


async def test_oldest_waiting_per_queue_counts_only_due_tasks(backend):
    now = backend.now()
    await backend.enqueue(
        [
            new_task(backend, queue="a", delay=-30.0),
            new_task(backend, queue="a"),
            new_task(backend, queue="b", delay=3600),  # not due: not waiting yet
        ]
    )
    waiting = (await backend.activity(0)).ready
    assert set(waiting) == {"a"}
    assert waiting["a"][0] == pytest.approx(now - 30.0, abs=1.0)
    assert waiting["a"][1] == 2
    assert (await backend.activity(0)).failures == []


async def test_registered_workers_are_listed_newest_first(backend):
    now = backend.now()
    old = worker_record("w-old", now - 100.0, queues=(DEFAULT,), concurrency=1)
    new = worker_record("w-new", now - 10.0, hostname="host-2", pid=7)
    await backend.register_worker(old)
    await backend.register_worker(new)
    assert await backend.list_workers() == [new, old]


async def test_unregistered_worker_is_marked_stopped(backend):
    now = backend.now()
    await backend.register_worker(worker_record("w1", now))
    await backend.register_worker(worker_record("w2", now - 1.0))
    await backend.unregister_worker("w1")
    stopped = {w.id: w.stopped_at for w in await backend.list_workers()}
    assert stopped["w2"] is None
    assert stopped["w1"] is not None and stopped["w1"] >= now


# -- prune, purge ------------------------------------------------------------------


async def test_prune_deletes_only_finished_tasks_past_their_retention(backend):
    expired = [
        await finished(backend, SUCCEEDED, result_ttl=0),
        await finished(backend, FAILED, result_ttl=0),
        await enqueue(backend, result_ttl=0, queue="to-cancel"),
    ]
    assert await backend.cancel(expired[-1]) == "cancelled"
    kept = [
        await finished(backend, SUCCEEDED, result_ttl=3600),
        await finished(backend, SUCCEEDED),
        (await start(backend, result_ttl=0)).id,
        await enqueue(backend, result_ttl=0),
    ]
    assert await backend.prune() == 3
    assert set(await backend.get_tasks(expired + kept)) == set(kept)


async def test_prune_keeps_a_task_requeued_by_a_retry_outcome(backend):
    claimed = await start(backend, result_ttl=0, max_retries=1)
    retry = Outcome("queued", error="boom", retry_at=backend.now() + 60)
    assert await backend.finish([(claimed.lease, retry)]) == [True]
    assert await backend.prune() == 0
    assert (await record(backend, claimed.id)).status == "queued"


async def test_purge_deletes_tasks_in_the_given_statuses(backend):
    succeeded = await finished(backend, SUCCEEDED)
    failed = await finished(backend, FAILED)
    cancelled = await finished(backend, CANCELLED)
    queued = await enqueue(backend)
    assert await backend.purge(["succeeded", "failed"]) == 2
    assert set(await backend.get_tasks([succeeded, failed, cancelled, queued])) == {
        cancelled,
        queued,
    }


async def test_purge_can_keep_to_one_queue(backend):
    in_a = await finished(backend, FAILED, queue="a")
    in_b = await finished(backend, FAILED, queue="b")
    assert await backend.purge(["failed"], queue="a") == 1
    assert set(await backend.get_tasks([in_a, in_b])) == {in_b}


async def test_purge_older_than_keeps_recent_tasks(backend):
    recent = await finished(backend, SUCCEEDED)
    assert await backend.purge(["succeeded"], older_than=3600) == 0
    assert await backend.purge(["succeeded"], older_than=0) == 1
    assert await backend.get_tasks([recent]) == {}


async def test_purge_older_than_judges_unfinished_tasks_by_enqueue_time(backend):
    old = await enqueue(backend, enqueued_at=backend.now() - 7200)
    new = await enqueue(backend)
    assert await backend.purge(["queued"], older_than=3600) == 1
    assert set(await backend.get_tasks([old, new])) == {new}


# -- wait_for_change ---------------------------------------------------------------


async def test_wait_for_change_returns_early_when_another_instance_enqueues(backend, open_peer):
    producer = await open_peer()

    async def timed_wait() -> float:
        started = time.monotonic()
        await backend.wait_for_change("tasks", 5.0)
        return time.monotonic() - started

    waiter = asyncio.create_task(timed_wait())
    while not waiter.done():  # keep enqueuing: the waiter may not be listening yet
        await enqueue(producer)
        await asyncio.wait({waiter}, timeout=0.05)
    assert waiter.result() < 1.0


async def test_wait_for_change_returns_after_the_timeout_when_nothing_happens(backend):
    """Once the backend hears wake-ups (until then it returns within DEAF_POLL,
    and PostgreSQL's LISTEN connection opens in the background)."""
    await until_listening(backend)
    started = time.monotonic()
    await backend.wait_for_change("tasks", 0.3)
    took = time.monotonic() - started
    assert 0.29 <= took < 2.0
