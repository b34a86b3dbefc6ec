"""Progress from inside a task (sitq.current_task()) and live events
(queue.watch), end to end: real `sitq worker` processes, both backends."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import jobs
import progress_jobs
import pytest
from starlette.testclient import TestClient
from support import SITQ, WorkerProcess, await_until, subprocess_env

from sitq import (
    CancelOutcome,
    ConfigurationError,
    CurrentTask,
    Progress,
    SyncTaskQueue,
    TaskNotFound,
    TaskQueue,
    TaskStatus,
    WatchEvent,
    current_task,
)
from sitq.dashboard import DashboardConfig, create_app
from sitq.worker.execution import PROCESS_CANCEL_GRACE

Spawn = Callable[..., WorkerProcess]


async def running_with_progress(queue: TaskQueue, task_id: str) -> Progress:
    """The task's first stored progress report, once it has one."""

    async def probe() -> Progress | None:
        return await queue.progress(task_id)

    await await_until(probe, 30.0, f"a progress report of {task_id}")
    found = await queue.progress(task_id)
    assert found is not None
    return found


# -- current_task() -------------------------------------------------------------


def test_current_task_is_none_outside_a_task() -> None:
    assert current_task() is None


@pytest.mark.parametrize(
    ("pool", "job"),
    [
        ("auto", progress_jobs.async_who_am_i),  # on the worker's event loop
        ("auto", progress_jobs.who_am_i),  # in a task thread
        ("process", progress_jobs.who_am_i),  # in a process-pool child
    ],
    ids=["async", "thread", "process"],
)
async def test_current_task_in_every_pool_and_the_final_report_is_stored(
    db_url: str, spawn_worker: Spawn, pool: str, job: Callable[..., object]
) -> None:
    """100,000 reports in a tight loop: the task knows itself, and the last
    report is stored with its outcome (it ends before any periodic write)."""
    async with TaskQueue(db_url) as queue:
        spawn_worker("--pool", pool, "--queue", "reports", db=db_url).wait_started()
        task_id = await queue.with_options(queue="reports").enqueue(job, 100_000)
        assert await queue.progress(task_id) is None  # before any report
        result = await queue.get_result(task_id, timeout=60)
        assert result is not None and result.ok, result and result.error
        assert result.value == (task_id, 1, "reports", "CurrentTask")
        progress = await queue.progress(task_id)
        assert progress is not None
        assert (progress.done, progress.total, progress.message) == (
            100_000,
            100_000,
            "item 100000",
        )
        record = await queue.task_record(task_id)
        assert record is not None and record.progress == progress


async def test_progress_of_an_unknown_task_is_an_error(queue: TaskQueue) -> None:
    with pytest.raises(TaskNotFound):
        await queue.progress("no-such-task")
    with pytest.raises(TaskNotFound):
        async for _ in queue.watch(["no-such-task"]):
            pass
    with pytest.raises(ConfigurationError, match="list of task ids"):
        queue.watch("one-id")  # type: ignore[arg-type]


@pytest.mark.parametrize("pool", ["thread", "process"])
async def test_a_cooperative_task_sees_cancel_requested_and_stops(
    db_url: str, spawn_worker: Spawn, tmp_path: Path, pool: str
) -> None:
    marker = tmp_path / "stopped"
    async with TaskQueue(db_url) as queue:
        spawn_worker("--pool", pool, db=db_url).wait_started()
        task_id = await queue.enqueue(progress_jobs.until_cancelled, str(marker))
        await running_with_progress(queue, task_id)
        assert await queue.cancel(task_id)
        result = await queue.get_result(task_id, timeout=30)
        assert result is not None and result.status is TaskStatus.CANCELLED
        await await_until(lambda: _exists(marker), 15.0, "the task to stop on its own")
        assert marker.read_text().startswith("stopped after ")


async def _exists(path: Path) -> bool:
    return path.exists()


async def _status_is(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.status(task_id) is status


async def test_a_cancel_before_a_pool_child_began_the_task_ends_it_at_once(
    db_path: Path, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """The task was sent to a child that has not begun it (held at its start by
    child_start_gate): no grace to wait for, so the cancel ends it at once, and
    the task's code never runs."""
    gate, ran = tmp_path / "children-may-start", tmp_path / "ran"
    async with TaskQueue(db_path) as queue:
        worker = spawn_worker(
            "--pool", "process", "--import", "child_start_gate",
            env={"SITQ_TEST_CHILD_GATE": str(gate)},
        ).wait_started()  # fmt: skip
        try:
            task_id = await queue.enqueue(progress_jobs.mark_ran, str(ran))
            # Started by the worker (its start written after 50 ms), held by a child.
            await await_until(
                lambda: _status_is(queue, task_id, TaskStatus.RUNNING), 30.0, "the dispatch"
            )
            began = time.monotonic()
            assert await queue.request_cancel(task_id) is CancelOutcome.REQUESTED
            result = await queue.get_result(task_id, timeout=30)
            took = time.monotonic() - began
            assert result is not None and result.status is TaskStatus.CANCELLED
            assert not gate.exists()  # still held: the child never began it
            # Ended well within the grace a begun task gets (it took the whole
            # grace, and more, before the child's start was looked at).
            assert took < PROCESS_CANCEL_GRACE / 2, f"cancel took {took:.2f}s"
        finally:
            gate.touch()
        # The worker serves on (a fresh child), and the cancelled call never ran.
        after = await queue.enqueue(jobs.add, 2, 3)
        result_after = await queue.get_result(after, timeout=30)
        assert result_after is not None and result_after.value == 5, worker.output()
        assert not ran.exists()


async def test_a_pool_child_that_began_the_task_gets_its_grace_to_stop(
    db_path: Path, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """A cooperative task whose stop takes a while (well under the grace) is not
    killed midway: it cleans up and ends CANCELLED."""
    marker = tmp_path / "cleaned-up"
    cleanup = PROCESS_CANCEL_GRACE / 4
    async with TaskQueue(db_path) as queue:
        spawn_worker("--pool", "process").wait_started()
        task_id = await queue.enqueue(progress_jobs.slow_to_stop, str(marker), cleanup)
        await running_with_progress(queue, task_id)  # it runs in its child
        began = time.monotonic()
        assert await queue.request_cancel(task_id) is CancelOutcome.REQUESTED
        result = await queue.get_result(task_id, timeout=30)
        took = time.monotonic() - began
        assert result is not None and result.status is TaskStatus.CANCELLED
        assert marker.read_text().startswith("cleaned up after "), "killed before it cleaned up"
        assert took >= cleanup


# -- bad reports ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1,), "done must be a finite number >= 0"),
        ((1, -5), "total must be a finite number >= 0"),
        ((math.nan,), "done must be a finite number"),
        ((1, math.inf), "total must be a finite number"),
        (("3",), "done must be a number"),
        ((True,), "done must be a number"),
        ((1, None, 42), "message must be a str or None"),
    ],
)
def test_bad_reports_are_refused_with_what_to_pass(args: tuple[object, ...], match: str) -> None:
    task = CurrentTask("id", 1, "default")
    task.report_progress(2, 4, "fine")
    with pytest.raises(ConfigurationError, match=match):
        task.report_progress(*args)  # type: ignore[arg-type]
    assert task.latest == (2, 4, "fine")  # the refused report left nothing


async def test_a_bad_report_fails_its_task_with_the_reason(
    db_path: Path, spawn_worker: Spawn
) -> None:
    async with TaskQueue(db_path) as queue:
        spawn_worker().wait_started()
        task_id = await queue.enqueue(progress_jobs.bad_report, "negative")
        result = await queue.get_result(task_id, timeout=30)
        assert result is not None and result.status is TaskStatus.FAILED
        assert "ConfigurationError: report_progress: done must be a finite number >= 0" in (
            result.error or ""
        )


# -- watch -----------------------------------------------------------------------


async def test_watch_delivers_progress_from_a_worker_process_and_ends(
    db_url: str, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """Two tasks on a `sitq worker`: this process sees their progress live (before
    they end), then each finished with its result, and the iteration ends."""
    gate = tmp_path / "gate"
    async with TaskQueue(db_url) as queue:
        spawn_worker("--concurrency", "2", db=db_url).wait_started()
        ids = [await queue.enqueue(progress_jobs.steps, 4, 0.05, str(gate)) for _ in range(2)]
        events: list[WatchEvent] = []
        async for event in queue.watch(ids, poll_interval=5.0):
            events.append(event)
            progressed = {e.task_id for e in events if e.kind == "progress"}
            if progressed == set(ids) and not gate.exists():
                gate.touch()  # both seen mid-run: let them finish
        assert gate.exists(), "no live progress seen before the tasks finished"
        finished = [e for e in events if e.kind == "finished"]
        assert sorted(e.task_id for e in finished) == sorted(ids)
        for event in finished:
            assert event.status is TaskStatus.SUCCEEDED
            assert event.result is not None and event.result.value == 4
            assert event.progress is not None and event.progress.done == 4
        for task_id in ids:  # progress never goes back, and comes before the finish
            mine = [e for e in events if e.task_id == task_id]
            assert mine[-1].kind == "finished"
            dones = [e.progress.done for e in mine if e.progress is not None]
            assert dones == sorted(dones)


async def test_watch_of_finished_tasks_ends_at_once(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(progress_jobs.who_am_i, 1)
    assert await queue.cancel(task_id)
    events = [event async for event in queue.watch([task_id])]
    assert [(e.task_id, e.kind, e.status) for e in events] == [
        (task_id, "finished", TaskStatus.CANCELLED)
    ]


async def test_watch_looks_hands_over_what_one_look_saw_as_one_list(queue: TaskQueue) -> None:
    """Three tasks that ended before the watch: one look, one list, in finishing
    order; ``watch`` yields the same events one by one."""
    ids = [await queue.enqueue(progress_jobs.who_am_i, 1) for _ in range(3)]
    for task_id in ids:
        assert await queue.cancel(task_id)
    looks = [look async for look in queue.watch_looks(ids)]
    assert [[(e.task_id, e.kind) for e in look] for look in looks] == [
        [(task_id, "finished") for task_id in ids]
    ]
    flat = [event async for event in queue.watch(ids)]
    assert flat == looks[0]


def test_the_sync_face_watches_looks(db_path: Path) -> None:
    with SyncTaskQueue(db_path) as queue:
        task_id = queue.enqueue(progress_jobs.who_am_i, 1)
        assert queue.cancel(task_id)
        looks = list(queue.watch_looks([task_id]))
        assert [[e.status for e in look] for look in looks] == [[TaskStatus.CANCELLED]]


def test_the_sync_face_watches_and_reads_progress(db_path: Path, spawn_worker: Spawn) -> None:
    with SyncTaskQueue(db_path) as queue:
        queue.connect()  # the database exists before the worker starts
        spawn_worker().wait_started()
        task_id = queue.enqueue(progress_jobs.who_am_i, 10)
        kinds = [event.kind for event in queue.watch([task_id], timeout=60)]
        assert kinds[-1] == "finished"
        progress = queue.progress(task_id)
        assert progress is not None and progress.done == 10 and progress.fraction == 1.0


# -- sitq status, sitq inspect, the dashboard ----------------------------------------


def _sitq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SITQ, *args], capture_output=True, text=True, env=subprocess_env(), timeout=60
    )


async def test_status_inspect_and_dashboard_show_a_running_tasks_progress(
    db_path: Path, spawn_worker: Spawn, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    async with TaskQueue(db_path) as queue:
        spawn_worker().wait_started()
        task_id = await queue.enqueue(progress_jobs.report_then_wait, 5, 20, "resizing", str(gate))
        try:
            await running_with_progress(queue, task_id)
            status = await asyncio.to_thread(_sitq, "status", "--db", str(db_path))
            assert status.returncode == 0, status.stderr
            line = next(x for x in status.stdout.splitlines() if f"running {task_id}" in x)
            assert "5/20 (25%) resizing" in line
            as_json = await asyncio.to_thread(_sitq, "status", "--db", str(db_path), "--json")
            [worker] = json.loads(as_json.stdout)["workers"]
            [running] = worker["running"]
            assert running["progress"]["done"] == 5 and running["progress"]["total"] == 20
            inspect = await asyncio.to_thread(_sitq, "inspect", "--db", str(db_path), task_id)
            assert inspect.returncode == 0, inspect.stderr
            assert "  progress: 5/20 (25%) resizing (reported " in inspect.stdout

            app = create_app(DashboardConfig(db=str(db_path)))
            with TestClient(app, base_url="http://127.0.0.1") as client:
                page = await asyncio.to_thread(client.get, f"/tasks/{task_id}")
                assert page.status_code == 200
                assert 'id="task-progress"' in page.text
                assert 'aria-label="25% done"' in page.text and "5/20 (25%)" in page.text
                assert "resizing" in page.text
                overview = (await asyncio.to_thread(client.get, "/")).text
                assert 'class="task-progress"' in overview and 'aria-label="25% done"' in overview
        finally:
            gate.touch()
        result = await queue.get_result(task_id, timeout=30)
        assert result is not None and result.ok
        final = await queue.progress(task_id)
        assert final is not None and (final.done, final.message) == (20, "finished")
