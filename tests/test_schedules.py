"""Registered tasks, periodic schedules, unique jobs, limits, pausing, burst mode
and the test helper, with real `sitq worker` processes where the issue asks."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
from pathlib import Path

import jobs
import pytest
from support import SITQ, subprocess_env, wait_until

from sitq import TaskQueue, TaskStatus
from sitq.errors import ConfigurationError


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
            db_path, "SELECT id, func_name || ' ' || max_retries || ' ' || priority FROM sitq_tasks"
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
