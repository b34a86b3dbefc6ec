"""Chains, groups and chords end to end: real workers on real databases, the
dependency bookkeeping in the database, results passed by the worker."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import compose_jobs as jobs
import pytest
from support import WorkerProcess

from sitq import (
    InvalidComposition,
    InvalidDependency,
    InvalidTask,
    SyncTaskQueue,
    TaskQueue,
    TaskStatus,
    Worker,
    chain,
    chord,
    group,
)


async def run_all(url: str, queue: TaskQueue, ids: list[str], timeout: float = 30) -> None:
    """Serve until every one of ``ids`` has finished."""
    worker = Worker(url, concurrency=4)
    await worker.start()
    try:
        for task_id in ids:
            assert await queue.get_result(task_id, timeout=timeout) is not None
    finally:
        await worker.stop(timeout=5)


async def test_a_chain_passes_each_result_to_the_next(db_url: str, tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    async with TaskQueue(db_url) as queue:
        last = await queue.submit(
            chain(
                queue.signature(jobs.start, log, "s1"),
                queue.signature(jobs.step, log, "s2"),
                queue.signature(jobs.step, log, "s3"),
            )
        )
        await run_all(db_url, queue, [last])
        result = await queue.get_result(last, timeout=1)
        assert result is not None and result.value == 2
    assert Path(log).read_text().split("\n")[:3] == ["ran s1", "ran s2", "ran s3"]


async def test_group_chord_and_nesting(db_url: str) -> None:
    async with TaskQueue(db_url) as queue:
        sq = [queue.signature(jobs.square, i) for i in range(5)]
        grouped = await queue.submit(group(sq))
        chorded = await queue.submit(chord(sq, queue.signature(jobs.total)))
        # a chain of a group and a chord inside a chain
        nested = await queue.submit(
            chain(
                queue.signature(jobs.add, 1, 1),
                group(queue.signature(jobs.add, 10), queue.signature(jobs.add, 20)),
                chord(
                    [queue.signature(jobs.total), queue.signature(jobs.total)],
                    queue.signature(jobs.total),
                ),
            )
        )
        await run_all(db_url, queue, [grouped, chorded, nested])
        values = await queue.get_results([grouped, chorded, nested])
        assert values[grouped].value == [0, 1, 4, 9, 16]
        assert values[chorded].value == 30
        # add(1,1)=2 -> [12, 22] -> total twice = 34 each -> total [34, 34] = 68
        assert values[nested].value == 68


async def test_a_registered_task_signature(db_path: Path) -> None:
    async with TaskQueue(db_path) as queue:
        handle = queue.task(jobs.square)
        last = await queue.submit(handle.s(3) | queue.signature(jobs.add, 1))
        await run_all(str(db_path), queue, [last])
        result = await queue.get_result(last, timeout=1)
        assert result is not None and result.value == 10


async def chain_of_five(queue: TaskQueue, log: str, flag: str, mode: str) -> list[str]:
    sigs = [queue.signature(jobs.start, log, "s1")] + [
        queue.signature(jobs.step, log, f"s{i}", flag if i == 3 else None) for i in range(2, 6)
    ]
    await queue.with_options(on_parent_failure=mode).submit(chain(*sigs))
    page = await queue.list_tasks(limit=10)
    return sorted(t.id for t in page.tasks)  # ids grow in enqueue order


@pytest.mark.parametrize("mode", ["cancel", "run"])
async def test_a_chain_of_five_whose_third_step_fails(
    db_url: str, tmp_path: Path, mode: str
) -> None:
    log, flag = str(tmp_path / "log"), str(tmp_path / "fixed")
    async with TaskQueue(db_url) as queue:
        ids = await chain_of_five(queue, log, flag, mode)
        await run_all(db_url, queue, [ids[4]])
        results = await queue.get_results(ids)
        statuses = [results[i].status for i in ids]
        if mode == "cancel":
            assert (
                statuses
                == [TaskStatus.SUCCEEDED] * 2 + [TaskStatus.FAILED] + [TaskStatus.CANCELLED] * 2
            )
            for i in ids[3:]:
                assert ids[2] in (results[i].error or "")
            assert "ran s4" not in Path(log).read_text()
            # Fixed: retrying step 3 lets 4 and 5 run.
            Path(flag).touch()
            assert await queue.retry(ids[2])
            assert [await queue.status(i) for i in ids[2:]] == [TaskStatus.QUEUED] * 3
            await run_all(db_url, queue, [ids[4]])
            last = await queue.get_result(ids[4], timeout=1)
            assert last is not None and last.ok and last.value == 4
        else:
            assert (
                statuses
                == [TaskStatus.SUCCEEDED] * 2 + [TaskStatus.FAILED] + [TaskStatus.SUCCEEDED] * 2
            )
            assert results[ids[3]].value == 1  # None from the failed parent, + 1


async def test_dependencies_across_producer_processes(db_url: str, tmp_path: Path) -> None:
    """A parent enqueued by one process, its child by another (a SyncTaskQueue in a
    subprocess), served by two real `sitq worker` processes."""
    import subprocess
    import sys

    from support import subprocess_env

    log = str(tmp_path / "log")
    async with TaskQueue(db_url) as queue:
        parent = await queue.enqueue(jobs.start, log, "parent")
        code = (
            "import sys, compose_jobs as j\n"
            "from sitq import SyncTaskQueue\n"
            "q = SyncTaskQueue(sys.argv[1])\n"
            "child = q.with_options(depends_on=[sys.argv[2]])\n"
            "print(child.enqueue(j.start, sys.argv[3], 'child'))\n"
            "q.close()\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, db_url, parent, log],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        child = out.stdout.strip()
        record = await queue.task_links(child)
        assert record is not None and record.parents == [parent] and record.waiting == 1
        workers = [
            WorkerProcess(db_url, tmp_path, "--concurrency", "2").wait_started() for _ in range(2)
        ]
        try:
            result = await queue.get_result(child, timeout=30)
        finally:
            for w in workers:
                w.stop()
        assert result is not None and result.ok
    assert Path(log).read_text().split() == ["ran", "parent", "ran", "child"]


async def test_bad_inputs_are_refused_and_nothing_is_enqueued(db_path: Path) -> None:
    async with TaskQueue(db_path) as queue:
        sig = queue.signature(jobs.square, 2)
        bad: list[tuple[Callable[[], object], type[Exception], str]] = [
            (lambda: group(sig, jobs.square), InvalidComposition, "not a signature"),
            (lambda: group(), InvalidComposition, "empty group"),
            (lambda: group([]), InvalidComposition, "empty group"),
            (lambda: chord([sig]), InvalidComposition, "needs a callback"),
            (lambda: chain(), InvalidComposition, "empty chain"),
            (
                lambda: queue.with_options(depends_on=["a", "a"]),
                InvalidDependency,
                "more than once",
            ),
            (lambda: queue.with_options(on_parent_failure="maybe"), Exception, "cancel"),
        ]
        for make, error, words in bad:
            with pytest.raises(error, match=words):
                make()
        with pytest.raises(InvalidComposition, match="not a signature"):
            await queue.submit(jobs.square)  # type: ignore[arg-type]
        with pytest.raises(InvalidDependency, match="unknown parent"):
            await queue.with_options(depends_on=["0" * 32]).enqueue(jobs.square, 1)
        with pytest.raises(InvalidDependency, match="unknown parent"):
            await queue.with_options(depends_on=["0" * 32]).submit(
                chain(sig, queue.signature(jobs.square))
            )
        with pytest.raises(InvalidDependency, match="unknown parent"):
            await queue.submit(sig.set(depends_on=["nope"]))
        assert (await queue.list_tasks()).tasks == []


def test_the_sync_queue_submits(db_path: Path) -> None:
    with SyncTaskQueue(db_path) as queue:
        last = queue.submit(
            chord([queue.signature(jobs.square, i) for i in range(3)], queue.signature(jobs.total))
        )
        assert isinstance(last, str) and queue.status(last) == TaskStatus.QUEUED


async def test_a_chord_of_1000_while_workers_are_sigkilled_every_second(
    db_url: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """1,000 members over 3 `sitq worker` processes, one SIGKILLed (and replaced)
    every second while members finish. The log proves the callback ran exactly
    once, got every result in member order, and started after the last member
    finished. The callback runs on its own queue, served by a worker never killed:
    what is under test is the fan-in (made due once, by the database), not the
    at-least-once rerun of a callback whose own worker dies."""
    log = tmp_path / "chord.log"
    count = 1000
    async with TaskQueue(db_url) as queue:
        members = [queue.signature(jobs.member, i, str(log), 0.05) for i in range(count)]
        callback = queue.signature(jobs.callback, str(log)).set(queue="callbacks")
        callback_id = await queue.submit(chord(members, callback))
        links = await queue.task_links(callback_id)
        assert links is not None and links.waiting == count
        args = ("--concurrency", "4", "--lease", "2")
        workers = [spawn_worker(*args, db=db_url).wait_started() for _ in range(3)]
        spawn_worker("--queue", "callbacks", db=db_url).wait_started()
        kills = 0
        while True:
            links = await queue.task_links(callback_id)
            assert links is not None
            if links.waiting == 0:
                break
            await asyncio.sleep(1.0)  # the chaos' own pace, not a synchronization
            victim = workers.pop(kills % len(workers))
            victim.send(signal.SIGKILL)
            assert victim.wait(10) == -signal.SIGKILL
            kills += 1
            workers.append(spawn_worker(*args, db=db_url))
            assert kills < 120, "the members never finished"
        result = await queue.get_result(callback_id, timeout=60)
    assert result is not None and result.ok, result
    assert result.value == count
    assert kills >= 2, "the members finished before any worker was killed"
    lines = log.read_text().splitlines()
    starts = [line.split() for line in lines if line.startswith("callback-start")]
    assert len(starts) == 1, starts
    _, started, received, values = starts[0]
    assert int(received) == count
    assert [int(v) for v in values.split(",")] == [i * 2 for i in range(count)]
    finished = [line.split() for line in lines if line.startswith("member")]
    assert {int(f[1]) for f in finished} == set(range(count))
    assert float(started) > max(float(f[2]) for f in finished)


async def test_sitq_inspect_shows_the_wait_and_sitq_retry_brings_dependents_back(
    db_path: Path, tmp_path: Path
) -> None:
    import subprocess

    from support import SITQ, subprocess_env

    def sitq(*args: str) -> str:
        out = subprocess.run(
            [SITQ, *args, "--db", str(db_path)],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    log, flag = str(tmp_path / "log"), str(tmp_path / "fixed")
    async with TaskQueue(db_path) as queue:
        first = await queue.enqueue(jobs.step, 0, log, "p", flag)
        child = await queue.with_options(depends_on=[first]).enqueue(jobs.start, log, "c")
        shown = sitq("inspect", child)
        assert "waiting for 1 of 1 parents" in shown and first in shown
        await run_all(str(db_path), queue, [child])
        assert await queue.status(child) == TaskStatus.CANCELLED
        Path(flag).touch()
        sitq("retry", first)
        assert await queue.status(child) == TaskStatus.QUEUED
        await run_all(str(db_path), queue, [child])
        result = await queue.get_result(child, timeout=1)
        assert result is not None and result.ok


async def serve(url: str, queues: tuple[str, ...], ids: list[str], timeout: float = 30) -> None:
    """Serve ``queues`` until every one of ``ids`` has finished."""
    worker = Worker(url, concurrency=2, queues=queues)
    await worker.start()
    try:
        for task_id in ids:
            assert await asyncio.wait_for(_finished(url, task_id), timeout)
    finally:
        await worker.stop(timeout=5)


async def _finished(url: str, task_id: str) -> bool:
    async with TaskQueue(url) as queue:
        return await queue.get_result(task_id, timeout=None) is not None


def members_in(queue: TaskQueue, name: str, n: int = 2) -> list[Any]:
    return [queue.signature(jobs.square, i + 2).set(queue=name) for i in range(n)]


async def test_a_callback_whose_finished_parent_was_purged_fails_with_parent_missing(
    db_url: str,
) -> None:
    """Its results would be a shorter or shifted list: it fails, naming the parent."""
    async with TaskQueue(db_url) as queue:
        callback = await queue.submit(
            chord(members_in(queue, "members"), queue.signature(jobs.total))
        )
        links = await queue.task_links(callback)
        assert links is not None
        await serve(db_url, ("members",), links.parents)
        assert await queue.purge(["succeeded"], queue="members") == 2
        await serve(db_url, ("default",), [callback])
        result = await queue.get_result(callback, timeout=1)
        assert result is not None and result.status == TaskStatus.FAILED
        assert (result.error or "").startswith("ParentMissing: ")
        assert links.parents[0] in (result.error or "") and "again" in (result.error or "")


@pytest.mark.parametrize("mode", ["cancel", "run"])
async def test_purging_unfinished_members_settles_the_callback(db_url: str, mode: str) -> None:
    """No worker serves the members' queue; they are purged: the callback ends
    cancelled naming one ("cancel"), or runs with None for each ("run")."""
    async with TaskQueue(db_url) as queue:
        callback = await queue.submit(
            chord(
                members_in(queue, "nobody"),
                queue.signature(jobs.noop_callback).set(on_parent_failure=mode),
            )
        )
        links = await queue.task_links(callback)
        assert links is not None
        assert await queue.purge(["queued"], queue="nobody") == 2
        if mode == "cancel":
            result = await queue.get_result(callback, timeout=1)
            assert result is not None and result.status == TaskStatus.CANCELLED
            assert "purged" in (result.error or "")
            assert any(parent in (result.error or "") for parent in links.parents)
            return
        await serve(db_url, ("default",), [callback], timeout=10)
        result = await queue.get_result(callback, timeout=1)
        assert result is not None and result.ok and result.value == 2


async def test_a_step_is_checked_counting_the_parent_result_the_worker_passes(
    db_url: str,
) -> None:
    async with TaskQueue(db_url) as queue:
        with pytest.raises(InvalidTask, match="too many positional .* parent's result"):
            await queue.submit(
                chain(queue.signature(jobs.add, 1, 1), queue.signature(jobs.add, 1, 2))
            )
        # add(parent_result, 10) binds: accepted.
        assert await queue.submit(
            chain(queue.signature(jobs.add, 1, 1), queue.signature(jobs.add, 10))
        )
        assert (await queue.stats())["totals"]["queued"] == 2
