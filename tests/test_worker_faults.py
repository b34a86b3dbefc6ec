"""One bad task, payload or fault must not break a worker (issue 20), and the
worker's lifecycle (issue 19.10): real `sitq worker` processes, real faults."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import fault_jobs
import jobs
import pytest
from support import WorkerProcess

from sitq import TaskQueue, TaskStatus


@pytest.mark.parametrize("pool", ["auto", "thread"])
async def test_a_base_exception_fails_only_its_task(
    db_path: Path, spawn_worker: Callable[..., WorkerProcess], pool: str
) -> None:
    """SystemExit and KeyboardInterrupt raised by a task (async or not, with a
    timeout or without) fail that task; the worker serves on (20.3)."""
    async with TaskQueue(db_path) as queue:
        worker = spawn_worker("--pool", pool, "--concurrency", "2").wait_started()
        bad = [
            await queue.with_options(timeout=5).enqueue(fault_jobs.async_raise_base, "SystemExit"),
            await queue.with_options(timeout=5).enqueue(
                fault_jobs.async_raise_base, "KeyboardInterrupt"
            ),
            await queue.enqueue(fault_jobs.async_raise_base, "SystemExit"),
            await queue.enqueue(fault_jobs.async_raise_base, "KeyboardInterrupt"),
            await queue.with_options(timeout=5).enqueue(fault_jobs.sync_raise_base, "SystemExit"),
            await queue.enqueue(fault_jobs.sync_raise_base, "KeyboardInterrupt"),
        ]
        results = [await queue.get_result(task_id, timeout=20) for task_id in bad]
        after = await queue.enqueue(jobs.add, 2, 3)
        result_after = await queue.get_result(after, timeout=20)
        assert worker.process.poll() is None, worker.output()
    for result in results:
        assert result is not None and result.status is TaskStatus.FAILED, worker.output()
        assert result.error and result.error.split(":")[0] in ("SystemExit", "KeyboardInterrupt")
    assert result_after is not None and result_after.value == 5
