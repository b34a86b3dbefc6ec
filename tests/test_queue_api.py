"""The producer API (PRODUCT.md section 4) against a real SQLite file, with
in-process workers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jobs
import pytest
from support import SITQ, ServingWorker, await_until

from sitq import (
    Result,
    SyncTaskQueue,
    TaskFailed,
    TaskNotFound,
    TaskQueue,
    TaskStatus,
    Worker,
    schedules,
    signals,
)
from sitq.backends.sqlite import SQLiteBackend
from sitq.batch import BatchStore
from sitq.errors import ConfigurationError, NotConnected
from sitq.serialization import CloudpickleSerializer
from sitq.testing import TemporaryQueue


async def test_seed_tutorial_flow_runs_as_written(db_path: Path) -> None:
    async def process_item(item_id: int, data: dict) -> dict:
        await asyncio.sleep(0.01)
        return {"item_id": item_id, "processed_value": data["value"] * 2}

    backend = SQLiteBackend(str(db_path))
    serializer = CloudpickleSerializer()
    queue = TaskQueue(backend, serializer)
    await queue.connect()
    workers = [
        Worker(backend, serializer, concurrency=3),
        Worker(backend, serializer, concurrency=2),
    ]
    await asyncio.gather(*[w.start() for w in workers])
    task_id = await queue.enqueue(process_item, 7, {"value": 2})
    assert isinstance(task_id, str)
    result = await queue.get_result(task_id, timeout=5.0)
    assert isinstance(result, Result)
    assert result.value == {"item_id": 7, "processed_value": 4}
    await asyncio.gather(*[w.stop() for w in workers])
    await queue.close()


async def test_every_kwarg_goes_to_the_function(queue: TaskQueue, worker: ServingWorker) -> None:
    task_id = await queue.enqueue(
        jobs.echo_kwargs, 1, queue="q", priority=9, delay=3, timeout=1, fn="f", task_id="t"
    )
    result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.ok
    assert result.value == {
        "args": [1],
        "kwargs": {
            "queue": "q",
            "priority": 9,
            "delay": 3,
            "timeout": 1,
            "fn": "f",
            "task_id": "t",
        },
    }


async def test_result_fields_for_a_success(queue: TaskQueue, worker: ServingWorker) -> None:
    before = datetime.now(timezone.utc)
    task_id = await queue.enqueue(jobs.async_add, 2, 3)
    result = await queue.get_result(task_id, timeout=10)
    assert result is not None
    assert result.task_id == task_id
    assert result.status is TaskStatus.SUCCEEDED and result.ok
    assert result.value == 5 and result.unwrap() == 5
    assert result.error is None and result.traceback is None
    assert result.attempts == 1
    assert worker.ran(result.worker_id)
    assert result.enqueued_at and result.started_at and result.finished_at
    assert before - timedelta(seconds=1) <= result.enqueued_at <= result.started_at
    assert result.started_at <= result.finished_at


async def test_failed_task_keeps_error_and_unwrap_raises(
    queue: TaskQueue, worker: ServingWorker
) -> None:
    task_id = await queue.enqueue(jobs.fail, "boom")
    result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status is TaskStatus.FAILED and not result.ok
    assert result.error == "ValueError: boom"
    assert (
        result.traceback
        and "jobs.py" in result.traceback
        and "ValueError: boom" in result.traceback
    )
    with pytest.raises(TaskFailed) as info:
        result.unwrap()
    assert info.value.task_id == task_id
    assert "Remote traceback" in str(info.value) and "ValueError: boom" in str(info.value)


async def test_sync_functions_run_in_threads_async_on_loop(
    queue: TaskQueue, worker: ServingWorker
) -> None:
    sync_id = await queue.enqueue(jobs.thread_name)
    result = await queue.get_result(sync_id, timeout=10)
    assert result is not None and result.value.startswith("sitq-task")


async def test_get_result_returns_none_on_timeout_and_waits_without_one(
    queue: TaskQueue, db_path: Path
) -> None:
    task_id = await queue.enqueue(jobs.add, 1, 1)
    started = time.monotonic()
    assert await queue.get_result(task_id, timeout=0.2) is None
    assert 0.2 <= time.monotonic() - started < 2
    assert await queue.status(task_id) is TaskStatus.QUEUED

    waiter = asyncio.create_task(queue.get_result(task_id, timeout=None))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    w = Worker(db_path)
    await w.start()
    try:
        result = await asyncio.wait_for(waiter, 10)
    finally:
        await w.stop()
    assert result is not None and result.value == 2


async def test_enqueue_many_returns_ids_in_order(queue: TaskQueue, worker: ServingWorker) -> None:
    ids = await queue.enqueue_many(jobs.add, [(1, 2), (3, 4), (5, 6)])
    assert len(ids) == 3 and len(set(ids)) == 3
    values = [(await queue.get_result(i, timeout=10)).value for i in ids]  # type: ignore[union-attr]
    assert values == [3, 7, 11]


async def test_enqueue_many_single_args_and_options(queue: TaskQueue) -> None:
    ids = await queue.with_options(queue="other", priority=3).enqueue_many(jobs.noop, [])
    assert ids == []
    ids = await queue.with_options(queue="other").enqueue_many(jobs.getpid, [(), ()])
    stats = await queue.stats()
    assert stats["queues"]["other"]["queued"] == 2
    assert len(ids) == 2


async def test_enqueue_many_is_one_transaction(queue: TaskQueue, db_path: Path) -> None:
    """A bad item rejects the whole call: nothing is stored."""
    import threading

    with pytest.raises(Exception, match="argument 1"):
        await queue.enqueue_many(jobs.add, [(1, 2), (threading.Lock(), 1)])
    assert (await queue.stats())["totals"]["queued"] == 0


async def test_status_and_stats(queue: TaskQueue, worker: ServingWorker) -> None:
    ok = await queue.enqueue(jobs.add, 1, 2)
    bad = await queue.enqueue(jobs.fail, "x")
    await queue.get_result(ok, timeout=10)
    await queue.get_result(bad, timeout=10)
    assert await queue.status(ok) is TaskStatus.SUCCEEDED
    assert await queue.status(bad) is TaskStatus.FAILED
    stats = await queue.stats()
    assert stats["totals"]["succeeded"] == 1 and stats["totals"]["failed"] == 1
    assert stats["queues"]["default"]["failed"] == 1
    assert stats["workers_alive"] == 1


async def test_cancel_queued_task(queue: TaskQueue) -> None:
    task_id = await queue.with_options(delay=60).enqueue(jobs.noop)
    assert await queue.status(task_id) is TaskStatus.QUEUED
    assert await queue.cancel(task_id) is True
    result = await queue.get_result(task_id, timeout=1)
    assert result is not None and result.status is TaskStatus.CANCELLED
    assert await queue.cancel(task_id) is False
    with pytest.raises(TaskFailed, match="cancelled"):
        result.unwrap()


async def test_cancel_running_async_task(db_path: Path, queue: TaskQueue) -> None:
    w = Worker(db_path, lease_seconds=0.6)  # heartbeat every 0.2 s
    await w.start()
    try:
        task_id = await queue.enqueue(jobs.async_sleep, 30)

        async def running() -> bool:
            return await queue.status(task_id) is TaskStatus.RUNNING

        from support import await_until

        await await_until(running, 10, "the task to start")
        assert await queue.cancel(task_id) is True
        result = await queue.get_result(task_id, timeout=10)
        assert result is not None and result.status is TaskStatus.CANCELLED
        # The worker keeps serving.
        follow = await queue.enqueue(jobs.add, 2, 2)
        assert (await queue.get_result(follow, timeout=10)).value == 4  # type: ignore[union-attr]
    finally:
        await w.stop(timeout=5)


async def test_retry_a_failed_task(queue: TaskQueue, worker: ServingWorker, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    task_id = await queue.enqueue(jobs.flaky, counter, 1)
    first = await queue.get_result(task_id, timeout=10)
    assert first is not None and first.status is TaskStatus.FAILED
    assert await queue.retry(task_id) is True
    await asyncio.sleep(0)

    async def done() -> bool:
        return (await queue.status(task_id)).finished

    from support import await_until

    await await_until(done, 10, "the retried task")
    again = await queue.get_result(task_id, timeout=1)
    assert again is not None and again.ok and again.value == 2
    assert await queue.retry(task_id) is False


async def test_unknown_ids_raise_task_not_found(queue: TaskQueue) -> None:
    for call in (
        queue.get_result("nope", timeout=0.1),
        queue.status("nope"),
        queue.cancel("nope"),
        queue.retry("nope"),
    ):
        with pytest.raises(TaskNotFound, match="no task with id 'nope'"):
            await call


async def test_queue_from_url_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with TaskQueue(f"sqlite:///{tmp_path}/a.db") as q:
        await q.enqueue(jobs.noop)
    assert (tmp_path / "a.db").exists()
    monkeypatch.setenv("SITQ_DB", str(tmp_path / "env.db"))
    async with TaskQueue() as q:
        await q.enqueue(jobs.noop)
    assert (tmp_path / "env.db").exists()
    monkeypatch.delenv("SITQ_DB")
    monkeypatch.chdir(tmp_path)
    async with TaskQueue() as q:
        await q.enqueue(jobs.noop)
    assert (tmp_path / "sitq.db").exists()


async def test_database_file_is_owner_only(db_path: Path, queue: TaskQueue) -> None:
    assert db_path.stat().st_mode & 0o777 == 0o600


async def test_using_a_closed_queue_says_what_to_do(db_path: Path) -> None:
    q = TaskQueue(db_path)
    with pytest.raises(NotConnected, match="connect"):
        await q.enqueue(jobs.noop)


async def test_close_stops_the_result_poller_and_answers_its_waiters(db_path: Path) -> None:
    def pollers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "sitq-result-waiters"]

    async def polling() -> bool:
        return bool(pollers())

    q = TaskQueue(db_path)
    await q.connect()
    task_id = await q.enqueue(jobs.noop)  # no worker: it never finishes
    waiters = [asyncio.ensure_future(q.get_result(task_id, timeout=None)) for _ in range(2)]
    await await_until(polling, what="the result poller")
    (poller,) = pollers()
    await asyncio.wait_for(q.close(), 10)
    assert poller.done() and not pollers()
    done, _ = await asyncio.wait(waiters, timeout=10)
    assert len(done) == 2
    for waiter in done:
        with pytest.raises(NotConnected, match="closed"):
            waiter.result()


def test_sync_task_queue(db_path: Path) -> None:
    async def serve_one() -> None:
        w = Worker(db_path, concurrency=2)
        await w.start()
        try:
            from support import await_until

            async def drained() -> bool:
                async with TaskQueue(db_path) as q:
                    return (await q.stats())["totals"]["queued"] == 0

            await await_until(drained, 10, "the queue to drain")
        finally:
            await w.stop()

    with SyncTaskQueue(db_path) as q:
        task_id = q.enqueue(jobs.add, 20, 22)
        ids = q.with_options(priority=1).enqueue_many(jobs.add, [(1, 1), (2, 2)])
        assert q.status(task_id) is TaskStatus.QUEUED
        asyncio.run(serve_one())
        assert q.get_result(task_id, timeout=5).value == 42  # type: ignore[union-attr]
        assert [q.get_result(i).value for i in ids] == [2, 4]  # type: ignore[union-attr]
        assert q.stats()["totals"]["succeeded"] == 3
        with pytest.raises(TaskNotFound):
            q.status("missing")


def test_a_program_that_never_closes_its_queue_still_exits(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import asyncio\n"
        "from sitq import TaskQueue, Worker\n"
        "async def main():\n"
        "    q = TaskQueue('left-open.db')\n"
        "    await q.connect()\n"
        "    await Worker('left-open.db').start()\n"
        "    raise RuntimeError('crashed without closing')\n"
        "asyncio.run(main())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 1 and "crashed without closing" in run.stderr


# -- issue 19 items 11 to 13: options passed as arguments, schedules, migration ---------


def takes_priority(x: int, priority: int = 0) -> int:
    return x + priority


async def test_an_option_keyword_the_function_cannot_take_is_refused(
    queue: TaskQueue, db_path: Path
) -> None:
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    with pytest.raises(ConfigurationError, match=r"has no parameter 'eta'.*with_options\(eta="):
        await queue.enqueue(jobs.add, 1, 2, eta=when)
    with pytest.raises(ConfigurationError, match=r"with_options\(max_retries="):
        await queue.with_options(queue="q").enqueue(jobs.add, 1, b=2, max_retries=3)

    def sync_enqueue() -> None:
        with SyncTaskQueue(db_path) as sync_queue:
            sync_queue.enqueue(jobs.add, 1, 2, delay=5)

    with pytest.raises(ConfigurationError, match=r"with_options\(delay="):
        await asyncio.to_thread(sync_enqueue)
    assert (await queue.stats())["totals"]["queued"] == 0
    # What binds still goes to the function, as the contract says.
    by_name = await queue.enqueue(takes_priority, 1, priority=5)
    by_kwargs = await queue.enqueue(jobs.echo_kwargs, eta="x")
    assert (await queue.stats())["totals"]["queued"] == 2
    worker = Worker(db_path)
    await worker.start()
    try:
        assert (await queue.get_result(by_name, timeout=10)).value == 6  # type: ignore[union-attr]
        echoed = await queue.get_result(by_kwargs, timeout=10)
        assert echoed is not None and echoed.value["kwargs"] == {"eta": "x"}
    finally:
        await worker.stop()


def test_periodic_with_a_number_or_a_timedelta_says_what_to_write() -> None:
    queue = TaskQueue("unused.db")
    for when in (30, timedelta(seconds=1)):
        with pytest.raises(ConfigurationError, match=r"a cron string, or every=SECONDS"):
            queue.periodic(when)(jobs.noop)  # type: ignore[arg-type]
    schedule = queue.schedule(jobs.add, 1, 2, every=timedelta(milliseconds=1500), name="t")
    assert schedule.every == 1.5 and schedule.spec == "every 1.5s"
    queue.periodic(every=timedelta(minutes=2), name="every-two")(jobs.noop)
    try:
        registered = {s.name: s for s in schedules.registered()}
        assert registered["every-two"].every == 120.0
    finally:
        schedules.remove("t")
        schedules.remove("every-two")


def test_the_peer_names_import_from_sitq(tmp_path: Path) -> None:
    code = (
        "import sys, sitq\n"
        "assert 'aiosqlite' not in sys.modules, 'import sitq loaded the SQLite backend'\n"
        "from sitq import SQLiteBackend, CloudpickleSerializer\n"
        "from sitq.backends.sqlite import SQLiteBackend as Direct\n"
        "assert SQLiteBackend is Direct\n"
        "print(CloudpickleSerializer.__module__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "sitq.serialization"


async def test_sync_task_queue_inside_a_running_loop_points_to_task_queue(
    db_path: Path,
) -> None:
    sync_queue = SyncTaskQueue(db_path)
    try:
        started = time.monotonic()
        with pytest.raises(ConfigurationError, match=r"runs an event loop.*use TaskQueue"):
            sync_queue.enqueue(jobs.noop)
        with pytest.raises(ConfigurationError, match="to_thread"):
            sync_queue.get_result("0" * 32, timeout=5)
        assert time.monotonic() - started < 1  # refused at once, the loop never blocked
        # From a thread, as the message says, it works.
        task_id = await asyncio.to_thread(sync_queue.enqueue, jobs.noop)
        assert await asyncio.to_thread(sync_queue.status, task_id) is TaskStatus.QUEUED
    finally:
        await asyncio.to_thread(sync_queue.close)


async def test_status_shows_no_last_run_for_a_schedule_that_never_ran(db_path: Path) -> None:
    nightly = schedules.Schedule("nightly", jobs.noop, cron="0 3 * * *", tz="Europe/Paris")
    hourly = schedules.Schedule("hourly", jobs.noop, every=3600)
    often = schedules.Schedule("often", jobs.noop, every=0.25)
    async with TaskQueue(db_path) as queue:
        worker = Worker(db_path, schedules=[nightly, hourly, often])
        await worker.start()
        try:

            async def often_ran() -> bool:
                record = {r.name: r for r in await queue.schedules()}.get("often")
                if record is None:
                    return False
                return record.last_run_at != first_seen.setdefault("often", record.last_run_at)

            first_seen: dict[str, float] = {}
            await await_until(often_ran, 15, "a run of the 0.25 s schedule")
        finally:
            await worker.stop()
    run = subprocess.run(
        [SITQ, "status", "--db", str(db_path)], capture_output=True, text=True, timeout=60
    )
    lines = {line.split()[0]: line for line in run.stdout.splitlines() if "next" in line}
    assert lines["nightly"].rstrip().endswith("last -"), lines["nightly"]
    assert lines["hourly"].rstrip().endswith("last -"), lines["hourly"]
    assert "last 20" in lines["often"]


def test_sync_task_queue_works_in_a_jupyter_kernel(tmp_path: Path) -> None:
    """A notebook cell runs on the kernel's event loop; plain calls there block it
    whatever they do, so SyncTaskQueue is not refused in a kernel."""
    manager = pytest.importorskip("jupyter_client.manager")
    pytest.importorskip("ipykernel")
    kernel, client = manager.start_new_kernel()
    code = (
        f"import asyncio, sys\nsys.path.insert(0, {str(Path(jobs.__file__).parent)!r})\n"
        "import jobs\nfrom sitq import SyncTaskQueue\nasyncio.get_running_loop()\n"
        f"with SyncTaskQueue({str(tmp_path / 'tasks.db')!r}) as queue:\n"
        "    print('enqueued', queue.status(queue.enqueue(jobs.noop)).value)\n"
    )
    try:
        msg_id = client.execute(code)
        output, errors = "", []
        while True:
            msg = client.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                output += msg["content"]["text"]
            elif msg["msg_type"] == "error":
                errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=True)
    assert not errors and "enqueued queued" in output, (errors, output)


def test_a_task_handle_given_to_enqueue_is_sent_by_name(db_path: Path, spawn_worker) -> None:
    """queue.enqueue(handle, ...) stores the handle's name and registered options,
    as handle.enqueue(...) does, on every enqueue path, async and blocking."""
    import sqlite3

    import registered_jobs  # greet: name "greet", max_retries=1; shout: its qualname

    greet, shout = registered_jobs.greet, registered_jobs.shout

    async def enqueue() -> list[str]:
        async with TaskQueue(db_path) as q:
            a = await q.enqueue(greet, "ada")
            b = await q.with_options(priority=5).enqueue(greet, "bob", punctuation="?")
            many = await q.enqueue_many(shout, ["x", ("y",)])
            return [a, b, *many, *await BatchStore.of(q).enqueue_in_batch(q, "b1", greet, ["bea"])]

    a, b, c, d, g = asyncio.run(enqueue())
    with SyncTaskQueue(db_path) as sq:
        e = sq.enqueue(greet, "eve")
        (f,) = sq.with_options(priority=2).enqueue_many(shout, ["z"])
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT CAST(id AS TEXT), func_name || ' ' || max_retries || ' ' || priority "
            "FROM sitq_tasks"
        )
        stored = dict(rows.fetchall())
    assert stored == {
        a: "greet 1 0",
        b: "greet 1 5",
        c: "registered_jobs.shout 0 0",
        d: "registered_jobs.shout 0 0",
        e: "greet 1 0",
        f: "registered_jobs.shout 0 2",
        g: "greet 1 0",
    }
    spawn_worker("--import", "registered_jobs").wait_started()
    with SyncTaskQueue(db_path) as sq:
        values = [sq.get_result(i, timeout=30).unwrap() for i in (a, b, c, d, e, f, g)]  # type: ignore[union-attr]
    assert values == ["hello ada!", "hello bob?", "X", "Y", "hello eve!", "Z", "hello bea!"]


async def test_a_registered_task_refuses_an_option_keyword_it_cannot_take(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``handle.enqueue(x, eta=...)`` and ``queue.enqueue(handle, x, eta=...)`` are
    checked against the registered function, as a plain function is; nothing is stored."""
    import registered_jobs

    monkeypatch.chdir(db_path.parent)  # the module's own queue opens sitq.db here

    when = datetime.now(timezone.utc) + timedelta(hours=1)
    async with TaskQueue(db_path) as queue:
        with pytest.raises(ConfigurationError, match=r"greet\(\) has no parameter 'eta'"):
            await registered_jobs.greet.with_options().enqueue("ann", eta=when)
        with pytest.raises(ConfigurationError, match=r"with_options\(delay="):
            await queue.enqueue(registered_jobs.shout, "hi", delay=5)
        assert sum((await queue.stats())["totals"].values()) == 0

    def sync_enqueue() -> None:
        with SyncTaskQueue(db_path) as sync_queue:
            sync_queue.enqueue(registered_jobs.greet, "ann", eta=when)

    with pytest.raises(ConfigurationError, match=r"greet\(\) has no parameter 'eta'"):
        await asyncio.to_thread(sync_enqueue)


# -- the operator API: what `sitq` commands and the dashboard are built on ----------


async def _claim_one(db_path: Path, queue: str = "default") -> str:
    """Claim one task as a worker would (held, not started); its id."""
    backend = SQLiteBackend(str(db_path))
    await backend.connect()
    try:
        [claimed] = await backend.claim("w1", [queue], 1, 60.0)
    finally:
        await backend.close()
    return claimed.id


async def test_request_cancel_says_which_of_three_things_happened(
    queue: TaskQueue, db_path: Path
) -> None:
    from sitq import CancelOutcome

    queued = await queue.with_options(delay=60).enqueue(jobs.noop)
    held = await queue.enqueue(jobs.noop)
    assert await _claim_one(db_path) == held
    assert await queue.request_cancel(queued) is CancelOutcome.CANCELLED
    assert await queue.request_cancel(queued) is CancelOutcome.FINISHED
    assert await queue.request_cancel(held) is CancelOutcome.REQUESTED
    # Its truth value is cancel()'s answer.
    assert [bool(o) for o in CancelOutcome] == [True, True, False]
    with pytest.raises(TaskNotFound):
        await queue.request_cancel("nope")


async def test_retry_failed_purge_and_task_record(queue: TaskQueue, db_path: Path) -> None:
    mail = await queue.with_options(queue="mail").enqueue_many(jobs.fail, ["x", "y"])
    other = await queue.with_options(queue="other").enqueue(jobs.fail, "z")
    async with TemporaryQueue(db_path) as runner:
        assert (await runner.run_all()).failed == 3
    assert await queue.retry_failed("mail") == 2
    assert await queue.statuses([*mail, other]) == {
        mail[0]: TaskStatus.QUEUED,
        mail[1]: TaskStatus.QUEUED,
        other: TaskStatus.FAILED,
    }
    record = await queue.task_record(other)
    assert record is not None and record.payload is None and "z" in (record.error or "")
    with_payload = await queue.task_record(other, payload=True)
    assert with_payload is not None and with_payload.payload
    assert await queue.task_record("nope") is None
    assert await queue.purge(["queued"], queue="mail") == 2
    assert await queue.purge() == 1  # every finished task: the failed one
    assert await queue.retry_failed() == 0
    with pytest.raises(ConfigurationError, match="statuses"):
        await queue.purge(["done"])


async def test_overview_counts_queues_workers_and_failures(queue: TaskQueue, db_path: Path) -> None:
    from sitq import Overview

    await queue.with_options(queue="mail", delay=3600).enqueue(jobs.noop)
    ready = await queue.enqueue_many(jobs.noop, [(), ()])
    await queue.pause("idle")
    view = await queue.overview()
    assert isinstance(view, Overview)
    assert set(view.queues) == {"default", "idle", "mail"}
    default, mail, idle = view.queues["default"], view.queues["mail"], view.queues["idle"]
    assert (default.counts["queued"], default.ready, default.delayed) == (2, 2, 0)
    assert default.oldest_wait is not None and default.oldest_wait >= 0
    assert (mail.ready, mail.delayed, mail.oldest_wait) == (0, 1, None)
    assert idle.paused and not any(idle.counts.values())
    assert view.totals["queued"] == 3 and view.workers == () and view.recent_failures == ()
    # stats() keeps its shape, and leaves out queues holding no task.
    stats = await queue.stats()
    assert set(stats["queues"]) == {"default", "mail"} and stats["workers_alive"] == 0
    assert await _claim_one(db_path) == ready[0]
    assert (await queue.overview(counts=False)).queues["default"].claimed == 1
    with pytest.raises(ConfigurationError):
        await queue.overview(failures=-1)


async def test_create_false_opens_only_an_existing_database(tmp_path: Path) -> None:
    from sitq.errors import SitqError

    missing = tmp_path / "missing.db"
    with pytest.raises(SitqError):
        async with TaskQueue(missing, create=False):
            pass
    assert not missing.exists()
    async with TaskQueue(missing):
        pass
    async with TaskQueue(missing, create=False) as queue:
        assert await queue.overview() is not None


async def test_a_retry_announces_only_what_it_queued_again(db_path: Path) -> None:
    """Another client retries the same tasks first: this call queues none again,
    so it announces none (the other client announced them)."""
    heard: list[str] = []

    def receive(event: signals.TaskEvent) -> None:
        heard.append(event.task_id)

    async with TemporaryQueue(db_path) as mine, TaskQueue(db_path) as other:
        cancelled = await mine.enqueue_many(jobs.noop, [(), ()])
        assert await mine.cancel_many(cancelled) == cancelled
        failed = await mine.with_options(queue="f").enqueue_many(jobs.fail, ["no"] * 2)
        assert (await mine.run_all(queues=("f",))).failed == 2
        backend = mine._backend
        retry = backend.retry

        async def the_other_client_first(
            task_ids: list[str] | None = None, queue: str | None = None
        ) -> list[str]:
            if task_ids is None:
                await other.retry_failed(queue)
            else:
                await other.retry_many(task_ids)
            return await retry(task_ids, queue)

        backend.retry = the_other_client_first  # type: ignore[method-assign]
        signals.task_requeued.connect(receive)
        try:
            assert await mine.retry_failed("f") == 0
            assert await mine.retry_many(cancelled) == 0
        finally:
            signals.task_requeued.disconnect(receive)
    assert sorted(heard) == sorted(cancelled + failed)  # each once: by the other client
