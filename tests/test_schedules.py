"""Registered tasks, periodic schedules, unique jobs, limits, pausing, burst mode
and the test helper, with real `sitq worker` processes where the issue asks."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import jobs
import pytest
from support import SITQ, await_until, subprocess_env, wait_until

from sitq import SyncTaskQueue, TaskQueue, TaskStatus, Worker
from sitq.errors import ConfigurationError
from sitq.schedules import Schedule
from sitq.task import TaskId
from sitq.testing import TemporaryQueue


def _rows(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


# -- registered tasks --------------------------------------------------------------


def _create(db: Path) -> None:
    """Create the database the way an operator does."""
    subprocess.run([SITQ, "init", "--db", str(db)], check=True, capture_output=True)


def _python(code: str, db: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the tests importable and $SITQ_DB set."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(SITQ_DB=str(db), **env),
        cwd=db.parent,
        timeout=120,
    )


ENQUEUE_REGISTERED = """
import asyncio, registered_jobs
async def main():
    assert registered_jobs.greet("ada") == "hello ada!"   # a plain call runs it here
    async with registered_jobs.queue:
        a = await registered_jobs.greet.enqueue("bob", punctuation="?")
        b = await registered_jobs.shout.with_options(priority=5).enqueue("hey")
        print(a, b)
asyncio.run(main())
"""


async def test_registered_tasks_run_by_name_in_a_worker_process(
    db_path: Path, spawn_worker
) -> None:
    _create(db_path)
    proc = _python(ENQUEUE_REGISTERED, db_path)
    assert proc.returncode == 0, proc.stderr
    greet_id, shout_id = proc.stdout.split()
    stored = dict(
        _rows(
            db_path,
            "SELECT CAST(id AS TEXT), func_name || ' ' || max_retries || ' ' || priority "
            "FROM sitq_tasks",
        )
    )
    assert stored == {greet_id: "greet 1 0", shout_id: "registered_jobs.shout 0 5"}
    spawn_worker("--import", "registered_jobs").wait_started()
    async with TaskQueue(db_path) as queue:
        assert (await queue.get_result(greet_id, timeout=30)).value == "hello bob?"
        assert (await queue.get_result(shout_id, timeout=30)).value == "HEY"


async def test_a_worker_without_the_module_fails_the_task_and_says_what_to_import(
    db_path: Path, spawn_worker
) -> None:
    _create(db_path)
    proc = _python(ENQUEUE_REGISTERED, db_path)
    greet_id, _ = proc.stdout.split()
    spawn_worker().wait_started()  # no --import registered_jobs
    async with TaskQueue(db_path) as queue:
        result = await queue.get_result(greet_id, timeout=30)
    assert result.status is TaskStatus.FAILED
    assert result.error.startswith("UnknownTask: no task named 'greet' is registered")
    assert "--import MODULE" in result.error


async def test_a_task_registered_in_a_script_run_as_main_is_named_as_such(
    db_path: Path, spawn_worker
) -> None:
    """`python script.py` registers `__main__.fn`, which no worker can import:
    the failure says so, instead of suggesting the --import that cannot help."""
    _create(db_path)
    proc = _python(
        "import asyncio\n"
        "from sitq import TaskQueue\n"
        "queue = TaskQueue()\n"
        "@queue.task()\n"
        "async def send_welcome(user_id: int) -> str:\n"
        "    return f'hi {user_id}'\n"
        "async def main() -> None:\n"
        "    async with queue:\n"
        "        print(await send_welcome.enqueue(42))\n"
        "asyncio.run(main())\n",
        db_path,
    )
    assert proc.returncode == 0, proc.stderr
    spawn_worker().wait_started()
    async with TaskQueue(db_path) as queue:
        result = await queue.get_result(proc.stdout.strip(), timeout=30)
    assert result.status is TaskStatus.FAILED
    assert result.error.startswith(
        "UnknownTask: no task named '__main__.send_welcome' is registered in this worker: it "
        "was registered in a script run as __main__, which `sitq worker` cannot import"
    ), result.error


# -- periodic tasks ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_schedule_due_every_second_runs_once_per_due_time_across_3_workers(
    db_path: Path, tmp_path: Path, spawn_worker
) -> None:
    _create(db_path)
    log = tmp_path / "ticks.log"
    env = {"SITQ_TEST_PERIODIC_LOG": str(log)}
    workers = [spawn_worker("--import", "registered_jobs", env=env) for _ in range(3)]
    for worker in workers:
        worker.wait_started()
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 10, 40, "10 ticks")
    for worker in workers:
        worker.send(2)  # SIGINT: drain
    for worker in workers:
        assert worker.wait(30) == 0
    runs = log.read_text().splitlines()
    tasks = _rows(
        db_path, "SELECT unique_key, status FROM sitq_tasks WHERE func_name = 'every-second'"
    )
    due = sorted(float(key.rsplit("@", 1)[1]) for key, _ in tasks)
    # One task per due second, none missing, none twice; each ran once.
    assert len(due) >= 10
    assert [b - a for a, b in itertools.pairwise(due)] == [1.0] * (len(due) - 1)
    assert all(status == "succeeded" for _, status in tasks)
    assert len(runs) == len(tasks)
    assert len({line.split()[1] for line in runs}) >= 2  # spread over the workers
    ((last_run,),) = _rows(
        db_path, "SELECT last_run_at FROM sitq_schedules WHERE name = 'every-second'"
    )
    assert last_run == due[-1]


def test_schedule_definitions_are_checked() -> None:
    queue = TaskQueue("unused.db")
    with pytest.raises(ConfigurationError, match="not a cron expression"):
        queue.schedule(jobs.noop, cron="every day")
    with pytest.raises(ConfigurationError, match="exactly one of"):
        queue.schedule(jobs.noop)
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        queue.schedule(jobs.noop, cron="0 3 * * *", tz="Mars/Olympus")
    parent = "01a2479783c90000008183de699fc5d5"
    with pytest.raises(ConfigurationError, match="depends_on cannot be set on a schedule"):
        queue.schedule(queue.task(depends_on=[parent])(jobs.noop), every=60)
    with pytest.raises(ConfigurationError, match="depends_on cannot be set on a schedule"):
        queue.periodic(every=60, depends_on=[parent])(jobs.noop)


# -- unique jobs -------------------------------------------------------------------

UNIQUE_PRODUCER = """
from sitq import SyncTaskQueue
import jobs
with SyncTaskQueue() as queue:
    unique = queue.with_options(unique_key="nightly-report")
    print(" ".join(unique.enqueue(jobs.noop) for _ in range(50)))
"""


def test_unique_key_holds_under_4_concurrent_producer_processes(db_path: Path) -> None:
    _create(db_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", UNIQUE_PRODUCER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(SITQ_DB=str(db_path)),
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    ids = [task_id for out, _ in outputs for task_id in out.split()]
    assert len(ids) == 200 and len(set(ids)) == 1  # every producer got the same task's id
    assert _rows(db_path, "SELECT COUNT(*) FROM sitq_tasks") == [(1,)]


async def test_unique_enqueue_says_whether_it_created_the_task(queue: TaskQueue) -> None:
    unique = queue.with_options(unique_key="k")
    first, second = await unique.enqueue(jobs.noop), await unique.enqueue(jobs.noop)
    assert isinstance(first, TaskId) and first.created and not second.created
    assert first == second
    with pytest.raises(ConfigurationError, match="one task at a time"):
        await unique.enqueue_many(jobs.noop, [(), ()])


# -- limits ------------------------------------------------------------------------


def _spans(log: Path) -> list[tuple[str, float, float]]:
    """(marker, start, end) of each run recorded by jobs.record_times."""
    starts, ends = {}, {}
    for line in log.read_text().splitlines():
        kind, marker, moment = line.split()
        (starts if kind == "S" else ends)[marker] = float(moment)
    return [(m, starts[m], ends[m]) for m in starts if m in ends]


def _most_at_once(spans: list[tuple[str, float, float]]) -> int:
    events = sorted([(s, 1) for _, s, _ in spans] + [(e, -1) for _, _, e in spans])
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


async def test_a_global_limit_of_2_holds_across_3_worker_processes(
    db_path: Path, tmp_path: Path, spawn_worker
) -> None:
    log = tmp_path / "runs.log"
    async with TaskQueue(db_path) as queue:
        await queue.set_limit("render", max_running=2)
        limited = queue.with_options(limit_key="render")
        ids = [await limited.enqueue(jobs.record_times, str(log), f"r{i}", 0.15) for i in range(12)]
        free = [await queue.enqueue(jobs.record_times, str(log), f"f{i}", 0.15) for i in range(3)]
        for _ in range(3):
            spawn_worker("--concurrency", "4").wait_started()
        for task_id in ids + free:
            assert (await queue.get_result(task_id, timeout=60)).ok
    spans = _spans(log)
    limited_spans = [s for s in spans if s[0].startswith("r")]
    assert len(limited_spans) == 12
    assert _most_at_once(limited_spans) == 2  # reached, never passed
    assert _most_at_once(spans) > 2  # unlimited tasks were not held back


async def test_the_next_task_under_a_full_limit_starts_when_the_running_one_ends(
    db_path: Path,
) -> None:
    """An idle worker does not poll for room under a full concurrency limit: the
    finish that frees it wakes the worker (a poll interval of 10 s would show)."""
    async with TaskQueue(db_path) as queue:
        await queue.set_limit("one", max_running=1)
        limited = queue.with_options(limit_key="one")
        first = await limited.enqueue(jobs.sync_sleep, 0.3)
        second = await limited.enqueue(jobs.sync_sleep, 0.0)
        worker = Worker(db_path, concurrency=2, poll_interval=10.0)
        await worker.start()
        try:
            done = await queue.get_result(first, timeout=10)
            after = await queue.get_result(second, timeout=10)
        finally:
            await worker.stop()
    assert done is not None and done.ok and after is not None and after.ok
    assert after.started_at is not None and done.finished_at is not None
    assert (after.started_at - done.finished_at).total_seconds() < 2.0


@pytest.mark.slow
async def test_a_rate_limit_of_10_per_second_holds_over_5_seconds(
    db_path: Path, spawn_worker
) -> None:
    async with TaskQueue(db_path) as queue:
        await queue.set_limit("api", max_starts=10, per=1.0)
        limited = queue.with_options(limit_key="api")
        ids = await asyncio.gather(*(limited.enqueue(jobs.noop) for _ in range(55)))
        for _ in range(2):
            # The job module imported at start-up: a first task that imports it
            # starts late, bunching its claim's starts into the next window.
            spawn_worker("--concurrency", "8", "--import", "jobs").wait_started()
        for task_id in ids:
            assert (await queue.get_result(task_id, timeout=60)).ok
    starts = sorted(t for (t,) in _rows(db_path, "SELECT started_at FROM sitq_tasks"))
    window = max(sum(1 for t in starts[i:] if t < start + 1.0) for i, start in enumerate(starts))
    assert window == 10  # any one-second window: at most 10 starts
    assert starts[-1] - starts[0] >= 5.0 - 0.1  # 55 starts needed more than 5 windows


# -- pausing, burst mode, the test helper --------------------------------------------


def test_pause_and_resume_from_the_command_line(db_path: Path, spawn_worker) -> None:
    """The resume wakes the worker: it polls its paused queue no more than an
    empty one (every 30 s here), so the held task runs well before that."""
    _create(db_path)
    spawn_worker("--poll-interval", "30").wait_started()
    assert subprocess.run([SITQ, "pause", "default", "--db", str(db_path)]).returncode == 0
    with SyncTaskQueue(db_path) as queue:
        held = queue.enqueue(jobs.add, 1, 1)
        other = queue.with_options(queue="other").enqueue(jobs.add, 2, 2)
        status = json.loads(
            subprocess.run(
                [SITQ, "status", "--json", "--db", str(db_path)], capture_output=True, text=True
            ).stdout
        )
        assert status["queues"]["default"]["paused"] is True
        assert queue.get_result(held, timeout=0.5) is None  # a worker is there, but paused
        resumed = subprocess.run(
            [SITQ, "resume", "default", "--db", str(db_path)], capture_output=True, text=True
        )
        assert "resumed queue 'default'" in resumed.stdout
        assert queue.get_result(held, timeout=10).value == 2
        assert queue.status(other) is TaskStatus.QUEUED  # not served by this worker


def _burst(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`sitq worker --burst ARGS` on ``db``, run to its end."""
    return subprocess.run(
        [SITQ, "worker", "--burst", *args, "--db", str(db)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )


def test_burst_mode_names_the_tasks_it_left_in_a_paused_queue(db_path: Path) -> None:
    """A burst ends once nothing is ready, and a paused queue's tasks never are:
    the summary says they wait, and how to let them run."""
    _create(db_path)
    with SyncTaskQueue(db_path) as queue:
        queue.enqueue_many(jobs.add, [(1, 1), (2, 2)])
        queue.with_options(queue="other").enqueue(jobs.add, 3, 3)
    assert subprocess.run([SITQ, "pause", "default", "--db", str(db_path)]).returncode == 0
    run = _burst(db_path, "-q", "default", "-q", "other")
    assert run.returncode == 0, run.stderr
    assert "burst done: 1 succeeded" in run.stdout
    assert (
        "not run: 2 ready task(s) in paused queue 'default' (`sitq resume default`)" in run.stdout
    )
    quiet = _burst(db_path, "-q", "other")
    assert quiet.returncode == 0 and "not run" not in quiet.stdout  # not this worker's queue
    supervised = _burst(db_path, "--processes", "2")
    assert supervised.returncode == 0, supervised.stderr
    assert supervised.stdout.count("not run: 2 ready task(s) in paused queue") == 1  # not per child


def test_burst_mode_runs_everything_then_exits_with_a_summary(db_path: Path) -> None:
    _create(db_path)
    with SyncTaskQueue(db_path) as queue:
        ids = queue.enqueue_many(jobs.add, [(i, i) for i in range(20)])
        retried = queue.with_options(max_retries=1, retry_backoff=0.2).enqueue(
            jobs.flaky, str(db_path.parent / "count"), 1
        )
    ok = _burst(db_path, "--concurrency", "4")
    assert ok.returncode == 0, ok.stderr
    assert "burst done: 21 succeeded, 0 failed, 0 cancelled (1 retried attempts)" in ok.stdout
    with SyncTaskQueue(db_path) as queue:
        assert all(queue.status(task_id) is TaskStatus.SUCCEEDED for task_id in [*ids, retried])
        queue.enqueue(jobs.fail, "broken")
    failed = _burst(db_path)
    assert failed.returncode == 1
    assert "burst done: 0 succeeded, 1 failed" in failed.stdout


async def test_the_test_helper_runs_everything_due_in_order() -> None:
    async with TemporaryQueue() as queue:
        log = queue.path.parent / "order.log"
        await queue.enqueue(jobs.record_sync, str(log), "low")
        await queue.with_options(priority=5).enqueue(jobs.record_sync, str(log), "high")
        failing = await queue.enqueue(jobs.fail, "expected")
        later = await queue.with_options(delay=3600).enqueue(jobs.noop)
        report = await queue.run_all()
        assert (report.succeeded, report.failed, report.total) == (2, 1, 3)
        markers = [line.split()[1] for line in log.read_text().splitlines()]
        assert markers == ["high", "high", "low", "low"]  # one at a time, by priority
        assert (await queue.get_result(failing)).error == "ValueError: expected"
        assert await queue.status(later) is TaskStatus.QUEUED
        path = queue.path
    assert not path.exists()


async def test_status_lists_schedules_and_limits(db_path: Path, tmp_path: Path) -> None:
    async with TaskQueue(db_path) as queue:
        await queue.set_limit("render", max_running=2)
        await queue.set_limit("api", max_starts=10, per=1.0)
        nightly = Schedule("nightly", jobs.noop, cron="0 3 * * *", tz="Europe/Paris")
        worker = Worker(db_path, schedules=[nightly])
        await worker.start()
        try:

            async def recorded() -> bool:
                return bool(await queue.schedules())

            await await_until(recorded, 15, "the scheduler's first sighting")
        finally:
            await worker.stop()
        (record,) = await queue.schedules()
        assert record.next_run_at is not None and record.next_run_at > record.last_run_at
    run = subprocess.run(
        [SITQ, "status", "--db", str(db_path)], capture_output=True, text=True, timeout=60
    )
    assert "schedules:" in run.stdout
    (line,) = [line for line in run.stdout.splitlines() if line.strip().startswith("nightly")]
    assert "cron 0 3 * * * (Europe/Paris)" in line and "next 20" in line
    assert "render" in run.stdout and "at most 2 running" in run.stdout
    assert "10 starts per 1s" in run.stdout
