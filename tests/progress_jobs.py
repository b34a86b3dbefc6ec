"""Tasks that report progress and watch for cancellation (sitq.current_task()),
run by real `sitq worker` processes in tests/test_progress.py."""

from __future__ import annotations

import asyncio
import os
import time

from sitq import current_task


def _wait_for(path: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def who_am_i(items: int) -> tuple[str, int, str, str]:
    """Report every item (a tight loop); return what current_task() says."""
    task = current_task()
    assert task is not None
    for done in range(1, items + 1):
        task.report_progress(done, items, f"item {done}")
    return task.task_id, task.attempt, task.queue, type(task).__name__


async def async_who_am_i(items: int) -> tuple[str, int, str, str]:
    """As who_am_i, on the worker's event loop."""
    task = current_task()
    assert task is not None
    for done in range(1, items + 1):
        task.report_progress(done, items, f"item {done}")
        if done % 100 == 0:
            await asyncio.sleep(0)
    return task.task_id, task.attempt, task.queue, type(task).__name__


def report_then_wait(done: int, total: int, message: str, gate: str) -> int:
    """Report once, then wait for ``gate`` to exist (so tests can look meanwhile)."""
    task = current_task()
    assert task is not None
    task.report_progress(done, total, message)
    _wait_for(gate)
    task.report_progress(total, total, "finished")
    return done


def steps(count: int, pause: float, gate: str) -> int:
    """``count`` steps of ``pause`` seconds each, reporting each; waits for
    ``gate`` before the last one (so a watcher sees progress before the end)."""
    task = current_task()
    assert task is not None
    for done in range(1, count + 1):
        if done == count:
            _wait_for(gate)
        time.sleep(pause)
        task.report_progress(done, count, f"step {done}")
    return count


def until_cancelled(marker: str, seconds: float = 60.0) -> str:
    """Work until asked to cancel, then write ``marker`` and stop (a cooperative
    task); report progress meanwhile."""
    task = current_task()
    assert task is not None
    deadline = time.monotonic() + seconds
    done = 0
    while not task.cancel_requested:
        if time.monotonic() > deadline:
            return "never cancelled"
        done += 1
        task.report_progress(done, None, "working")
        time.sleep(0.005)
    # Written aside, then renamed: the test reads it as soon as it exists.
    with open(marker + ".tmp", "w") as out:
        out.write(f"stopped after {done} steps")
    os.replace(marker + ".tmp", marker)
    return "stopped"


def bad_report(kind: str) -> None:
    """Report progress wrongly (a ConfigurationError fails the task)."""
    task = current_task()
    assert task is not None
    if kind == "negative":
        task.report_progress(-1)
    else:
        task.report_progress(1, message=42)  # type: ignore[arg-type]


def slow_to_stop(marker: str, cleanup: float, seconds: float = 60.0) -> str:
    """A cooperative task whose stop takes ``cleanup`` seconds of work once it
    sees cancel_requested (closing files, say); writes ``marker`` when done."""
    task = current_task()
    assert task is not None
    deadline = time.monotonic() + seconds
    done = 0
    while not task.cancel_requested:
        if time.monotonic() > deadline:
            return "never cancelled"
        done += 1
        task.report_progress(done, None, "working")
        time.sleep(0.005)
    time.sleep(cleanup)  # the cleanup's own work, not a wait for anything
    with open(marker, "w") as out:
        out.write(f"cleaned up after {done} steps")
    return "stopped"


def mark_ran(marker: str) -> str:
    """Write ``marker`` (so a test sees whether the task's code ever ran)."""
    with open(marker, "w") as out:
        out.write("ran")
    return "ran"


def in_parts(total: int, gates: str) -> int:
    """Report part 1 of ``total``, wait for the file ``gates``/1, report part 2,
    wait for ``gates``/2, ... (a test sees each report while the task waits)."""
    task = current_task()
    assert task is not None
    for done in range(1, total + 1):
        task.report_progress(done, total, f"part {done} of {total}")
        _wait_for(os.path.join(gates, str(done)))
    return total


def report_nothing_until(gate: str) -> str:
    """Report no progress; wait for ``gate`` to exist."""
    _wait_for(gate)
    return "done"
