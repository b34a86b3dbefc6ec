"""The Worker in-process: retries, timeouts, pools, order, time, leases, retention."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jobs
import pytest
from support import ServingWorker, await_until

from sitq import TaskQueue, TaskStatus, Worker
from sitq.backends import open_backend
from sitq.errors import ConfigurationError


def read_log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@contextlib.asynccontextmanager
async def serving(db_url: str, **options: Any) -> AsyncIterator[TaskQueue]:
    """A connected queue on ``db_url`` with an in-process worker serving it."""
    async with TaskQueue(db_url) as queue:
        worker = Worker(db_url, **options)
        await worker.start()
        try:
            yield queue
        finally:
            await worker.stop(timeout=5)


# Retries, delays and priorities run on every backend (db_url: SQLite, PostgreSQL).


async def test_retries_until_success(db_url: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    async with serving(db_url, concurrency=2) as queue:
        task_id = await queue.with_options(max_retries=2, retry_backoff=0.05).enqueue(
            jobs.flaky, counter, 2
        )
        result = await queue.get_result(task_id, timeout=20)
    assert result is not None and result.status is TaskStatus.SUCCEEDED
    assert result.attempts == 3 and result.value == 3


async def test_retries_exhausted_keep_the_last_traceback(db_url: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    async with serving(db_url, concurrency=2) as queue:
        task_id = await queue.with_options(max_retries=1, retry_backoff=0.05).enqueue(
            jobs.flaky, counter, 2
        )
        result = await queue.get_result(task_id, timeout=20)
    assert result is not None and result.status is TaskStatus.FAILED
    assert result.attempts == 2
    assert result.error == "RuntimeError: flaky failure number 2"
    assert result.traceback and "flaky failure number 2" in result.traceback


async def test_retry_waits_for_its_backoff(
    queue: TaskQueue, worker: ServingWorker, tmp_path: Path
) -> None:
    counter = str(tmp_path / "count")
    task_id = await queue.with_options(max_retries=1, retry_backoff=1.0).enqueue(
        jobs.flaky, counter, 1
    )

    async def waiting_for_retry() -> bool:
        record = (await queue._backend.get_tasks([task_id]))[task_id]
        return record.status == "queued" and record.error is not None

    await await_until(waiting_for_retry, 10, "the first attempt to fail")
    first_failure = time.monotonic()
    result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.ok
    # Jitter keeps the delay within [0.5, 1.0] x backoff.
    assert time.monotonic() - first_failure >= 0.45


@pytest.mark.parametrize("fn", [jobs.async_sleep, jobs.sync_sleep], ids=["async", "thread"])
async def test_timeout_fails_the_task_and_worker_serves_on(
    queue: TaskQueue, worker: ServingWorker, fn: object
) -> None:
    started = time.monotonic()
    task_id = await queue.with_options(timeout=0.3).enqueue(fn, 5)  # type: ignore[arg-type]
    result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status is TaskStatus.FAILED
    assert result.error and result.error.startswith("TimeoutError: task exceeded its timeout")
    assert time.monotonic() - started < 4
    follow = await queue.enqueue(jobs.add, 1, 2)
    assert (await queue.get_result(follow, timeout=10)).value == 3  # type: ignore[union-attr]


async def test_a_tasks_own_timeout_error_is_not_reported_as_sitqs(
    queue: TaskQueue, worker: ServingWorker
) -> None:
    task_id = await queue.with_options(timeout=5).enqueue(jobs.raise_timeout_error)
    result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.error == "TimeoutError: the task's own timeout, not sitq's"


async def test_delayed_task_never_starts_early(db_url: str) -> None:
    async with serving(db_url, concurrency=2) as queue:
        delayed = await queue.with_options(delay=0.6).enqueue(jobs.noop)
        eta = datetime.now(timezone.utc) + timedelta(seconds=0.4)
        at_eta = await queue.with_options(eta=eta).enqueue(jobs.noop)
        r1 = await queue.get_result(delayed, timeout=10)
        r2 = await queue.get_result(at_eta, timeout=10)
    assert r1 is not None and r1.started_at and r1.enqueued_at
    assert r1.started_at - r1.enqueued_at >= timedelta(seconds=0.6)
    assert r1.started_at - r1.enqueued_at < timedelta(seconds=2)
    assert r2 is not None and r2.started_at and r2.started_at >= eta


async def test_higher_priority_overtakes_queued_tasks(db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    async with TaskQueue(db_url) as queue:
        low = await queue.enqueue_many(jobs.record, [(str(log), f"low{i}") for i in range(10)])
        high = await queue.with_options(priority=10).enqueue(jobs.record, str(log), "high")
        mid = await queue.with_options(priority=5).enqueue(jobs.record, str(log), "mid")
        w = Worker(db_url, concurrency=1)
        await w.start()
        try:
            for task_id in [*low, high, mid]:
                await queue.get_result(task_id, timeout=10)
        finally:
            await w.stop()
    starts = [line.split()[1] for line in read_log(log) if line.startswith("S ")]
    assert starts == ["high", "mid"] + [f"low{i}" for i in range(10)]


async def test_other_queues_are_left_alone(queue: TaskQueue, worker: ServingWorker) -> None:
    other = await queue.with_options(queue="reports").enqueue(jobs.noop)
    mine = await queue.enqueue(jobs.noop)
    assert await queue.get_result(mine, timeout=10) is not None
    assert await queue.status(other) is TaskStatus.QUEUED


async def test_heartbeat_keeps_a_long_task_from_being_stolen(
    db_path: Path, queue: TaskQueue, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    first = Worker(db_path, lease_seconds=0.6)
    second = Worker(db_path, lease_seconds=0.6)
    await first.start()
    try:
        task_id = await queue.enqueue(jobs.record, str(log), "long", 2.0)

        async def started() -> bool:
            return await queue.status(task_id) is TaskStatus.RUNNING

        await await_until(started, 10, "the long task to start")
        await second.start()  # idle and claiming the whole time
        result = await queue.get_result(task_id, timeout=10)
    finally:
        await second.stop(timeout=5)
        await first.stop(timeout=5)
    assert result is not None and result.ok and result.attempts == 1
    assert [line for line in read_log(log) if line.startswith("S ")] == [
        f"S long {line.split()[2]}" for line in read_log(log)[:1]
    ]


async def test_stop_releases_what_cannot_finish_without_counting_it(
    db_path: Path, queue: TaskQueue
) -> None:
    w = Worker(db_path)
    await w.start()
    task_id = await queue.enqueue(jobs.async_sleep, 30)

    async def running() -> bool:
        return await queue.status(task_id) is TaskStatus.RUNNING

    await await_until(running, 10, "the task to start")
    started = time.monotonic()
    await w.stop(timeout=0.2)
    assert time.monotonic() - started < 3
    assert await queue.status(task_id) is TaskStatus.QUEUED
    record = (await queue._backend.get_tasks([task_id]))[task_id]
    assert record.attempts == 0


async def test_results_are_pruned_after_their_ttl(queue: TaskQueue, worker: ServingWorker) -> None:
    short = await queue.with_options(result_ttl=0).enqueue(jobs.noop)
    kept = await queue.enqueue(jobs.noop)
    assert await queue.get_result(short, timeout=10) is not None
    assert await queue.get_result(kept, timeout=10) is not None
    await asyncio.sleep(0.01)
    assert await queue._backend.prune() == 1
    assert await queue.get_results([short, kept]) == {kept: await queue.get_result(kept)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"concurrency": -2}, "concurrency must be an int >= 1"),
        ({"pool": "fork"}, "pool must be one of"),
        ({"queues": ()}, "queues must be"),
        ({"max_tasks_per_child": 0}, "max_tasks_per_child"),
    ],
)
def test_bad_worker_options(db_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Worker(db_path, **kwargs)


class TestProcessPool:
    async def test_runs_functions_in_child_processes(self, db_path: Path) -> None:
        import os

        async with TaskQueue(db_path) as queue:
            w = Worker(db_path, concurrency=2, pool="process", max_tasks_per_child=2)
            await w.start()
            try:
                ids = await queue.enqueue_many(jobs.getpid, [() for _ in range(6)])
                pids = [(await queue.get_result(i, timeout=30)).value for i in ids]  # type: ignore[union-attr]
                async_id = await queue.enqueue(jobs.async_add, 1, 2)
                async_result = await queue.get_result(async_id, timeout=30)
            finally:
                await w.stop(timeout=5)
        assert os.getpid() not in pids
        # Each child runs at most 2 tasks before it is replaced.
        assert all(pids.count(pid) <= 2 for pid in pids)
        assert len(set(pids)) >= 3
        assert async_result is not None and async_result.value == 3

    async def test_timeout_kills_the_child_and_a_segfault_fails_only_its_task(
        self, db_path: Path
    ) -> None:
        async with TaskQueue(db_path) as queue:
            w = Worker(db_path, concurrency=1, pool="process")
            await w.start()
            try:
                slow = await queue.with_options(timeout=0.5).enqueue(jobs.sync_sleep, 30)
                crash = await queue.enqueue(jobs.segfault)
                bad_return = await queue.enqueue(jobs.unpicklable_result)
                fine = await queue.enqueue(jobs.add, 2, 3)
                r_slow = await queue.get_result(slow, timeout=30)
                r_crash = await queue.get_result(crash, timeout=30)
                r_bad = await queue.get_result(bad_return, timeout=30)
                r_fine = await queue.get_result(fine, timeout=30)
            finally:
                await w.stop(timeout=5)
        assert r_slow is not None and r_slow.status is TaskStatus.FAILED
        assert r_slow.error and "timeout of 0.5 s" in r_slow.error
        assert r_crash is not None and r_crash.status is TaskStatus.FAILED
        assert r_crash.error and "SIGSEGV" in r_crash.error
        assert r_bad is not None and r_bad.status is TaskStatus.FAILED
        assert r_bad.error and "could not be serialized" in r_bad.error
        assert r_fine is not None and r_fine.value == 5


class TestMisbehavingTasks:
    """Regressions found in review: none of these may cost a slot or a task."""

    async def test_a_timed_out_thread_does_not_shrink_the_pool(self, db_path: Path) -> None:
        async with TaskQueue(db_path) as queue:
            w = Worker(db_path, concurrency=1)
            await w.start()
            try:
                stuck = await queue.with_options(timeout=0.3).enqueue(jobs.sync_sleep, 20)
                first = await queue.enqueue(jobs.add, 1, 1)
                second = await queue.enqueue(jobs.add, 2, 2)
                r_stuck = await queue.get_result(stuck, timeout=10)
                r_first = await queue.get_result(first, timeout=10)
                r_second = await queue.get_result(second, timeout=10)
            finally:
                await w.stop(timeout=1)
        assert r_stuck is not None and r_stuck.status is TaskStatus.FAILED
        assert r_first is not None and r_first.value == 2
        assert r_second is not None and r_second.value == 4

    async def test_a_task_raising_cancelled_error_fails_and_frees_its_slot(
        self, db_path: Path
    ) -> None:
        async with TaskQueue(db_path) as queue:
            w = Worker(db_path, concurrency=1)
            await w.start()
            try:
                bad = await queue.enqueue(jobs.raise_cancelled)
                after = await queue.enqueue(jobs.add, 3, 3)
                r_bad = await queue.get_result(bad, timeout=10)
                r_after = await queue.get_result(after, timeout=10)
            finally:
                await w.stop(timeout=1)
        assert r_bad is not None and r_bad.status is TaskStatus.FAILED
        assert r_bad.error and "CancelledError" in r_bad.error
        assert r_after is not None and r_after.value == 6

    async def test_an_idle_worker_starts_a_delayed_task_at_its_time_not_a_poll_later(
        self, db_path: Path
    ) -> None:
        """The worker polls once a second, yet a task delayed by 0.4 s starts at
        its time: after the wake-up of its enqueue the worker sleeps until it."""
        async with TaskQueue(db_path) as queue:
            w = Worker(db_path, poll_interval=1.0)
            await w.start()
            try:
                task_id = await queue.with_options(delay=0.4).enqueue(jobs.add, 1, 2)
                record = await queue.task_record(task_id)
                result = await queue.get_result(task_id, timeout=10)
            finally:
                await w.stop(timeout=5)
        assert result is not None and result.ok and result.started_at is not None
        late = result.started_at.timestamp() - record.available_at
        assert 0 <= late < 0.2, late

    async def test_a_retry_starts_at_its_time_not_a_poll_later(
        self, db_path: Path, tmp_path: Path
    ) -> None:
        async with TaskQueue(db_path) as queue:
            w = Worker(db_path, poll_interval=1.0)
            await w.start()
            try:
                task_id = await queue.with_options(max_retries=1, retry_backoff=0.4).enqueue(
                    jobs.fail_first_attempt, str(tmp_path / "marker")
                )

                async def retry_scheduled() -> bool:
                    # A claimed task reads "queued" too, until it starts: not claimed
                    # means the first attempt's retry is stored.
                    record = await queue.task_record(task_id)
                    return record.attempts == 1 and record.status == "queued" and not record.claimed

                await await_until(retry_scheduled, 10, "the retry to be scheduled")
                retry_at = (await queue.task_record(task_id)).available_at
                result = await queue.get_result(task_id, timeout=10)
            finally:
                await w.stop(timeout=5)
        assert result is not None and result.ok and result.started_at is not None
        late = result.started_at.timestamp() - retry_at
        assert 0 <= late < 0.2, late

    async def test_the_adaptive_prefetch_holds_a_bounded_size_of_payloads(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Quick tasks with large payloads: the prefetch follows their run time up
        to MAX_PREFETCH tasks, and their payloads' size down to PREFETCH_BYTES."""
        monkeypatch.setattr("sitq.worker.claiming.PREFETCH_BYTES", 1024 * 1024)
        payload = b"x" * 64 * 1024  # 16 of them fill the budget
        async with TaskQueue(db_path) as queue:
            ids = await queue.enqueue_many(jobs.discard, [(payload,) for _ in range(300)])
            w = Worker(db_path, concurrency=2)
            peak = 0
            await w.start()
            try:
                while await queue.status(ids[-1]) is not TaskStatus.SUCCEEDED:
                    for _ in range(50):  # every loop iteration between two looks
                        peak = max(peak, len(w._running))
                        await asyncio.sleep(0)
            finally:
                await w.stop(timeout=5)
        # Held: the 2 slots and at most 16 prefetched (without the byte bound the
        # quick tasks' prefetch climbs to hundreds).
        assert 2 < peak <= 2 + 16

    async def test_stop_releases_prefetched_tasks_before_the_grace_period_ends(
        self, db_path: Path
    ) -> None:
        async with TaskQueue(db_path) as queue:
            w = Worker(db_path, concurrency=1, prefetch=2)
            await w.start()
            long = await queue.enqueue(jobs.async_sleep, 2)
            waiting = await queue.enqueue_many(jobs.noop, [(), ()])

            async def all_held() -> bool:
                records = await queue._backend.get_tasks([long, *waiting])
                return records[long].status == "running" and all(
                    records[i].claimed for i in waiting
                )

            await await_until(all_held, 10, "the worker to hold all three")
            stopping = asyncio.create_task(w.stop(timeout=10))

            async def released() -> bool:
                records = await queue._backend.get_tasks(waiting)
                return all(r.status == "queued" and not r.claimed for r in records.values())

            await await_until(released, 1.5, "the prefetched tasks to be released")
            assert not stopping.done()  # still inside the grace period
            await stopping
            result = await queue.get_result(long, timeout=0)
        assert result is not None and result.ok

    async def test_stop_does_not_wait_forever_for_a_task_that_ignores_cancellation(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("sitq.worker.worker.CANCEL_GRACE", 0.5)
        async with TaskQueue(db_path) as queue:
            w = Worker(db_path, concurrency=1)
            await w.start()
            task_id = await queue.enqueue(jobs.ignore_cancellation, 3)

            async def running() -> bool:
                return await queue.status(task_id) is TaskStatus.RUNNING

            await await_until(running, 10, "the task to start")
            started = time.monotonic()
            await w.stop(timeout=0.2)
            assert time.monotonic() - started < 2.5  # well before the task's own end
            assert await queue.status(task_id) is TaskStatus.QUEUED


async def test_closing_with_an_enqueue_in_flight_is_clean(db_path: Path) -> None:
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    queue = TaskQueue(db_path)
    await queue.connect()
    pending = asyncio.ensure_future(queue.enqueue(jobs.noop))
    await asyncio.sleep(0)  # the enqueue is waiting for its group commit
    await queue.close()
    await asyncio.sleep(0.05)
    assert pending.done()
    assert errors == []


async def test_a_start_is_written_with_the_outcome_or_once_the_task_has_run_a_while(
    db_url: str, tmp_path: Path
) -> None:
    """Short tasks cost no write of their own for their start; a long one reads
    running before it ends, from one start mark."""
    backend = open_backend(db_url)
    marks: list[int] = []  # per write: start marks of tasks still running
    finish = backend.finish

    async def counting_finish(items: Any, started: Any = ()) -> list[bool]:
        ids = {lease.task_id for lease, _ in items}
        marks.append(sum(lease.task_id not in ids for lease, _ in started))
        return await finish(items, started)

    backend.finish = counting_finish  # type: ignore[method-assign]
    async with TaskQueue(backend) as queue:
        worker = Worker(backend, concurrency=4)
        await worker.start()
        try:
            ids = await queue.enqueue_many(jobs.async_add, [(i, 1) for i in range(200)])
            for task_id in ids:
                result = await queue.get_result(task_id, timeout=20)
                assert result is not None and result.ok and result.started_at is not None
            assert marks and sum(marks) == 0
            started, release = tmp_path / "started", tmp_path / "release"
            long = await queue.enqueue(jobs.wait_for_file, str(started), str(release), 30.0)

            async def running() -> bool:
                return await queue.status(long) is TaskStatus.RUNNING

            await await_until(running, 10, "the long task to read as running")
            assert started.exists() and sum(marks) == 1
            release.touch()
            result = await queue.get_result(long, timeout=20)
            assert result is not None and result.ok and sum(marks) == 1
        finally:
            await worker.stop(timeout=5)


async def test_worker_with_create_false_serves_only_an_existing_database(tmp_path: Path) -> None:
    """What `sitq worker` uses: a missing file is an error naming it, and stays missing."""
    from sitq.errors import SitqError

    missing = tmp_path / "missing.db"
    worker = Worker(missing, create=False)
    with pytest.raises(SitqError, match="missing.db"):
        await worker.start()
    assert not missing.exists()
    async with TaskQueue(missing):
        pass
    worker = Worker(missing, create=False)
    await worker.start()
    await worker.stop()
