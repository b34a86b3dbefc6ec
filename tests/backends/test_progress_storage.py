"""Progress reports in the storage contract (Backend.report_progress and
Backend.task_progress), checked on every backend."""

from __future__ import annotations

import asyncio

from test_conformance import SUCCEEDED, enqueue, record, start

from sitq.backends.base import Backend, Lease, Outcome, ProgressReport


async def test_no_progress_before_any_report(backend: Backend) -> None:
    task_id = await enqueue(backend)
    assert await backend.task_progress([task_id]) == {task_id: ("queued", None)}
    assert (await record(backend, task_id)).progress is None
    assert await backend.task_progress(["no-such-task"]) == {}


async def test_a_report_is_stored_while_the_lease_holds(backend: Backend) -> None:
    claimed = await start(backend)
    applied = await backend.report_progress([ProgressReport(claimed.lease, 3, 10, "three")])
    assert applied == 1
    status, progress = (await backend.task_progress([claimed.id]))[claimed.id]
    assert status == "running"
    assert progress is not None
    assert (progress.done, progress.total, progress.message) == (3, 10, "three")
    assert abs(progress.updated_at - backend.now()) < 5
    assert progress.fraction == 0.3
    # Every read of the record carries it: get_tasks, activity (running tasks).
    assert (await record(backend, claimed.id)).progress == progress
    running = [t for t in (await backend.activity(0)).running if t.id == claimed.id]
    assert running[0].progress == progress


async def test_many_reports_in_one_write_and_floats_kept(backend: Backend) -> None:
    first = await start(backend)
    second = await start(backend)
    reports = [
        ProgressReport(first.lease, 0.5, None, None),
        ProgressReport(second.lease, 7, 7, "é\x00 and a very long message " + "x" * 2000),
    ]
    assert await backend.report_progress(reports) == 2
    found = await backend.task_progress([first.id, second.id])
    one, two = found[first.id][1], found[second.id][1]
    assert one is not None and (one.done, one.total, one.message) == (0.5, None, None)
    assert one.fraction is None
    assert two is not None and two.done == 7 and two.fraction == 1.0
    assert two.message is not None and two.message.startswith("é\\x00 and")  # NUL escaped
    assert len(two.message) <= 1000


async def test_the_last_report_survives_the_finish(backend: Backend) -> None:
    claimed = await start(backend)
    await backend.report_progress([ProgressReport(claimed.lease, 10, 10, "done")])
    assert await backend.finish([(claimed.lease, SUCCEEDED)]) == [True]
    status, progress = (await backend.task_progress([claimed.id]))[claimed.id]
    assert status == "succeeded"
    assert progress is not None and progress.done == 10


async def test_a_report_after_the_finish_is_ignored(backend: Backend) -> None:
    claimed = await start(backend)
    await backend.report_progress([ProgressReport(claimed.lease, 1, 4, None)])
    await backend.finish([(claimed.lease, Outcome("failed", error="boom"))])
    assert await backend.report_progress([ProgressReport(claimed.lease, 4, 4, "late")]) == 0
    status, progress = (await backend.task_progress([claimed.id]))[claimed.id]
    assert status == "failed"  # nothing resurrected
    assert progress is not None and (progress.done, progress.message) == (1, None)


async def test_a_report_under_a_lost_lease_is_ignored(backend: Backend) -> None:
    claimed = await start(backend)
    other_worker = Lease(claimed.id, "another-worker", claimed.lease.attempt)
    older_attempt = Lease(claimed.id, claimed.lease.worker_id, claimed.lease.attempt - 1)
    reports = [ProgressReport(lease, 5, 5, None) for lease in (other_worker, older_attempt)]
    assert await backend.report_progress(reports) == 0
    assert (await backend.task_progress([claimed.id]))[claimed.id][1] is None
    assert await backend.report_progress([]) == 0


async def test_a_report_wakes_the_progress_watchers(backend: Backend) -> None:
    claimed = await start(backend)
    waiter = asyncio.ensure_future(backend.wait_for_change("progress", 30.0))
    await asyncio.sleep(0.05)  # let it start listening (a hint only: we check the timing)
    began = asyncio.get_running_loop().time()
    await backend.report_progress([ProgressReport(claimed.lease, 1, None, None)])
    await asyncio.wait_for(waiter, 10.0)
    assert asyncio.get_running_loop().time() - began < 5.0
