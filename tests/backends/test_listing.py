"""Task listings of the storage contract (``Backend.list_tasks``), on every backend.

The `backend` fixture (tests/backends/conftest.py) runs each test once per backend.
"""

from __future__ import annotations

import pytest
from support import task_ids_for
from test_batches import enqueue_in_batch

from sitq import TaskQueue
from sitq.backends.base import Backend, NewTask, Outcome, TaskPage
from sitq.errors import ConfigurationError

LEASE = 60.0


def new_tasks(backend: Backend, count: int, queue: str = "default") -> list[NewTask]:
    """``count`` tasks whose ids increase in order (as one producer makes them)."""
    now = backend.now()
    return [
        NewTask(task_id, queue, "tests.job", b"payload", 0, now, now, 0, 1.0, None, None, None)
        for task_id in task_ids_for(backend, count)
    ]


async def enqueue(backend: Backend, count: int, queue: str = "default") -> list[str]:
    tasks = new_tasks(backend, count, queue)
    await backend.enqueue(tasks)
    return [task.id for task in tasks]


async def run(backend: Backend, queue: str, outcomes: list[Outcome]) -> list[str]:
    """Claim one task of ``queue`` per outcome and finish it so, in order."""
    ids = []
    for outcome in outcomes:
        [claimed] = await backend.claim("w1", [queue], 1, LEASE)
        started = [(claimed.lease, backend.now())]
        assert await backend.finish([(claimed.lease, outcome)], started) == [True]
        ids.append(claimed.id)
    return ids


def failed(n: int) -> Outcome:
    return Outcome("failed", error=f"ValueError: {n}", traceback="Traceback ...")


async def every_page(backend: Backend, **filters: object) -> tuple[list[str], int]:
    """The ids of every page of a listing, in order, and how many pages it took."""
    ids: list[str] = []
    cursor = None
    for pages in range(1, 10_000):
        page = await backend.list_tasks(cursor=cursor, **filters)  # type: ignore[arg-type]
        assert isinstance(page, TaskPage)
        ids += [task.id for task in page.tasks]
        if page.next_cursor is None:
            return ids, pages
        cursor = page.next_cursor
    raise AssertionError("the listing never ended")


async def test_newest_first_and_every_task_once(backend: Backend) -> None:
    ids = await enqueue(backend, 10)
    first = await backend.list_tasks(limit=4)
    assert [t.id for t in first.tasks] == ids[::-1][:4]
    assert first.next_cursor is not None
    listed, _ = await every_page(backend, limit=3)
    assert listed == ids[::-1]


async def test_empty_store_lists_nothing(backend: Backend) -> None:
    page = await backend.list_tasks()
    assert page.tasks == [] and page.next_cursor is None


async def test_queue_and_status_filters(backend: Backend) -> None:
    mail = await enqueue(backend, 4, "mail")
    await enqueue(backend, 3, "reports")
    [done] = await run(backend, "mail", [Outcome("succeeded", result=b"r")])
    assert done == mail[0]
    listed, _ = await every_page(backend, queue="mail")
    assert listed == mail[::-1]
    listed, _ = await every_page(backend, queue="mail", status="queued")
    assert listed == mail[:0:-1]
    listed, _ = await every_page(backend, status="succeeded")
    assert listed == [done]
    listed, _ = await every_page(backend, queue="nowhere")
    assert listed == []


async def test_records_leave_out_payload_result_and_traceback(backend: Backend) -> None:
    await enqueue(backend, 1, "q")
    [task_id] = await run(backend, "q", [failed(1)])
    [task] = (await backend.list_tasks()).tasks
    assert task.id == task_id
    assert (task.status, task.queue, task.attempts, task.error) == (
        "failed",
        "q",
        1,
        "ValueError: 1",
    )
    assert task.payload is None and task.result is None and task.traceback is None
    assert task.finished_at is not None and task.started_at is not None


async def test_a_long_error_is_cut(backend: Backend) -> None:
    await enqueue(backend, 1, "q")
    await run(backend, "q", [Outcome("failed", error="E" * 5000, traceback="tb")])
    [task] = (await backend.list_tasks(status="failed")).tasks
    assert task.error == "E" * 1000


async def test_rare_matches_take_bounded_pages(backend: Backend) -> None:
    """Each call examines at most scan_limit tasks: rare matches come over several
    (maybe empty) pages, each found exactly once."""
    await enqueue(backend, 1, "rare")
    rare = await enqueue(backend, 1, "rare")
    await enqueue(backend, 30, "common")
    rare_last = await enqueue(backend, 1, "rare")
    await enqueue(backend, 10, "common")
    listed, pages = await every_page(backend, queue="rare", limit=2, scan_limit=8)
    assert len(listed) == 3 and listed[:2] == rare_last + rare
    assert pages >= 43 // 8  # no page read more than its window
    first = await backend.list_tasks(queue="rare", limit=2, scan_limit=8)
    assert first.tasks == [] and first.next_cursor is not None


async def test_failures_newest_failure_first(backend: Backend) -> None:
    ids = await enqueue(backend, 5, "q")
    # The oldest task fails last: the order is by failure, not enqueue.
    await run(backend, "q", [failed(n) for n in range(4)])
    [claimed] = await backend.claim("w1", ["q"], 1, LEASE)
    assert claimed.id == ids[4]
    assert await backend.finish([(claimed.lease, failed(4))]) == [True]
    listed, _ = await every_page(backend, status="failed", limit=2)
    assert listed == ids[::-1]
    errors = [t.error for t in (await backend.list_tasks(status="failed")).tasks]
    assert errors == [f"ValueError: {n}" for n in (4, 3, 2, 1, 0)]


async def test_failures_of_one_queue(backend: Backend) -> None:
    await enqueue(backend, 2, "a")
    await enqueue(backend, 2, "b")
    a = await run(backend, "a", [failed(1), failed(2)])
    await run(backend, "b", [failed(3), failed(4)])
    listed, _ = await every_page(backend, status="failed", queue="a", limit=1)
    assert listed == a[::-1]


async def test_running_tasks(backend: Backend) -> None:
    ids = await enqueue(backend, 4, "q")
    claimed = await backend.claim("w1", ["q"], 3, LEASE)
    assert [c.id for c in claimed] == ids[:3]
    await backend.finish((), [(c.lease, backend.now()) for c in claimed])
    listed, _ = await every_page(backend, status="running", limit=2)
    assert listed == ids[2::-1]
    listed, _ = await every_page(backend, status="running", queue="other")
    assert listed == []


async def test_batch_members_in_batch_order(backend: Backend) -> None:
    await enqueue(backend, 3, "q")  # not in the batch
    first = new_tasks(backend, 3, "q")
    await enqueue_in_batch(backend, "nightly", first)
    second = new_tasks(backend, 2, "q")
    await enqueue_in_batch(backend, "nightly", second)
    members = [t.id for t in first + second]
    listed, _ = await every_page(backend, batch_id="nightly", limit=2)
    assert listed == members
    claimed = await backend.claim("w1", ["q"], 8, LEASE)
    outcomes = [
        (c.lease, failed(i) if c.id in members[1:3] else Outcome("succeeded"))
        for i, c in enumerate(claimed)
    ]
    assert all(await backend.finish(outcomes))
    listed, _ = await every_page(backend, batch_id="nightly", status="failed")
    assert listed == members[1:3]
    listed, _ = await every_page(backend, batch_id="unknown")
    assert listed == []


async def test_a_bad_cursor_says_what_to_pass(backend: Backend) -> None:
    for status, cursor in ((None, ""), ("failed", "not-a-cursor"), (None, "x" * 100)):
        with pytest.raises(ConfigurationError, match="next_cursor of a previous page"):
            await backend.list_tasks(status=status, cursor=cursor)
    with pytest.raises(ConfigurationError, match="next_cursor"):
        await backend.list_tasks(batch_id="b", cursor="abc")


async def test_task_queue_checks_its_arguments(backend: Backend) -> None:
    async with TaskQueue(backend) as queue:
        await enqueue(backend, 2, "q")
        page = await queue.list_tasks(queue="q", status="queued", limit=1)
        assert len(page.tasks) == 1 and page.next_cursor is not None
        with pytest.raises(ConfigurationError, match="unknown status 'done'"):
            await queue.list_tasks(status="done")
        with pytest.raises(ConfigurationError, match="limit must be an int from 1 to 1000"):
            await queue.list_tasks(limit=0)
        with pytest.raises(ConfigurationError, match="queue must be a non-empty string"):
            await queue.list_tasks(queue="")
