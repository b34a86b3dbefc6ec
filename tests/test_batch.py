"""sitq.batch: BatchProcessor and SyncBatchProcessor with real workers.

Most tests run an in-process Worker on the test's own loop, so tasks can be
held at a gate (an asyncio.Event) and released in a chosen order; the resume
and sync tests use `sitq worker` processes.
"""

from __future__ import annotations

import asyncio
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jobs
import pytest
from support import WorkerProcess, await_until, subprocess_env

from sitq import (
    ConfigurationError,
    SyncTaskQueue,
    TaskFailed,
    TaskNotFound,
    TaskQueue,
    TaskStatus,
    Worker,
)
from sitq.backends.base import STATUS_SQL
from sitq.batch import (
    Batch,
    BatchExists,
    BatchNotFound,
    BatchProcessor,
    BatchProgress,
    BatchSizeChanged,
    BatchStore,
    BatchTimeout,
    SyncBatchProcessor,
    TaskExpired,
)
from sitq.batch.report import DEFAULT_TRACKED_TASKS, Monitor
from sitq.headers import unwrap
from sitq.task import Result

# -- task functions (module level, so they pickle by reference) ----------------

BROKEN: set[int] = set()
RUNS: Counter[int] = Counter()
GATES: dict[str, asyncio.Event] = {}


async def flaky_square(i: int) -> int:
    """Squares ``i``; fails while ``i`` is in BROKEN. Counts its runs."""
    RUNS[i] += 1
    if i in BROKEN:
        raise ValueError(f"item {i} is broken")
    return i * i


async def gated(key: str, fail: bool = False) -> str:
    """Waits for its gate to open, then returns ``key`` (or raises)."""
    await GATES.setdefault(key, asyncio.Event()).wait()
    if fail:
        raise RuntimeError(f"{key} failed")
    return key


def open_gate(key: str) -> None:
    GATES.setdefault(key, asyncio.Event()).set()


@pytest.fixture(autouse=True)
def _fresh_state() -> None:
    BROKEN.clear()
    RUNS.clear()
    GATES.clear()


@pytest.fixture
async def queue(db_path: Path) -> AsyncIterator[TaskQueue]:
    async with TaskQueue(db_path) as q:
        yield q


@pytest.fixture
async def worker(db_path: Path, queue: TaskQueue) -> AsyncIterator[Worker]:
    w = Worker(db_path, concurrency=8, lease_seconds=10)
    await w.start()
    yield w
    for key in list(GATES):
        open_gate(key)  # nothing stays blocked at shutdown
    await w.stop(timeout=10)


def db_counts(db_path: Path, ids: list[str]) -> dict[str, int]:
    """The statuses of ``ids`` read straight from the database file (a task claimed
    but not started is queued)."""
    conn = sqlite3.connect(db_path)
    try:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            f"SELECT {STATUS_SQL} AS state, count(*) FROM sitq_tasks WHERE id IN ({marks}) "
            "GROUP BY state",
            ids,
        ).fetchall()
    finally:
        conn.close()
    return {status.value: dict(rows).get(status.value, 0) for status in TaskStatus}


def counts_of(progress: BatchProgress) -> dict[str, int]:
    return {status.value: getattr(progress, status.value) for status in TaskStatus}


# -- map, retry_failed, report ------------------------------------------------------


def test_a_long_lived_monitor_stays_bounded() -> None:
    """250,000 tasks in 250 batches: the figures are exact, memory stays bounded."""
    assert Monitor().max_tasks == DEFAULT_TRACKED_TASKS
    monitor = Monitor(max_tasks=20_000, max_batches=50)
    finished_at = datetime.now(timezone.utc)
    tracemalloc.start()
    try:
        for batch in range(250):
            ids = [f"{batch:04d}-{i:04d}" + "0" * 23 for i in range(1000)]
            run = monitor.start(f"b{batch}", finished_at.timestamp() - 2.0)
            monitor.enqueued(run, ids, 0.01)
            monitor.observe(
                [
                    Result(
                        task_id,
                        TaskStatus.FAILED if i % 100 == 0 else TaskStatus.SUCCEEDED,
                        finished_at=finished_at,
                    )
                    for i, task_id in enumerate(ids)
                ]
            )
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (monitor.tracked, len(monitor._runs)) == (20_000, 50)
    # 20,000 ids take about 5 MB; all 250,000 would take over 50 MB.
    assert held < 10_000_000, held
    report = monitor.report()
    assert (report.batches, report.chunks, report.tasks) == (250, 250, 250_000)
    assert (report.finished, report.failed) == (250_000, 2_500)
    assert report.mean_batch_time == pytest.approx(2.0)
    assert report.wall_time == pytest.approx(2.0)


async def test_the_report_window_of_a_processor(queue: TaskQueue, worker: Worker) -> None:
    with pytest.raises(ConfigurationError, match="max_tracked_tasks"):
        BatchProcessor(queue, max_tracked_tasks=0)
    bp = BatchProcessor(queue, batch_size=10, max_tracked_tasks=50)
    for start in range(0, 120, 30):
        values = await bp.map(flaky_square, range(start, start + 30), progress=False)
        assert values == [i * i for i in range(start, start + 30)]
        assert bp._monitor.tracked <= 50
    report = bp.report()
    assert (report.batches, report.tasks, report.finished) == (4, 120, 120)
    assert report.mean_batch_time > 0


async def test_map_of_10000_items_with_1_percent_failing(queue: TaskQueue, worker: Worker) -> None:
    items = list(range(10_000))
    BROKEN.update(i for i in items if i % 100 == 42)
    bp = BatchProcessor(queue, batch_size=500)

    values = await bp.map(flaky_square, items, return_exceptions=True, progress=False, timeout=120)

    assert len(values) == len(items)
    failures = {i: v for i, v in enumerate(values) if isinstance(v, TaskFailed)}
    assert set(failures) == BROKEN
    assert all(values[i] == i * i for i in items if i not in BROKEN)
    assert all("item" in f.error and "is broken" in f.error for f in failures.values())
    assert all(f.traceback and "ValueError" in f.traceback for f in failures.values())

    report = bp.report()
    assert (report.batches, report.chunks, report.tasks) == (1, 20, 10_000)
    assert (report.finished, report.failed) == (10_000, 100)
    assert report.error_rate == pytest.approx(1.0)
    assert 0 < report.mean_batch_time <= report.wall_time + 1e-6
    assert report.tasks_per_second == pytest.approx(10_000 / report.wall_time)

    # The failures are fixed; retry_failed reruns exactly those, nothing else.
    BROKEN.clear()
    retried = await bp.retry_failed()
    assert sorted(retried) == sorted(f.task_id for f in failures.values())
    assert await bp.gather(timeout=60, progress=False) == [i * i for i in items]
    assert {i for i, runs in RUNS.items() if runs == 2} == set(failures)
    assert all(RUNS[i] == 1 for i in items if i not in failures)
    assert await bp.retry_failed() == []


async def test_map_raises_the_first_failure_without_return_exceptions(
    queue: TaskQueue, worker: Worker
) -> None:
    BROKEN.add(3)
    bp = BatchProcessor(queue)
    with pytest.raises(TaskFailed, match="item 3 is broken") as caught:
        await bp.map(flaky_square, range(6), progress=False, timeout=30)
    assert bp.last is not None and caught.value.task_id == bp.last.ids[3]


async def test_map_with_a_progress_bar_and_task_options(
    queue: TaskQueue, worker: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    bp = BatchProcessor(queue)
    values = await bp.map(
        flaky_square, [1, 2, 3], progress=True, options={"priority": 5, "result_ttl": 60}
    )
    assert values == [1, 4, 9]
    assert "3/3" in capsys.readouterr().err  # tqdm's done/total


# -- enqueue_batch ----------------------------------------------------------------


async def test_enqueue_batch_takes_tuples_and_single_args_in_chunks(
    queue: TaskQueue, worker: Worker
) -> None:
    bp = BatchProcessor(queue, batch_size=7)
    ids = await bp.enqueue_batch(jobs.async_add, [(i, 1) for i in range(20)])
    assert len(ids) == len(set(ids)) == 20
    assert bp.report().chunks == 3
    singles = await bp.enqueue_batch(flaky_square, range(5), batch_size=2)
    results = await bp.collect_results(ids + singles, timeout=30)
    assert [results[i].value for i in ids] == [i + 1 for i in range(20)]
    assert [results[i].value for i in singles] == [0, 1, 4, 9, 16]
    assert bp.report().chunks == 6


async def test_enqueue_batch_passes_task_options(queue: TaskQueue) -> None:
    bp = BatchProcessor(queue)
    ids = await bp.enqueue_batch(flaky_square, range(3), queue="elsewhere", max_retries=2)
    records = await queue._backend.get_tasks(ids)
    assert {(r.queue, r.max_retries) for r in records.values()} == {("elsewhere", 2)}


async def test_enqueue_batch_of_nothing(queue: TaskQueue) -> None:
    bp = BatchProcessor(queue)
    assert await bp.enqueue_batch(flaky_square, []) == []
    assert await bp.collect_results([], timeout=1) == {}
    assert await bp.map(flaky_square, [], progress=False) == []


# -- collect_results and as_completed ----------------------------------------------


async def test_collection_ending_at_its_timeout_returns_exactly_the_finished(
    queue: TaskQueue, worker: Worker, db_path: Path
) -> None:
    bp = BatchProcessor(queue)
    keys = [f"k{i}" for i in range(6)]
    ids = await bp.enqueue_batch(gated, [(key, key == "k4") for key in keys])
    for key in ("k1", "k3", "k4"):
        open_gate(key)

    async def three_finished() -> bool:
        return (
            db_counts(db_path, ids)["running"] == 3 and sum(db_counts(db_path, ids).values()) == 6
        )

    await await_until(three_finished, what="the three released tasks to finish")
    results = await bp.collect_results(ids, timeout=0.5, poll_interval=0.05)
    assert set(results) == {ids[1], ids[3], ids[4]}
    assert [results[ids[1]].value, results[ids[3]].value] == ["k1", "k3"]
    assert results[ids[4]].status is TaskStatus.FAILED
    # Exactly the finished ones: the database agrees.
    expected = {**counts_of(BatchProgress(6)), "running": 3, "succeeded": 2, "failed": 1}
    assert db_counts(db_path, ids) == expected
    assert sum(db_counts(db_path, list(results)).values()) == 3


async def test_collection_checks_many_ids_per_query(
    queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each poll is one status query for all pending ids, never one per id: the
    collection runs on one queue.watch_looks, which reads every pending id at once."""
    calls: Counter[str] = Counter()
    sizes: list[int] = []

    class Counting:
        def __init__(self, inner: TaskQueue) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            attribute = getattr(self._inner, name)
            if not callable(attribute):
                return attribute

            def counted(*args: Any, **kwargs: Any) -> Any:
                calls[name] += 1
                return attribute(*args, **kwargs)

            return counted

    backend = queue._backend
    read = backend.task_progress

    async def counted_read(task_ids: Any) -> Any:
        sizes.append(len(task_ids))
        return await read(task_ids)

    ids = await BatchProcessor(queue).enqueue_batch(flaky_square, range(2000))
    monkeypatch.setattr(backend, "task_progress", counted_read)
    bp = BatchProcessor(Counting(queue))  # type: ignore[arg-type]
    assert await bp.collect_results(ids, timeout=0.3, poll_interval=0.05) == {}
    assert 1 <= len(sizes) <= 0.3 / 0.01 + 1
    assert set(sizes) == {2000}  # every look reads all pending ids in one query
    assert set(calls) <= {"watch_looks", "statuses"}
    assert calls["watch_looks"] == 1


async def test_as_completed_yields_in_completion_order(queue: TaskQueue, worker: Worker) -> None:
    bp = BatchProcessor(queue)
    batch = await bp.submit(gated, ["a", "b", "c"])
    seen: list[str] = []

    async def consume() -> None:
        async for result in bp.as_completed(batch, timeout=30, poll_interval=0.05):
            seen.append(result.value)

    consumer = asyncio.create_task(consume())
    for key in ("c", "a", "b"):
        open_gate(key)
        await await_until(lambda key=key: asyncio.sleep(0, key in seen), what=f"{key} seen")
    await consumer
    assert seen == ["c", "a", "b"]


async def test_as_completed_raises_batch_timeout_with_what_is_pending(
    queue: TaskQueue, worker: Worker
) -> None:
    bp = BatchProcessor(queue)
    ids = await bp.enqueue_batch(gated, ["done", "stuck"])
    open_gate("done")
    seen = []
    with pytest.raises(BatchTimeout) as caught:
        async for result in bp.as_completed(ids, timeout=0.5, poll_interval=0.05):
            seen.append(result.task_id)
    assert seen == [ids[0]]
    assert caught.value.pending == [ids[1]]
    assert list(caught.value.results) == [ids[0]]
    with pytest.raises(BatchTimeout, match="1 tasks had not finished"):
        await bp.gather(ids, timeout=0.3, progress=False)


# -- progress and cancel ---------------------------------------------------------------


async def test_progress_counts_match_the_database_at_each_step(
    queue: TaskQueue, db_path: Path
) -> None:
    bp = BatchProcessor(queue)
    keys = [f"p{i}" for i in range(10)]
    batch = await bp.submit(gated, [(key, key == "p1") for key in keys], batch_id="steps")
    ids = batch.ids

    async def check(**expected: int) -> None:
        by_ids, by_name = await bp.progress(ids), await bp.progress("steps")
        database = db_counts(db_path, ids)
        assert counts_of(by_ids) == counts_of(by_name) == database
        assert {k: database[k] for k in expected} == expected
        assert by_ids.total == by_name.total == 10

    await check(queued=10)
    w = Worker(db_path, concurrency=3, prefetch=0, lease_seconds=10)
    await w.start()
    try:
        await await_until(
            lambda: asyncio.sleep(0, db_counts(db_path, ids)["running"] == 3), what="3 running"
        )
        await check(queued=7, running=3)
        for key in ("p0", "p1"):
            open_gate(key)
        await await_until(
            lambda: asyncio.sleep(0, db_counts(db_path, ids)["failed"] == 1), what="p1 failed"
        )
        await await_until(
            lambda: asyncio.sleep(0, db_counts(db_path, ids)["succeeded"] == 1), what="p0 done"
        )
        cancelled = await bp.cancel(batch)
        assert set(cancelled) <= set(ids[2:])

        async def none_queued() -> bool:
            # What the worker claimed before the cancel reads queued until it starts.
            return (await bp.progress(batch)).queued == 0

        await await_until(none_queued, what="the claimed tasks to start")
        await check(succeeded=1, failed=1)
        progress = await bp.progress(batch)
        assert progress.cancelled == len(cancelled) and progress.cancelled + progress.running == 8
        for key in keys:
            open_gate(key)
        await await_until(
            lambda: asyncio.sleep(0, db_counts(db_path, ids)["running"] == 0), what="all done"
        )
        await check(running=0, queued=0, failed=1)
        final = await bp.progress(batch)
        assert final.done and final.finished == 10 and final.fraction == 1.0
        assert str(final).startswith("10/10 finished")
    finally:
        for key in keys:
            open_gate(key)
        await w.stop(timeout=10)


async def test_cancel_leaves_running_tasks_alone(queue: TaskQueue, db_path: Path) -> None:
    bp = BatchProcessor(queue)
    ids = await bp.enqueue_batch(gated, ["r", "q1", "q2"])
    w = Worker(db_path, concurrency=1, prefetch=0, lease_seconds=10)
    await w.start()
    try:
        await await_until(
            lambda: asyncio.sleep(0, db_counts(db_path, ids)["running"] == 1), what="1 running"
        )
        assert sorted(await bp.cancel()) == sorted(ids[1:])
        open_gate("r")
        results = await bp.collect_results(ids, timeout=30, poll_interval=0.05)
        assert [results[i].status for i in ids] == [
            TaskStatus.SUCCEEDED,
            TaskStatus.CANCELLED,
            TaskStatus.CANCELLED,
        ]
    finally:
        open_gate("r")
        await w.stop(timeout=10)


# -- named batches ------------------------------------------------------------------------


async def test_named_batch_reuse_is_refused_unless_asked(queue: TaskQueue) -> None:
    bp = BatchProcessor(queue)
    first = await bp.enqueue_batch(flaky_square, range(3), batch_id="nightly")
    with pytest.raises(BatchExists, match=r"'nightly' already exists with 3 tasks.*bp.open"):
        await bp.enqueue_batch(flaky_square, range(3), batch_id="nightly")
    more = await bp.enqueue_batch(flaky_square, [9], batch_id="nightly", if_exists="append")
    assert (await bp.open("nightly")).ids == first + more
    assert await bp.delete("nightly") is True
    fresh = await bp.enqueue_batch(flaky_square, range(2), batch_id="nightly")
    assert (await bp.open("nightly")).ids == fresh
    assert [b.name for b in await bp.batches()] == ["nightly"]


async def test_resume_enqueues_only_the_items_a_batch_lacks(queue: TaskQueue) -> None:
    bp = BatchProcessor(queue, batch_size=40)
    items = list(range(250))
    stopped_early = await bp.enqueue_batch(flaky_square, items[:120], batch_id="big")
    ids = await bp.enqueue_batch(flaky_square, items, batch_id="big", if_exists="resume")
    assert ids[:120] == stopped_early and len(ids) == 250
    assert (await bp.open("big")).ids == ids
    assert await bp.enqueue_batch(flaky_square, items, batch_id="big", if_exists="resume") == ids
    payloads = await queue._backend.get_tasks(ids)
    assert len(payloads) == 250


async def test_enqueue_in_batch_with_expected_size(db_path: Path) -> None:
    async with TaskQueue(db_path) as queue:
        first = await BatchStore.of(queue).enqueue_in_batch(
            queue, "b", jobs.add, [(1, 2)], expected_size=0
        )
        with pytest.raises(BatchSizeChanged, match="'b' no longer has 0 tasks"):
            await BatchStore.of(queue).enqueue_in_batch(
                queue, "b", jobs.add, [(3, 4)], expected_size=0
            )
        with pytest.raises(ConfigurationError, match="expected_size must be an int >= 0"):
            await BatchStore.of(queue).enqueue_in_batch(
                queue, "b", jobs.add, [(3, 4)], expected_size=-1
            )
        more = await BatchStore.of(queue).enqueue_in_batch(
            queue.with_options(priority=1), "b", jobs.add, [(3, 4)], expected_size=1
        )
        assert await BatchStore.of(queue).batch_task_ids("b") == first + more

    def in_plain_code() -> None:  # a SyncTaskQueue refuses to block a running loop
        with SyncTaskQueue(db_path) as sync:
            batches = BatchStore(sync.store_session())
            with pytest.raises(BatchSizeChanged):
                sync.enqueue_many(jobs.add, [(5, 6)], alongside=batches.appender("b", 1))
            last = sync.with_options(priority=2).enqueue_many(
                jobs.add, [(5, 6)], alongside=batches.appender("b", 2)
            )
            assert asyncio.run(batches.batch_task_ids("b")) == first + more + last

    await asyncio.to_thread(in_plain_code)


RESUMER = """
import asyncio, sys
import jobs
from sitq import TaskQueue
from sitq.batch import BatchProcessor, BatchStore

async def main(db, count):
    async with TaskQueue(db) as queue:
        bp = BatchProcessor(queue, batch_size=7)
        await BatchStore.of(queue).get_batch("shared")  # connected: now line up with the other
        print("ready", flush=True)
        sys.stdin.readline()
        ids = await bp.enqueue_batch(
            jobs.add, [(i, 0) for i in range(count)], batch_id="shared", if_exists="resume"
        )
    print(len(ids), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_two_producers_resuming_one_batch_enqueue_each_item_once(
    db_url: str, tmp_path: Path
) -> None:
    count = 1500
    async with TaskQueue(db_url) as queue:
        await BatchStore.of(queue).enqueue_in_batch(
            queue, "shared", jobs.add, [(i, 0) for i in range(40)]
        )
    script = tmp_path / "resumer.py"
    script.write_text(RESUMER)
    producers = [
        subprocess.Popen(
            [sys.executable, str(script), db_url, str(count)],
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for producer in producers:  # both connected before either starts
            assert producer.stdout is not None and producer.stdout.readline() == "ready\n"
        for producer in producers:
            assert producer.stdin is not None
            producer.stdin.write("go\n")
            producer.stdin.flush()
        outputs = [producer.communicate(timeout=120) for producer in producers]
    finally:
        for producer in producers:
            producer.kill()
    for producer, (out, err) in zip(producers, outputs, strict=True):
        assert producer.returncode == 0, err
        assert out.split() == [str(count)]  # each returns the whole batch

    async with TaskQueue(db_url) as queue:
        record = await BatchStore.of(queue).get_batch("shared")
        assert record is not None and record.size == count
        ids = await BatchStore.of(queue).batch_task_ids("shared")
        tasks = await queue._backend.get_tasks(ids, with_payload=True)
        assert len(ids) == len(tasks) == count
        assert sum((await queue.stats())["totals"].values()) == count
        items = []
        for task_id in ids:
            payload = tasks[task_id].payload
            assert payload is not None
            _, args, _ = pickle.loads(unwrap(payload)[1])
            items.append(args[0])
        assert items == list(range(count))


async def test_a_named_batch_survives_its_producer(
    db_url: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """A producer process enqueues a named batch and exits; a fresh processor in
    this process opens it by name and collects every result."""
    producer = tmp_path / "producer.py"
    producer.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            import jobs
            from sitq import TaskQueue
            from sitq.batch import BatchProcessor

            async def main(db):
                async with TaskQueue(db) as queue:
                    bp = BatchProcessor(queue, batch_size=50)
                    items = [(i, i) for i in range(300)]
                    ids = await bp.enqueue_batch(jobs.async_add, items, batch_id="nightly")
                print(len(ids), ids[0], ids[-1])

            asyncio.run(main(sys.argv[1]))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(producer), db_url],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    count, first, last = done.stdout.split()

    async with TaskQueue(db_url) as queue:
        bp = BatchProcessor(queue)
        batch = await bp.open("nightly")
        assert (len(batch), batch.ids[0], batch.ids[-1]) == (int(count), first, last)
        assert (await bp.progress("nightly")).queued == 300
        spawn_worker("--concurrency", "8", db=db_url).wait_started()
        results = await bp.collect_results("nightly", timeout=60, poll_interval=0.1)
        assert [results[i].value for i in batch.ids] == [2 * i for i in range(300)]
        assert (await bp.progress(batch)).succeeded == 300
        assert bp.report().finished == 300
    with pytest.raises(BatchNotFound, match="no batch named 'weekly'.*'nightly'"):
        async with TaskQueue(db_url) as queue:
            await BatchProcessor(queue).open("weekly")


async def test_pruned_tasks_show_as_missing(queue: TaskQueue, worker: Worker) -> None:
    bp = BatchProcessor(queue)
    ids = await bp.enqueue_batch(flaky_square, [1, 2], batch_id="short", result_ttl=0)
    await bp.collect_results(ids, timeout=30)
    await await_until(queue._backend.prune, what="the results to expire")
    progress = await bp.progress("short")
    assert (progress.total, progress.missing, progress.finished) == (2, 2, 0)
    batch = await bp.open("short")
    assert (batch.size, batch.ids) == (2, [])
    assert await bp.collect_results(ids, timeout=1) == {}
    values = await bp.gather(ids, progress=False, return_exceptions=True)
    assert [type(v).__name__ for v in values] == ["TaskNotFound", "TaskNotFound"]


async def test_gather_over_a_named_batch_keeps_positions_after_pruning(
    queue: TaskQueue, worker: Worker
) -> None:
    bp = BatchProcessor(queue)
    await bp.enqueue_batch(flaky_square, [0], batch_id="gaps")
    await bp.enqueue_batch(flaky_square, [1, 2], batch_id="gaps", if_exists="append", result_ttl=0)
    await bp.enqueue_batch(flaky_square, [3], batch_id="gaps", if_exists="append")
    await bp.collect_results("gaps", timeout=30)
    await await_until(queue._backend.prune, what="the results to expire")

    batch = await bp.open("gaps")
    assert (len(batch.ids), batch.size, batch.positions) == (2, 4, [0, 3])
    assert batch.missing_positions == [1, 2]
    values = await bp.gather("gaps", progress=False, return_exceptions=True)
    assert len(values) == 4
    assert (values[0], values[3]) == (0, 9)
    for position in (1, 2):
        assert isinstance(values[position], TaskExpired)
        assert isinstance(values[position], TaskNotFound)
        assert (values[position].batch_id, values[position].position) == ("gaps", position)
    again = await bp.gather(batch, progress=False, return_exceptions=True)
    assert [v if isinstance(v, int) else v.args for v in again] == [
        0,
        ("gaps", 1),
        ("gaps", 2),
        9,
    ]
    with pytest.raises(TaskExpired, match="position 1 of batch 'gaps'.*result_ttl"):
        await bp.gather("gaps", progress=False)

    # Resuming keeps positions too: the new item goes at position 4.
    resumed = await bp.submit(flaky_square, range(5), batch_id="gaps", if_exists="resume")
    assert (resumed.size, resumed.positions) == (5, [0, 3, 4])
    values = await bp.gather(resumed, progress=False, return_exceptions=True)
    assert [v if isinstance(v, int) else type(v).__name__ for v in values] == [
        0,
        "TaskExpired",
        "TaskExpired",
        9,
        16,
    ]


# -- the sync face ----------------------------------------------------------------------


def test_sync_batch_processor(db_path: Path, spawn_worker: Callable[..., WorkerProcess]) -> None:
    with SyncTaskQueue(db_path) as queue, SyncBatchProcessor(queue, batch_size=25) as bp:
        queue.connect()  # creates the database the worker needs
        spawn_worker("--concurrency", "4").wait_started()
        values = bp.map(jobs.async_add, [(i, 10) for i in range(60)], progress=False, timeout=60)
        assert values == [i + 10 for i in range(60)]
        assert bp.progress().succeeded == 60
        ids = bp.enqueue_batch(jobs.add, [(1, 2), (3, 4)], batch_id="sync")
        assert sorted(r.value for r in bp.as_completed("sync", timeout=60)) == [3, 7]
        assert bp.open("sync").ids == ids
        assert bp.collect_results(ids, timeout=5)[ids[1]].value == 7
        assert bp.report().tasks == 62
        assert bp.retry_failed() == [] and bp.cancel(ids) == []


# -- bad input ---------------------------------------------------------------------------


async def test_bad_input_is_refused_with_a_clear_error(queue: TaskQueue) -> None:
    with pytest.raises(ConfigurationError, match="batch_size must be an int >= 1"):
        BatchProcessor(queue, batch_size=0)
    bp = BatchProcessor(queue)
    with pytest.raises(TypeError, match="SyncBatchProcessor"):
        BatchProcessor(SyncTaskQueue(queue._backend))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="if_exists must be"):
        await bp.enqueue_batch(flaky_square, [1], batch_id="x", if_exists="replace")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="batch id must be a non-empty string"):
        await bp.enqueue_batch(flaky_square, [1], batch_id="")
    with pytest.raises(ConfigurationError, match="unknown task option"):
        await bp.enqueue_batch(flaky_square, [1], colour="red")
    with pytest.raises(TypeError, match="func must be callable"):
        await bp.enqueue_batch(42, [1])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout must be a number of seconds"):
        await bp.collect_results([], timeout=-1)
    with pytest.raises(ConfigurationError, match="has not enqueued one yet"):
        await bp.retry_failed()
    with pytest.raises(BatchNotFound):
        await bp.progress("nope")
    assert isinstance(await bp.progress([]), BatchProgress)
    assert isinstance(Batch(["a"]).size, int)
